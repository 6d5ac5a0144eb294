"""The ``mtlbench`` command line: run, status, prepare, leaderboard, validate, list."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from mtlbench.core.errors import MtlbenchError


def _config_args(p: argparse.ArgumentParser, results: bool = True) -> None:
    p.add_argument("--config", default="benchmark.toml", help="benchmark file (default: ./benchmark.toml)")
    p.add_argument("--suite", action="append", help="suite to use (repeatable; default: the file's default_suite)")
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,VALUE]",
        help="keep cells whose KEY (suite, task, backbone, method, mitigation, seed) matches (repeatable)",
    )
    if results:
        p.add_argument("--results", help="results folder (default: results/ next to the config)")


# CLI flag -> key of [executor] (slurm keys prefixed "slurm."); they override benchmark.toml.
EXECUTOR_FLAGS = {
    "executor": "kind",
    "device": "devices",
    "runs_per_device": "runs_per_device",
    "processes_per_run": "processes_per_run",
    "threads": "threads",
    "deterministic": "deterministic",
    "checkpoint": "checkpoint",
    "slurm_backend": "slurm.backend",
    "partition": "slurm.partition",
    "gpus": "slurm.gpus",
    "cpus": "slurm.cpus",
    "mem_gb": "slurm.mem_gb",
    "time_min": "slurm.time_min",
    "max_parallel": "slurm.max_parallel",
    "wait": "slurm.wait",
}


def _executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor (overrides [executor] in benchmark.toml; see docs/running.md)")
    g.add_argument("--executor", choices=["local", "slurm"], help="where cells run (default: local)")
    g.add_argument(
        "--device", metavar="DEVICES", help="auto (every visible GPU, else CPU), cpu, cuda, or a list such as cuda:0,cuda:1"
    )
    g.add_argument("--runs-per-device", type=int, metavar="K", help="cells sharing each device at a time (default: 1)")
    g.add_argument(
        "--processes-per-run",
        type=int,
        metavar="N",
        help="processes that train one cell together, each on an equal shard of every batch (default: 1)",
    )
    g.add_argument(
        "--threads", type=int, metavar="N", help="torch threads per run (default: torch's own in-process, cores / runs in a pool)"
    )
    g.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic CUDA kernels (default: on; CPU runs always are)",
    )
    g.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="checkpoint every epoch so a killed cell resumes (default: on)",
    )
    g.add_argument("--slurm-backend", choices=["slurm", "local"], help="slurm: sbatch; local: submitit's LocalExecutor")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--gpus", type=int, help="GPUs per SLURM job")
    g.add_argument("--cpus", type=int, help="CPUs per SLURM job")
    g.add_argument("--mem-gb", type=float, help="memory per SLURM job, GB")
    g.add_argument("--time-min", type=int, help="time limit per SLURM job, minutes")
    g.add_argument("--max-parallel", type=int, help="at most this many SLURM jobs at a time")
    g.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wait for the SLURM jobs and report them (default: on); --no-wait submits and returns",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlbench", description="Benchmark and leaderboard suite for multi-task learning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the cells of a suite that have no result yet")
    _config_args(p)
    p.add_argument("--data", help="folder of prepared datasets (default: $MTLBENCH_DATA or ~/.cache/mtlbench)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded cells and their state, run nothing")
    p.add_argument("--retry-failed", action="store_true", help="also re-run cells whose result is `failed`")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--add-method",
        action="append",
        metavar="NAME[,NAME]",
        help="run these methods (default options) under the suite's protocol as if it listed them, without editing "
        "benchmark.toml; only their cells run unless --only method=... says otherwise (repeatable)",
    )
    _executor_args(p)

    p = sub.add_parser("status", help="done / failed (with reasons) / running / pending, per task and method")
    _config_args(p)
    p.add_argument("--all", action="store_true", help="also list every cell with its state")

    p = sub.add_parser("prepare", help="convert a dataset in its standard on-disk format into the suite's store")
    p.add_argument("task", help="task name (see `mtlbench list tasks`)")
    p.add_argument(
        "--source", help="path of the dataset in its standard format (optional where the task finds its data, e.g. qm9)"
    )
    p.add_argument("--config", default="benchmark.toml", help="benchmark file whose tasks/ folder to use")
    p.add_argument("--data", help="folder of prepared datasets (default: $MTLBENCH_DATA or ~/.cache/mtlbench)")
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a task option the store depends on, e.g. image_size=128 (repeatable; see `mtlbench list tasks`)",
    )

    p = sub.add_parser("leaderboard", help="aggregate result files and render the static site")
    p.add_argument("--results", action="append", help="result folder(s) to read (repeatable; default: results/)")
    p.add_argument("--out", default="leaderboard/site", help="output folder (default: leaderboard/site)")
    p.add_argument(
        "--published",
        default="leaderboard/published",
        help="folder of published tables for the reproduction page (default: leaderboard/published; skipped if absent)",
    )
    p.add_argument("--workers", type=int, default=0, help="processes reading results and rendering run pages (0: one per CPU)")

    p = sub.add_parser("validate", help="check result files (a submission) and explain every problem")
    p.add_argument("paths", nargs="+", help="result files or folders")
    p.add_argument(
        "--config",
        default="benchmark.toml",
        help="benchmark file whose tasks/ and baselines/ declare the known names (default: ./benchmark.toml)",
    )

    p = sub.add_parser("migrate", help="rewrite result files of an older schema in the current one (in place, values unchanged)")
    p.add_argument("paths", nargs="+", help="result files or folders")
    p.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")

    p = sub.add_parser("list", help="list tasks, backbones, methods or mitigations")
    p.add_argument("what", choices=["tasks", "backbones", "methods", "mitigations"])
    p.add_argument("--config", default="benchmark.toml", help="benchmark file whose plugins to list")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MtlbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _results_dir(args: argparse.Namespace, config: Path) -> Path:
    return Path(args.results) if args.results else config.parent / "results"


def _load(args: argparse.Namespace):
    from mtlbench.grid.config import load_benchmark, parse_filters

    added = [m.strip() for item in getattr(args, "add_method", None) or [] for m in item.split(",") if m.strip()]
    bench = load_benchmark(args.config, added, args.suite)
    filters = parse_filters(args.only)
    if added and "method" not in filters:
        filters["method"] = set(added)  # run the added methods only; the suite's others are already run
        suites = ", ".join(args.suite or [bench.default_suite])
        print(
            f"--add-method: {', '.join(added)} under suite {suites}'s protocol (only these cells run; compare with the "
            "accepted runs: mtlbench leaderboard --results results --results leaderboard/results)"
        )
    cells = bench.cells(args.suite, filters)
    return bench, cells


def cmd_run(args: argparse.Namespace) -> int:
    from mtlbench.datasets.splits import data_root
    from mtlbench.grid.executor import with_overrides
    from mtlbench.run.runner import plan, run_cells
    from mtlbench.run.store import ResultStore

    bench, cells = _load(args)
    results = _results_dir(args, bench.path)
    options = with_overrides(bench.executor, {key: getattr(args, flag) for flag, key in EXECUTOR_FLAGS.items()})
    if not cells:
        from mtlbench.grid.config import parse_filters

        print(bench.why_no_cells(args.suite, parse_filters(args.only)))
        return 1
    if args.dry_run:
        todo, skipped = plan(cells, ResultStore(results), args.retry_failed, options.lock_stale_s)
        action = {id(s.cell): "run" for s in todo}
        action.update({id(s.cell): f"skip ({s.state}{': ' + s.reason if s.reason else ''})" for s in skipped})
        print(f"{len(cells)} cells ({len(todo)} would run) -> {results}")
        header = ("suite", "task", "backbone", "method", "mitigation", "seed", "hash", "action")
        rows = [(c.suite, c.task, c.backbone, c.method, c.mitigation, str(c.seed), c.config_hash, action[id(c)]) for c in cells]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for r in [header, *rows]:  # columns as wide as their longest entry; the seed right-aligned
            cols = [v.rjust(w) if i == 5 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))]
            print("  ".join([*cols, r[-1]]))
        for name in args.suite or [bench.default_suite]:
            for note in bench.suites[name].skipped:
                print(f"not expanded: {note}")
        return 0
    data_dir = Path(args.data) if args.data else data_root()
    summary = run_cells(
        bench, cells, results, data_dir=data_dir, options=options, retry_failed=args.retry_failed, progress=not args.no_progress
    )
    if options.kind == "slurm" and not options.slurm.wait:  # submitted; the jobs write their results
        submitted = summary.total - summary.skipped_done - summary.skipped_failed - summary.running_elsewhere
        print(
            f"submitted {submitted} cells without waiting ({summary.skipped_done} already done); follow them with "
            f"`mtlbench status --results {results}`"
        )
        return 0
    others = f"; {summary.not_run} left to other runners" if summary.not_run else ""
    print(
        f"ran {summary.ran} cells in {summary.wall_time_s:.1f} s ({summary.failed} failed); "
        f"{summary.skipped_done} already done{others}; results in {results}"
    )
    return 1 if summary.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from mtlbench.run.status import grid_status

    bench, cells = _load(args)
    print(grid_status(cells, _results_dir(args, bench.path), bench.executor.lock_stale_s, every_cell=args.all))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mtlbench.core.errors import ConfigError
    from mtlbench.datasets.splits import data_root
    from mtlbench.grid.plugins import discover

    plugins = discover(Path(args.config).parent)
    if args.task not in plugins.tasks:
        raise ConfigError(f"unknown task {args.task!r}; valid: {', '.join(sorted(plugins.tasks))}")
    task_cls = plugins.tasks[args.task]
    options = parse_options(args.option, task_cls.option_defaults(), args.task)
    try:
        task = task_cls(**options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--option: {e}") from None
    data_dir = Path(args.data) if args.data else data_root()
    path = task.prepare(Path(args.source), data_dir) if args.source else task.prepare_installed(data_dir)
    print(f"prepared {args.task} -> {path}")
    return 0


def parse_options(items: list[str] | None, defaults: dict, task: str) -> dict:
    """``["image_size=128"]`` -> ``{"image_size": 128}`` (values read as TOML, else as strings)."""
    import tomllib

    from mtlbench.core.errors import ConfigError

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ConfigError(
                f"--option {item!r}: expected KEY=VALUE with KEY an option of task {task!r}: {', '.join(defaults) or '(none)'}"
            )
        try:
            options[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = value.strip()
    return options


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from mtlbench.site.build import build_site

    dirs = [Path(d) for d in (args.results or ["results"])]
    for d in dirs:
        if not d.exists():
            from mtlbench.core.errors import ConfigError

            raise ConfigError(f"--results {d}: no such folder; run `mtlbench run` first or pass the folder holding result files")
    published = Path(args.published)
    workers = (
        args.workers
        if args.workers > 0
        else len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (os.cpu_count() or 1)
    )
    report = build_site(dirs, Path(args.out), published if published.is_dir() else None, workers)
    print(
        f"leaderboard: {report.n_runs} runs ({report.n_failed} failed) -> {report.out / 'index.html'} "
        f"({len(report.pages)} pages, {sum(report.timings.values()):.1f} s)"
    )
    for p in report.problems:
        print(f"warning: {p}", file=sys.stderr)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mtlbench.report.validate import known_from_project, validate_paths

    report = validate_paths([Path(p) for p in args.paths], known_from_project(Path(args.config).parent))
    for p in report.problems:
        print(p)
    n_warnings = sum(p.warning for p in report.problems)
    print(f"{report.n_files} files checked, {len(report.rejected)} rejected, {n_warnings} warnings")
    return 1 if report.rejected else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from mtlbench.core.cell import RESULT_SCHEMA
    from mtlbench.report.migrate import migrate_paths

    report = migrate_paths([Path(p) for p in args.paths], dry_run=args.dry_run)
    for p in report.problems:
        print(f"error: {p}", file=sys.stderr)
    verb = "would migrate" if args.dry_run else "migrated"
    print(
        f"{verb} {len(report.migrated)} file(s) to {RESULT_SCHEMA} ({report.bytes_before / 2**20:.1f} MiB -> "
        f"{report.bytes_after / 2**20:.1f} MiB); {report.current} already current; {len(report.problems)} left as they are"
    )
    return 1 if report.problems else 0


def cmd_list(args: argparse.Namespace) -> int:
    from mtlbench.grid.plugins import discover

    root = Path(args.config).parent
    if args.what == "mitigations":
        for name, m in discover(root).mitigations.items():
            opts = ", ".join(f"{k}={v!r}" for k, v in m.option_defaults().items()) or "-"
            roles = f"  roles: {', '.join(sorted(m.roles))}" if m.roles else ""
            print(f"{name:<6} v{m.version}  {m.description}{roles}\n{'':<7}cite: {m.citation or '-'}\n{'':<7}options: {opts}")
        return 0
    if args.what == "backbones":
        from mtlbench.backbones.build import native_models
        from mtlbench.grid.config import load_benchmark

        bench = load_benchmark(args.config)
        for bid, spec in bench.backbones.items():
            source = "native" if spec.model in native_models() else "timm"
            print(f"{bid:<14} {source + ':' + spec.model:<30} stem={spec.stem:<8} kwargs={spec.kwargs}")
        print("native models (the representation each gives the heads):")
        for name, native in native_models().items():
            print(f"  {name:<14} v{native.version}  [{native.representation}]  {native.description}")
        print('any timm model name can be declared as [backbones.<id>] model = "..." (pooled features)')
        return 0
    plugins = discover(root)
    registry = plugins.tasks if args.what == "tasks" else plugins.methods
    for cls_name, src in registry.unnamed:  # a plugin class that would silently not exist
        print(f'warning: {src}: class {cls_name} sets no `name`, so it is not registered; add `name = "..."`', file=sys.stderr)
    if args.what == "tasks":
        for name, task in sorted(plugins.tasks.items()):
            print(f"{name:<14} v{task.version}  tasks: {', '.join(task.tasks)}  {task.description}")
    else:
        width = max(len(n) for n in plugins.methods)
        pad = " " * (width + 14)
        same_paper = plugins.same_paper()
        for name, cls in sorted(plugins.methods.items()):
            opts = ", ".join(f"{k}={v!r}" for k, v in cls.option_defaults().items()) or "-"
            roles = f"  roles: {', '.join(sorted(cls.roles))}" if cls.roles else ""
            extra = "".join(
                f"\n{pad}{label}: {text}"
                for label, text in (
                    ("properties", ", ".join(sorted(cls.properties))),
                    ("checked against", ", ".join(f"{m.source} {m.name}" for m in cls.matches)),
                    ("same paper as", ", ".join(same_paper.get(name, []))),
                )
                if text
            )
            print(
                f"{name:<{width}}  {cls.kind:<11} v{cls.version}  {cls.description}{roles}\n{pad}cite: {cls.citation}\n"
                f"{pad}reference: {cls.reference or '-'}\n{pad}options: {opts}{extra}"
            )
    return 0


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "prepare": cmd_prepare,
    "leaderboard": cmd_leaderboard,
    "validate": cmd_validate,
    "migrate": cmd_migrate,
    "list": cmd_list,
}


if __name__ == "__main__":
    sys.exit(main())
