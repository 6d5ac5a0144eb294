"""QM9's Δm per group of targets (tasks/qm9.py ``TARGET_GROUPS``) next to the flat Δm over all
11: per seed, mean ± std, and each method paired with ``ew`` seed by seed (mean difference, 95%
CI, p, and Holm's p over the page's comparisons of that group). A reading of result files only.

    python scripts/qm9_groups.py leaderboard/results/qm9-cpu [more folders...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtlbench.report.aggregate import GROUP, group_delta_m, load_results  # noqa: E402
from mtlbench.report.stats import holm, paired_many  # noqa: E402
from tasks.qm9 import TARGET_GROUPS, TASKS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="result folders (e.g. leaderboard/results/qm9-cpu)")
    parser.add_argument("--reference", default="ew", help="the method every other is paired with (default: ew)")
    args = parser.parse_args(argv)
    loaded = load_results(args.results)
    for problem in loaded.problems:
        print(f"note: {problem}", file=sys.stderr)
    groups = {**{g: list(ts) for g, ts in TARGET_GROUPS.items()}, "all": list(TASKS)}
    runs = group_delta_m(loaded, groups)
    runs = runs[(runs["task"] == "qm9") & runs["unmitigated"] & ~runs["is_baseline"]]
    if runs.empty:
        print("no unmitigated multi-task QM9 runs with single-task baselines in " + ", ".join(map(str, args.results)))
        return 1
    for key, page in runs.groupby(GROUP + ["mitigation"], sort=True):
        print(f"\n## {' / '.join(map(str, key))}")
        for g in groups:
            col = f"dm_group:{g}"
            per = {m: dict(zip(rows["seed"].astype(int), rows[col].astype(float))) for m, rows in page.groupby("method")}
            members = ", ".join(groups[g])
            print(f"\n{g} ({members}): Δm % vs STL per seed | mean ± std | paired vs {args.reference}: diff [95% CI], p, Holm p")
            others = [m for m in sorted(per) if m != args.reference]
            ref = per.get(args.reference, {})
            tests = paired_many([(per[m], ref) for m in others]) if ref else []
            adjusted = holm([t.p for t in tests]) if tests else []
            for m in ([args.reference] if ref else []) + others:
                values = [per[m][s] for s in sorted(per[m])]
                line = f"  {m:10s} " + " ".join(f"{v:7.1f}" for v in values)
                spread = f"{np.std(values, ddof=1):.1f}" if len(values) > 1 else "-"
                line += f" | {np.mean(values):7.1f} ± {spread}"
                if m in others and tests:
                    t, p_holm = tests[others.index(m)], adjusted[others.index(m)]
                    line += f" | {t.diff:+7.1f} [{t.low:+.1f}, {t.high:+.1f}], p = {t.p:.3f}, Holm {p_holm:.3f}"
                print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
