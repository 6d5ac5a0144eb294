"""Per-cell checkpoints: the whole training state at the end of every epoch, so a cell that is
killed or pre-empted resumes after its last finished epoch. On CPU the resumed result equals
an uninterrupted run exactly.

``fit()`` hands its state to :meth:`Checkpoint.save` at each epoch end and to
:meth:`Checkpoint.restore` at its start, as a dict of named objects. Anything that changes
during training must be in that dict; each entry is saved as
- ``state_dict()`` for modules, optimisers, schedulers and methods;
- ``get_state()`` for ``torch.Generator`` (data order, augmentation, the method's generator);
- a copy of its attributes for plain objects (the conflict recorder, the epoch records).
The global Python, NumPy and torch (CPU and CUDA) RNG states are saved too. A mitigation's
state (masks, branched layers) is fixed by its ``prepare`` on the freshly initialised model,
which runs again before a restore, so it is not saved.

Files live in ``<results>/.checkpoints/<cell path>/<model>.pt`` (one per model: ``joint``, or
one per sub-task for ``stl``), written atomically, tagged with the cell's config hash (a
checkpoint of another config is ignored) and removed once the cell's result is written.
Loading uses ``torch.load(weights_only=True)``: only tensors and plain containers.
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlbench.core.cell import Cell
from mtlbench.core.files import atomic_file

CHECKPOINT_DIR = ".checkpoints"
FORMAT = "mtlbench.train.checkpoint/1"
log = logging.getLogger("mtlbench.cell")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, torch.Generator):
        return {"generator": obj.get_state()}
    if hasattr(obj, "state_dict"):
        return {"state_dict": obj.state_dict()}
    return {"attributes": copy.deepcopy(vars(obj))}


def apply(obj: Any, saved: Any) -> None:
    if obj is None:
        return
    if "generator" in saved:
        obj.set_state(saved["generator"])
    elif "state_dict" in saved:
        obj.load_state_dict(saved["state_dict"])
    else:
        obj.__dict__.update(saved["attributes"])


def _format_epoch(record: dict[str, Any]) -> str:
    loss = " ".join(f"{k}={v:.4f}" for k, v in record.get("train_loss", {}).items())
    val = " ".join(f"{k}={v:.4f}" for k, v in record.get("val", {}).items())
    return f"train loss {loss}; val {val}; {record.get('train_time_s', 0.0):.1f} s"


class Checkpoint:
    """The checkpoint of one model of a cell. ``path=None``: log epochs, save nothing."""

    def __init__(self, path: Path | None, tag: str, name: str) -> None:
        self.path = path
        self.tag = tag
        self.name = name
        self.resumed_from: int | None = None  # the epoch a restore continued after

    def restore(self, state: dict[str, Any]) -> tuple[int, int, Any]:
        """Load the last checkpoint into ``state``; returns (epochs done, steps done, best),
        (0, 0, None) when there is none."""
        if self.path is None or not self.path.exists():
            return 0, 0, None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file that cannot be read only costs the epochs it held
            log.warning(
                "%s: checkpoint %s cannot be read (%s: %s); training from the start", self.name, self.path, type(e).__name__, e
            )
            return 0, 0, None
        if saved.get("format") != FORMAT or saved.get("tag") != self.tag:
            log.warning(
                "%s: checkpoint %s belongs to another config (%s); training from the start",
                self.name,
                self.path,
                saved.get("tag"),
            )
            return 0, 0, None
        for key, obj in state.items():
            apply(obj, saved["state"][key])
        set_rng_state(saved["rng"])
        self.resumed_from = int(saved["epoch"])
        log.info("%s: resumed after epoch %d (step %d) from %s", self.name, saved["epoch"], saved["step"], self.path)
        return int(saved["epoch"]), int(saved["step"]), saved["best"]

    def save(self, state: dict[str, Any], epoch: int, step: int, best: Any) -> None:
        """Record the end of ``epoch`` (1-based)."""
        out = state.get("out")
        record = out.epochs[-1] if out is not None and getattr(out, "epochs", None) else {}
        if self.path is None:
            log.info("%s: epoch %d: %s", self.name, epoch, _format_epoch(record))
            return
        payload = {
            "format": FORMAT,
            "tag": self.tag,
            "epoch": epoch,
            "step": step,
            "best": best,
            "rng": rng_state(),
            "state": {key: capture(obj) for key, obj in state.items()},
        }
        # no fsync: a checkpoint lost to a power cut only costs epochs (restore starts over)
        with atomic_file(self.path, "wb", durable=False) as f:
            torch.save(payload, f)
        log.info("%s: epoch %d: %s; checkpoint saved", self.name, epoch, _format_epoch(record))


class CellCheckpoints:
    """The checkpoints of one cell (one per model it trains)."""

    def __init__(self, results: Path, cell: Cell, enabled: bool = True) -> None:
        self.folder = Path(results) / CHECKPOINT_DIR / cell.relpath.with_suffix("")
        self.tag = cell.config_hash
        self.enabled = enabled
        self.models: dict[str, Checkpoint] = {}

    def model(self, name: str) -> Checkpoint:
        path = self.folder / f"{name}.pt" if self.enabled else None
        self.models[name] = Checkpoint(path, f"{self.tag}:{name}", name)
        return self.models[name]

    @property
    def resumed(self) -> dict[str, int]:
        """Model name -> epoch its training resumed after (models that resumed only)."""
        return {n: c.resumed_from for n, c in self.models.items() if c.resumed_from is not None}

    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob("*.pt"))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
