"""The results folder of a run: where each cell's file lives and whether it is done, failed,
pending or stale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtlbench.core.cell import Cell
from mtlbench.core.errors import ResultError
from mtlbench.core.files import MIGRATABLE, SchemaMismatch, atomic_write_json, read_result
from mtlbench.core.result import FailedResult, OkResult


@dataclass
class CellState:
    cell: Cell
    path: Path
    state: str  # done | failed | pending | stale
    reason: str = ""


class ResultStore:
    """The results folder of a run: where each cell's file lives and whether it is done."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, cell: Cell) -> Path:
        return self.root / cell.relpath

    def state(self, cell: Cell) -> CellState:
        path = self.path(cell)
        if not path.exists():
            return CellState(cell, path, "pending")
        try:
            data = read_result(path)
        except SchemaMismatch as e:
            if e.schema in MIGRATABLE:  # hours of training: never re-run what a migration keeps
                raise ResultError(
                    f"{path} has schema {e.schema}, which this mtlbench migrates: run `mtlbench migrate {self.root}` "
                    "(rewrites the folder's results in place, values unchanged), then run again; nothing was run"
                ) from None
            return CellState(cell, path, "stale", str(e))
        except ResultError as e:
            return CellState(cell, path, "stale", str(e))
        for kind, now in (("task", cell.task_version), ("method", cell.method_version), ("mitigation", cell.mitigation_version)):
            stored = data.get(f"{kind}_version")
            if str(stored) != now:
                return CellState(cell, path, "stale", f"{kind} version {stored} in the result, {now} now")
        if data.get("config_hash") != cell.config_hash:
            return CellState(cell, path, "stale", "config changed since this result was written")
        if data.get("status") == "ok":
            return CellState(cell, path, "done")
        return CellState(cell, path, "failed", str(data.get("reason", "unknown")))

    def write(self, cell: Cell, result: OkResult | FailedResult) -> Path:
        """Write the cell's result file (atomically: a reader sees the old file or the new one)."""
        path = self.path(cell)
        atomic_write_json(path, result.to_json())
        return path
