"""Benchmark: build the leaderboard site from thousands of result files and print the time table.

SYNTHETIC DATA, FOR TIMING ONLY. The files are generated into a temporary folder from real
result files (``--source``, by default the leaderboard's own ``leaderboard/results/``: the
flagship's files, with their full conflict sampling): each copy gets a new suite name
(``synthetic-bench-<k>``), a new method label (``<method>-v<j>``) or seed, small noise on its
metrics and a ``synthetic`` field saying so, and a recomputed config hash; it is written as the
result store writes files. They are never written into leaderboard/results/ and say nothing
about any method.

Each build runs in its own process (as ``mtlbench leaderboard`` does), so its memory peak is its
own: "peak MiB" is the build process's maximum resident set, "worker MiB" the largest of its
forked workers'. "cold": into an empty folder; "rebuild": the same folder again after one result
file changed. Where the disk cannot hold a row's files and site, that row is projected linearly
from the two largest measured rows and marked "projected".

    python bench/site_build.py                       # 5,000 and 50,000 files, 2 workers
    python bench/site_build.py --files 500,5000 --workers 1,2
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mtlbench.core.cell import Cell
from mtlbench.core.files import dumps_result, iter_result_files, read_result
from mtlbench.core.parallel import fork_map

LABELS = 16  # variants of each multi-task method per suite and backbone
SEEDS = 5

BUILD = r"""
import json, resource, sys, time
from pathlib import Path
from mtlbench.site.build import build_site
t0 = time.perf_counter()
report = build_site([Path(sys.argv[1])], Path(sys.argv[2]), workers=int(sys.argv[3]))
total = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"timings": report.timings, "total": total, "pages": len(report.pages), "peak": peak, "worker": worker}))
"""


def plan(sources: list[dict[str, Any]], n_files: int) -> list[tuple[int, int, str, int]]:
    """What to write: (source index, suite number, label, seed) per file. Each suite holds, per
    backbone and method of the sources, the real ``stl`` runs and LABELS labelled variants of every
    other method, SEEDS seeds each; suites are added until ``n_files`` are planned."""
    by_method: dict[tuple, list[int]] = {}
    for i, r in enumerate(sources):
        by_method.setdefault((r["suite"], r["backbone"], r["method"], r["mitigation"]), []).append(i)
    out: list[tuple[int, int, str, int]] = []
    for k in itertools.count():
        for (_, _, method, _), runs in sorted(by_method.items()):
            labels = [method] if method == "stl" else [f"{method}-v{j}" for j in range(LABELS)]
            for label, seed in itertools.product(labels, range(SEEDS)):
                if len(out) == n_files:
                    return out
                out.append((runs[seed % len(runs)], k, label, seed))
    return out


def synthesize(sources: list[dict[str, Any]], n_files: int, dst: Path, workers: int) -> list[Path]:
    """Write ``n_files`` result files derived from ``sources`` under ``dst`` (in ``workers``
    processes); returns their paths."""
    jobs = plan(sources, n_files)

    def write(job: tuple[int, int, str, int]) -> str:
        i, k, label, seed = job
        src = sources[i]
        rng = random.Random(f"{k}/{label}/{seed}")
        r = dict(src)
        suite = f"synthetic-bench-{k}-{src['suite']}"
        r.update(suite=suite, method=label, seed=seed, synthetic="site-build benchmark: a copy of a real result with a "
                 "new suite, label or seed and noise on its metrics; not a real run")  # fmt: skip
        r["cell"] = {**src["cell"], "suite": suite, "method": label, "seed": seed}
        r["config_hash"] = Cell(**r["cell"]).config_hash
        r["metrics"] = {split: {key: v + rng.gauss(0.0, 0.003 * max(abs(v), 1e-3)) for key, v in values.items()}
                        for split, values in (src.get("metrics") or {}).items()}  # fmt: skip
        if (src.get("cost") or {}).get("step_time_ms"):
            r["cost"] = {**src["cost"], "step_time_ms": src["cost"]["step_time_ms"] * rng.uniform(0.9, 1.1)}
        path = dst / suite / r["task"] / r["backbone"] / f"{label}__{r['mitigation']}__seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps_result(r), encoding="utf-8")
        return str(path)

    return [Path(p) for p in fork_map(write, jobs, workers, 200)]


def build(results: Path, out: Path, workers: int) -> dict[str, Any]:
    os.sync()  # the synthetic files' writes reach the disk first: the build is timed alone
    done = subprocess.run([sys.executable, "-c", BUILD, str(results), str(out), str(workers)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="leaderboard/results", help="folder of real result files to derive from")
    parser.add_argument("--files", default="5000,50000", help="comma-separated numbers of result files to build from")
    parser.add_argument("--workers", default="2", help="comma-separated numbers of reading and rendering processes")
    parser.add_argument("--tmp", default=None, help="folder for the synthetic files and sites (default: the system's)")
    args = parser.parse_args()
    sources = []
    for p in iter_result_files([Path(args.source)]):
        try:
            r = read_result(p)
        except Exception:  # noqa: BLE001 - another schema or an unreadable file: not a source
            continue
        if r.get("status") == "ok":
            sources.append(r)
    if not sources:
        print(f"no ok result files under {args.source}: run `make run` (the default suite) first", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.files.split(",")):
        for workers in (int(x) for x in args.workers.split(",")):
            with tempfile.TemporaryDirectory(prefix="mtlbench-site-bench-", dir=args.tmp) as tmp:
                rows.append(measure(sources, n, workers, Path(tmp), rows))
    head = ["files", "workers", "result KiB", "read s", "run pages s", "other pages s", "cold s", "rebuild s",
            "site MiB", "peak MiB", "worker MiB"]  # fmt: skip
    print(f"Site build from synthetic result files derived from {len(sources)} real ones (2 cores; seconds)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(cell(h, row[h], row["projected"]) for h in head) + " |")
    return 0


def measure(sources: list[dict[str, Any]], n: int, workers: int, tmp: Path, done: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the table: n files built with ``workers``; projected when the disk is too small."""
    measured = [r for r in done if not r["projected"] and r["workers"] == workers]
    if measured:
        per_file = (measured[-1]["site MiB"] + measured[-1]["result KiB"] * measured[-1]["files"] / 1024) / measured[-1]["files"]
        if per_file * n * 1.2 > shutil.disk_usage(tmp).free / 2**20:
            return project(measured, n, workers)
    results, out = tmp / "results", tmp / "site"
    paths = synthesize(sources, n, results, workers)
    kib = size_mib(results) * 1024 / len(paths)
    cold = build(results, out, workers)
    one = paths[len(paths) // 2]
    data = json.loads(one.read_text(encoding="utf-8"))
    data["metrics"]["test"] = {k: v * 1.001 for k, v in data["metrics"]["test"].items()}
    one.write_text(dumps_result(data), encoding="utf-8")
    warm = build(results, out, workers)
    t = cold["timings"]
    read = t.get("read and aggregate results", 0.0)
    pages = t.get("run pages", 0.0)
    row = {"files": len(paths), "workers": workers, "result KiB": kib, "read s": read, "run pages s": pages,
           "other pages s": cold["total"] - read - pages, "cold s": cold["total"], "rebuild s": warm["total"],
           "site MiB": size_mib(out), "peak MiB": max(cold["peak"], warm["peak"]), "worker MiB": cold["worker"],
           "projected": False}  # fmt: skip
    print(row, file=sys.stderr, flush=True)
    return row


def project(measured: list[dict[str, Any]], n: int, workers: int) -> dict[str, Any]:
    """A row for ``n`` files, linear in the file count through the two largest measured rows."""
    a, b = (measured[-2], measured[-1]) if len(measured) > 1 else (None, measured[-1])
    row: dict[str, Any] = {"files": n, "workers": workers, "projected": True}
    for key in ("result KiB", "read s", "run pages s", "other pages s", "cold s", "rebuild s", "site MiB", "peak MiB"):
        if a is None:
            row[key] = b[key] * n / b["files"] if key != "result KiB" else b[key]
            continue
        row[key] = a[key] + (b[key] - a[key]) / (b["files"] - a["files"]) * (n - a["files"])
    row["worker MiB"] = math.nan
    return row


def cell(key: str, value: Any, projected: bool) -> str:
    if key == "files":
        return f"{value:,}" + (" (projected)" if projected else "")
    if key == "workers":
        return str(value)
    if value != value:
        return "–"
    return f"{value:.1f}" if key.endswith(" s") or key == "result KiB" else f"{value:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
