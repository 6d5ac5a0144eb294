"""Learning-rate tuning with an equal budget: a suite's ``tune`` table runs each listed method
once per learning rate (labels ``<method>.lr<lr>``, :data:`mtlbench.core.cell.TUNED_LABEL`);
the leaderboard reports, per method and mitigation, only the grid point whose mean
**validation** Δm over seeds is lowest — test metrics never take part in the choice — and
shows what the tuning cost (Xin et al., Do Current Multi-Task Optimization Methods in Deep
Learning Even Help?, NeurIPS 2022: tuned linear scalarisation matches most methods). Reads
aggregated tables only (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from mtlbench.core.cell import TUNED
from mtlbench.report.aggregate import GROUP


@dataclass
class Family:
    """The grid points of one tuned method (same plugin, same mitigation) in one group."""

    group: tuple[str, str, str]
    base: str  # the method label the suite lists under ``tune``
    mitigation: str
    points: list[dict] = field(default_factory=list)  # per grid point: label, lr, val Δm mean/std, n seeds, wall s
    chosen: str = ""  # the label of the chosen grid point

    @property
    def runs(self) -> int:
        return int(sum(p["n_seeds"] for p in self.points))

    @property
    def wall_s(self) -> float:
        return float(sum(p["wall_s"] for p in self.points))

    @property
    def at_edge(self) -> bool:
        """The chosen rate is the grid's smallest or largest: the best rate may lie outside it."""
        lrs = [p["lr"] for p in self.points]
        chosen = [p["lr"] for p in self.points if p["label"] == self.chosen]
        return bool(chosen) and chosen[0] in (min(lrs), max(lrs))


def select_tuned(table: pd.DataFrame, conventions: Mapping[str, str]) -> tuple[pd.DataFrame, list[Family]]:
    """Keep one row per tuned family (the lowest mean validation Δm in the task's declared
    convention; ties: the smaller learning rate) and drop the other grid points. The kept row
    gets ``tuned_from`` (the base label), ``tuned_lrs``, ``tuning_runs`` and
    ``tuning_wall_s`` (all grid points' runs and wall time); other rows get empty values.
    A family whose points have no validation Δm (no baseline runs) keeps every point."""
    out = table.copy()
    for col, empty in (("tuned_from", ""), ("tuned_lrs", ""), ("tuning_runs", 0), ("tuning_wall_s", math.nan)):
        out[col] = empty
    if out.empty:
        return out, []
    families: dict[tuple, Family] = {}
    for i, r in out.iterrows():
        m = TUNED.match(str(r["method"]))
        if not m:
            continue
        group = tuple(str(r[k]) for k in GROUP)
        key = (group, m["base"], str(r["method_name"]), str(r["mitigation"]))
        conv = conventions.get(group[1], "flat")
        fam = families.setdefault(key, Family(group, m["base"], str(r["mitigation"])))  # type: ignore[arg-type]
        fam.points.append(
            {
                "index": i,
                "label": str(r["method"]),
                "lr": float(r["lr"]) if "lr" in r and r["lr"] == r["lr"] else float(m["lr"]),
                "val_dm": float(r[f"dm_val_{conv}"]),
                "val_dm_std": float(r[f"dm_val_{conv}_std"]),
                "n_seeds": int(r["n_seeds"]),
                "wall_s": float(r["wall_time_s"]) * int(r["n_seeds"]),
            }
        )
    drop = []
    for fam in families.values():
        fam.points.sort(key=lambda p: p["lr"])
        scored = [p for p in fam.points if p["val_dm"] == p["val_dm"]]
        if len(fam.points) < 2 or not scored:
            continue
        best = min(scored, key=lambda p: (p["val_dm"], p["lr"]))
        fam.chosen = best["label"]
        drop += [p["index"] for p in fam.points if p is not best]
        out.loc[best["index"], "tuned_from"] = fam.base
        out.loc[best["index"], "tuned_lrs"] = ", ".join(f"{p['lr']:g}" for p in fam.points)
        out.loc[best["index"], "tuning_runs"] = fam.runs
        out.loc[best["index"], "tuning_wall_s"] = fam.wall_s
    kept = [f for f in families.values() if f.chosen]
    return out.drop(index=drop).reset_index(drop=True), kept
