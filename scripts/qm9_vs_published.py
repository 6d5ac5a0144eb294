"""Does a CPU-budget QM9 run order the methods as the published QM9 tables do?

For every method of the published tables (Nash-MTL's Table 6; FAMO's Table 2 for FAMO, against
that table's own STL row) that has unmitigated runs here, this prints its Δm per group of targets
(tasks/qm9.py ``TARGET_GROUPS``, and all 11) twice: recomputed from the paper's printed MAEs, and
from our runs (flat, mean over seeds, against our STL runs). Per group it then gives Spearman's
rank correlation between the two orders, with

- a permutation p-value (one-sided, ρ at least as large under random orders; seeded), and
- a seed bootstrap: each method's seeds drawn with replacement, its mean recomputed, ρ again
  (2.5 and 97.5 percentiles of the draws): how much the order here depends on which seeds ran.

    python scripts/qm9_vs_published.py leaderboard/results/qm9-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtlbench.report.aggregate import group_delta_m, load_results  # noqa: E402
from mtlbench.report.published import PublishedTable, read_table, recompute_dm  # noqa: E402
from tasks.qm9 import REPORT_GROUPS  # noqa: E402

TABLES = ("navon2022-nash-mtl-table6-qm9.toml", "liu2023-famo-table2-qm9.toml")


def published_dm(tables: list[PublishedTable], groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """method (ours) -> group -> Δm from the printed MAEs; the first table that prints a method
    gives its values (each against its own baseline row)."""
    out: dict[str, dict[str, float]] = {}
    for table in tables:
        for row in table.rows:
            if row.ours is None or row.ours in out or row is table.baseline_row or row.mitigation != "none":
                continue
            out[row.ours] = {
                g: recompute_dm(dataclasses.replace(table, metrics=[m for m in table.metrics if m.task in members]), row)
                for g, members in groups.items()
            }
    return out


def rank_agreement(ours: dict[str, np.ndarray], paper: dict[str, float], rng: np.random.Generator, draws: int) -> str:
    methods = sorted(ours)
    x = np.array([paper[m] for m in methods])
    y = np.array([ours[m].mean() for m in methods])
    rho = float(spearmanr(x, y).statistic)
    perm = np.array([spearmanr(rng.permutation(x), y).statistic for _ in range(draws)])
    p = (1 + int(np.sum(perm >= rho - 1e-12))) / (draws + 1)
    boot = [
        spearmanr(x, [rng.choice(ours[m], size=len(ours[m]), replace=True).mean() for m in methods]).statistic
        for _ in range(draws)
    ]
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return (
        f"Spearman rho = {rho:+.2f} over {len(methods)} methods "
        f"(permutation p = {p:.3f}; seed bootstrap [{low:+.2f}, {high:+.2f}])"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="result folders (e.g. leaderboard/results/qm9-cpu)")
    parser.add_argument(
        "--published", type=Path, default=ROOT / "leaderboard" / "published", help="folder of the published tables"
    )
    parser.add_argument("--draws", type=int, default=10_000, help="permutations and bootstrap draws (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations and draws")
    args = parser.parse_args(argv)
    groups = {g: list(ts) for g, ts in REPORT_GROUPS.items()}
    paper = published_dm([read_table(args.published / name) for name in TABLES], groups)
    loaded = load_results(args.results)
    for problem in loaded.problems:
        print(f"note: {problem}", file=sys.stderr)
    runs = group_delta_m(loaded, groups)
    runs = runs[(runs["task"] == "qm9") & ~runs["is_baseline"] & (runs["mitigation"] == "none")]
    runs = runs[runs["method"].isin(list(paper))]
    if runs.empty:
        print("no unmitigated QM9 runs of the published tables' methods in " + ", ".join(map(str, args.results)))
        return 1
    rng = np.random.default_rng(args.seed)
    for key, page in runs.groupby(["suite", "backbone"], sort=True):
        print(f"\n## {' / '.join(map(str, key))}")
        seeds = page.groupby("method")["seed"].nunique()
        print("methods (seeds): " + ", ".join(f"{m} ({n})" for m, n in seeds.items()))
        for g, members in groups.items():
            col = f"dm_group:{g}"
            ours = {m: rows[col].to_numpy(dtype=float) for m, rows in page.groupby("method")}
            print(f"\n{g} ({', '.join(members)}): Δm % vs STL, paper | here (mean ± std over seeds)")
            for m in sorted(ours, key=lambda m: paper[m][g]):
                v = ours[m]
                spread = f"{v.std(ddof=1):.1f}" if len(v) > 1 else "-"
                print(f"  {m:10s} {paper[m][g]:8.1f} | {v.mean():8.1f} ± {spread}")
            print("  " + rank_agreement(ours, {m: paper[m][g] for m in ours}, rng, args.draws))
    return 0


if __name__ == "__main__":
    sys.exit(main())
