"""A parsed benchmark.toml: its suites, each a checked grid expanded into cells, and the
filters of ``--only`` (:mod:`mtlbench.grid.config` parses and checks the file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mtlbench.backbones.build import BackboneSpec
from mtlbench.core.cell import CELL_FILTER_KEYS, Cell
from mtlbench.core.errors import ConfigError
from mtlbench.core.spec import ConflictSettings
from mtlbench.grid.executor import ExecutorOptions
from mtlbench.grid.plugins import Plugins
from mtlbench.plugin.task import Task


class Entry(NamedTuple):
    """One method or mitigation of a suite: its label (what results and pages show), the plugin's
    name and its resolved options (defaults filled in)."""

    label: str
    name: str
    options: dict[str, Any]


class SuiteTask(NamedTuple):
    """One task of a suite: the task class, its resolved options and protocol fields."""

    cls: type[Task]
    options: dict[str, Any]
    protocol: dict[str, Any]


@dataclass
class Grid:
    """One suite's checked axes, before expansion into cells."""

    tasks: dict[str, SuiteTask]
    backbones: dict[str, BackboneSpec]
    methods: list[Entry]
    mitigations: list[Entry]
    seeds: list[int]
    conflict: ConflictSettings
    tune: dict[str, list[float]] = field(default_factory=dict)  # method label -> learning rates
    exclude: set[tuple[str, str]] = field(default_factory=set)  # (method label, mitigation label) pairs not run


@dataclass
class Suite:
    name: str
    description: str
    cells: list[Cell]
    skipped: list[str] = field(default_factory=list)


@dataclass
class Benchmark:
    path: Path
    plugins: Plugins
    default_suite: str
    suites: dict[str, Suite]
    backbones: dict[str, BackboneSpec]
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)

    @property
    def root(self) -> Path:
        return self.path.parent

    def cells(self, suites: list[str] | None = None, filters: dict[str, set[str]] | None = None) -> list[Cell]:
        names = suites or [self.default_suite]
        for n in names:
            if n not in self.suites:
                raise ConfigError(f"{self.path}: no suite named {n!r}; defined suites: {', '.join(sorted(self.suites))}")
        out = [c for n in names for c in self.suites[n].cells]
        if filters:
            out = [c for c in out if c.matches(filters)]
        return out

    def why_no_cells(self, suites: list[str] | None, filters: dict[str, set[str]]) -> str:
        """Why ``cells(suites, filters)`` is empty: each filter value no cell of the suites has,
        with the values they do have, and what to do."""
        names = suites or [self.default_suite]
        every = [c for n in names for c in self.suites[n].cells]
        lines = []
        for key, wanted in filters.items():
            have = sorted({str(getattr(c, key)) for c in every})
            missing = sorted(wanted - set(have))
            if missing:
                lines.append(
                    f"--only {key}={','.join(missing)}: no cell of suite(s) {', '.join(names)} has {key} "
                    f"{', '.join(repr(m) for m in missing)} (they have: {', '.join(have)})"
                )
                if key == "method":
                    lines.append(
                        "  a method runs only in the suites that list it: add it to the suite's `methods` in "
                        f"{self.path.name}, or use a suite that lists it"
                    )
        if not lines:
            lines.append("each --only value occurs, but no cell has all of them at once (e.g. an excluded combination)")
        return "no cells match the given --suite/--only filters:\n" + "\n".join(lines)


def parse_filters(items: list[str] | None) -> dict[str, set[str]]:
    """``["method=ew,mgda", "seed=0"]`` -> ``{"method": {"ew", "mgda"}, "seed": {"0"}}``."""
    filters: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise ConfigError(f"--only {item!r}: expected key=value (e.g. --only method=ew,mgda)")
        if key not in CELL_FILTER_KEYS:
            raise ConfigError(f"--only {item!r}: unknown key {key!r}; valid keys: {', '.join(CELL_FILTER_KEYS)}")
        filters.setdefault(key, set()).update(v.strip() for v in value.split(",") if v.strip())
    return filters
