"""A project's plugins: the built-in ones (mtlbench/mitigations/) and those in the folders
next to a benchmark.toml — ``tasks/``, ``baselines/`` (methods) and ``mitigations/`` — found by
the one registry mechanism (:mod:`mtlbench.core.registry`). No global registry: each call
returns its own :class:`Plugins`."""

from __future__ import annotations

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

    def versions(self) -> dict[str, dict[str, str]]:
        """Current version of every plugin, by kind."""
        return {r.kind: {n: str(c.version) for n, c in r.items()} for r in (self.tasks, self.methods, self.mitigations)}


def discover(root: Path) -> Plugins:
    root = Path(root).resolve()
    found: dict[str, Registry[Any]] = {}
    for kind, (base, folder, package) in KINDS.items():
        found[kind] = discover_kind(kind, base, packages=[package] if package else [], folders=[root / folder])
    return Plugins(root=root, tasks=found["task"], methods=found["method"], mitigations=found["mitigation"])
