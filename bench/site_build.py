"""Benchmark: build the leaderboard site from thousands of result files and print the time table.

SYNTHETIC DATA, FOR TIMING ONLY. The files are generated into a temporary folder from real
result files (``--source``, e.g. the default suite's ``results/`` after ``make run``): each copy
gets a new suite name (``synthetic-bench-<k>``), a new method label (``<method>-v<j>``) or seed,
small noise on its metrics and a ``synthetic`` field saying so, and a recomputed config hash.
They are never written into leaderboard/results/ and say nothing about any method.

    python bench/site_build.py --source results --files 500,5000
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from mtlbench.core.cell import Cell
from mtlbench.core.files import iter_result_files
from mtlbench.site.build import build_site

LABELS = 16  # variants of each multi-task method per suite and backbone
SEEDS = 5  # 490 files per suite from the default suite's 2 backbones x 4 methods


def synthesize(sources: list[dict], n_files: int, dst: Path, rng: random.Random) -> int:
    """Write ``n_files`` result files derived from ``sources`` under ``dst``; returns the count.
    Each suite holds, per backbone, the real ``stl`` runs and LABELS labelled variants of every
    other method, SEEDS seeds each; suites are added until ``n_files`` are written."""
    by_method: dict[tuple, list[dict]] = {}
    for r in sources:
        by_method.setdefault((r["backbone"], r["method"]), []).append(r)
    written = 0
    for k in itertools.count():
        for (backbone, method), runs in sorted(by_method.items()):
            labels = [method] if method == "stl" else [f"{method}-v{j}" for j in range(LABELS)]
            for label, seed in itertools.product(labels, range(SEEDS)):
                if written == n_files:
                    return written
                r = copy.deepcopy(runs[seed % len(runs)])
                r.update(suite=f"synthetic-bench-{k}", method=label, seed=seed,
                         synthetic="site-build benchmark: a copy of a real result with a new suite, label or seed "
                                   "and noise on its metrics; not a real run")
                r["cell"].update(suite=r["suite"], method=label, seed=seed)
                r["config_hash"] = Cell(**r["cell"]).config_hash
                for split in (r.get("metrics") or {}).values():
                    for key, v in split.items():
                        split[key] = min(1.0, max(0.0, v + rng.gauss(0.0, 0.003)))
                if r.get("cost", {}).get("step_time_ms"):
                    r["cost"]["step_time_ms"] *= rng.uniform(0.9, 1.1)
                path = dst / r["suite"] / r["task"] / backbone / f"{label}__{r['mitigation']}__seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(r))
                written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="results", help="folder of real result files to derive from (default: results/)")
    parser.add_argument("--files", default="500,5000", help="comma-separated numbers of result files to build from")
    parser.add_argument("--workers", default="1,2", help="comma-separated numbers of reading and rendering processes to compare")
    args = parser.parse_args()
    sources = [json.loads(p.read_text()) for p in iter_result_files([Path(args.source)])]
    sources = [r for r in sources if r.get("status") == "ok"]
    if not sources:
        print(f"no ok result files under {args.source}: run `make run` (the default suite) first", file=sys.stderr)
        return 2
    rng = random.Random(0)
    rows = []
    for n in (int(x) for x in args.files.split(",")):
        with tempfile.TemporaryDirectory(prefix="mtlbench-site-bench-") as tmp:
            results = Path(tmp) / "results"
            written = synthesize(sources, n, results, rng)
            for workers in (int(x) for x in args.workers.split(",")):
                out = Path(tmp) / f"site-{workers}"
                t0 = time.perf_counter()
                report = build_site([results], out, workers=workers)
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                build_site([results], out, workers=workers)
                warm = time.perf_counter() - t0
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
                rows.append((written, workers, len(report.pages), report.plots_drawn, report.timings, cold, warm, size))
    steps = list(rows[0][4])
    head = ["files", "workers", "pages", "plots"] + steps + ["total s", "rebuild s", "site MiB"]
    print("Site build time in seconds (synthetic result files derived from real ones; rebuild: same files,"
          " plots from the cache)")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for written, workers, pages, drawn, timings, cold, warm, size in rows:
        print(" | ".join([str(written), str(workers), str(pages), str(drawn)] + [f"{timings[s]:.2f}" for s in steps]
                         + [f"{cold:.2f}", f"{warm:.2f}", f"{size:.0f}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
