"""QM9's Δm per group of targets (tasks/qm9.py ``TARGET_GROUPS``) next to the flat Δm over all
11, from result files:

- each unmitigated method: per seed, mean ± std, and paired with ``ew`` seed by seed (mean
  difference, 95% CI, p, and Holm's p over that group's comparisons);
- each mitigated row (e.g. ST): ΔΔm, its Δm minus the same method's unmitigated Δm, paired seed
  by seed, with Holm's p over that group's mitigated rows.

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
from mtlbench.report.stats import Paired, holm, paired_many  # noqa: E402
from tasks.qm9 import REPORT_GROUPS  # noqa: E402

Seeds = dict[int, float]


def _line(label: str, values: Seeds, test: tuple[Paired, float] | None = None) -> str:
    v = [values[s] for s in sorted(values)]
    spread = f"{np.std(v, ddof=1):.1f}" if len(v) > 1 else "-"
    line = f"  {label:14s} " + " ".join(f"{x:7.1f}" for x in v) + f" | {np.mean(v):7.1f} ± {spread}"
    if test is not None:
        t, p_holm = test
        line += f" | {t.diff:+7.1f} [{t.low:+.1f}, {t.high:+.1f}], p = {t.p:.3f}, Holm {p_holm:.3f}"
    return line


def _tested(pairs: list[tuple[Seeds, Seeds]]) -> list[tuple[Paired, float]]:
    tests = paired_many(pairs) if pairs else []
    return list(zip(tests, holm([t.p for t in tests]))) if tests else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="result folders (e.g. leaderboard/results/qm9-cpu)")
    parser.add_argument("--reference", default="ew", help="the method every other is paired with (default: ew)")
    args = parser.parse_args(argv)
    loaded = load_results(args.results)
    for problem in loaded.problems:
        print(f"note: {problem}", file=sys.stderr)
    groups = {g: list(ts) for g, ts in REPORT_GROUPS.items()}
    runs = group_delta_m(loaded, groups)
    runs = runs[(runs["task"] == "qm9") & ~runs["is_baseline"]]
    if runs.empty:
        print("no multi-task QM9 runs with single-task baselines in " + ", ".join(map(str, args.results)))
        return 1
    for key, page in runs.groupby(GROUP, sort=True):
        print(f"\n## {' / '.join(map(str, key))}")
        for g in groups:
            col = f"dm_group:{g}"
            per = {
                (m, mit): dict(zip(rows["seed"].astype(int), rows[col].astype(float)))
                for (m, mit), rows in page.groupby(["method", "mitigation"])
            }
            plain = {m: v for (m, mit), v in per.items() if mit == "none"}
            print(f"\n{g} ({', '.join(groups[g])}): Δm % vs STL per seed | mean ± std | paired vs {args.reference}")
            others = [m for m in sorted(plain) if m != args.reference]
            ref = plain.get(args.reference)
            tests = _tested([(plain[m], ref) for m in others]) if ref else []
            if ref:
                print(_line(args.reference, ref))
            for i, m in enumerate(others):
                print(_line(m, plain[m], tests[i] if tests else None))
            mitigated = [(m, mit) for (m, mit) in sorted(per) if mit != "none" and m in plain]
            if mitigated:
                print("  with a mitigation: Δm per seed | mean ± std | ΔΔm vs the same method unmitigated")
                for (m, mit), test in zip(mitigated, _tested([(per[k], plain[k[0]]) for k in mitigated])):
                    print(_line(f"{m}+{mit}", per[(m, mit)], test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
