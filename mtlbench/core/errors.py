"""Errors raised at the boundary (config files, data files, result files).

Each carries one message meant for a person: which file, which key or row, what was
expected, and how to fix it. The CLI prints the message without a traceback.
"""

from __future__ import annotations


class MtlbenchError(Exception):
    """Base class for errors the CLI reports as a plain message."""


class ConfigError(MtlbenchError):
    """A problem in benchmark.toml (or options given on the command line)."""


class DataError(MtlbenchError):
    """A dataset is missing, truncated or malformed."""


class ResultError(MtlbenchError):
    """A result file is malformed or inconsistent."""


class PluginError(MtlbenchError):
    """A file in tasks/ or baselines/ could not be loaded."""


class MissingDependencyError(MtlbenchError, ImportError):
    """An optional package a method needs is not installed (the message names the pip command)."""
