"""A project's plugins: the built-in ones (mtlbench/mitigations/) and those in the folders
next to a benchmark.toml — ``tasks/``, ``baselines/`` (methods) and ``mitigations/`` — found by
the one registry mechanism (:mod:`mtlbench.core.registry`). No global registry: each call
returns its own :class:`Plugins`."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlbench.core.registry import Registry
from mtlbench.core.registry import discover as discover_kind
from mtlbench.plugin.method import Method
from mtlbench.plugin.mitigation import Mitigation
from mtlbench.plugin.task import Task

# kind -> (base class, folder next to benchmark.toml, built-in package)
KINDS: dict[str, tuple[type, str, str | None]] = {
    "task": (Task, "tasks", None),
    "method": (Method, "baselines", None),
    "mitigation": (Mitigation, "mitigations", "mtlbench.mitigations"),
}


@dataclass
class Plugins:
    root: Path
    tasks: Registry[Task]
    methods: Registry[Method]
    mitigations: Registry[Mitigation]

    @property
    def sources(self) -> dict[str, Path]:
        """``"task:name"`` / ``"method:name"`` / ``"mitigation:name"`` -> the file it came from."""
        return {f"{r.kind}:{n}": p for r in (self.tasks, self.methods, self.mitigations) for n, p in r.sources.items()}

    def same_paper(self) -> dict[str, list[str]]:
        """For each method, the other methods whose citation names the same paper (titles, the
        longest part of the citation, at least 85% alike): variants of one paper (``mgda`` and
        ``mgda-ub``), or a new method file that re-implements a shipped one."""
        titles = {n: _title(c.citation) for n, c in self.methods.items() if _title(c.citation)}
        out: dict[str, list[str]] = {}
        for a, ta in titles.items():
            for b, tb in titles.items():
                if a != b and difflib.SequenceMatcher(None, ta, tb).ratio() >= 0.85:
                    out.setdefault(a, []).append(b)
        return {n: sorted(v) for n, v in out.items()}

    def versions(self) -> dict[str, dict[str, str]]:
        """Current version of every plugin, by kind."""
        return {r.kind: {n: str(c.version) for n, c in r.items()} for r in (self.tasks, self.methods, self.mitigations)}


def _title(citation: str) -> str:
    """A citation's title: its longest comma-separated part, lower-cased, punctuation dropped."""
    parts = [" ".join(re.sub(r"[^a-z0-9]+", " ", part.lower()).split()) for part in citation.split(",")]
    return max(parts, key=len) if parts else ""


def discover(root: Path) -> Plugins:
    root = Path(root).resolve()
    found: dict[str, Registry[Any]] = {}
    for kind, (base, folder, package) in KINDS.items():
        found[kind] = discover_kind(kind, base, packages=[package] if package else [], folders=[root / folder])
    return Plugins(root=root, tasks=found["task"], methods=found["method"], mitigations=found["mitigation"])
