"""`mtlbench validate`: check result files (a submission) and explain every problem.

Each file is checked for: valid JSON of the current schema; the result file's typed definition
(:mod:`mtlbench.core.result`: the type and range of every field, finite metrics in ``ok``
results, p% in [0, 100], cosines in [-1, 1], positive costs ..., and the agreement of its
parts); the config hash against the config stored beside it; the copies of the
cell's fields; the file name the runner gives it; the required provenance; labels that are safe
names; duplicates (the same cell twice); one setting (protocol, backbone ...) per suite, task and
backbone; and, against the project's plugins, unknown task,
method and mitigation names, the method's kind and options, the task's version and its metric
declarations. Every problem names the file and the field. Warnings (a run from a checkout with
uncommitted changes) do not reject a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mtlbench.core.cell import LABEL_RE, TUNED
from mtlbench.core.errors import ResultError
from mtlbench.core.files import check_hash, iter_result_files, read_result
from mtlbench.core.registry import wrapper_version
from mtlbench.core.result import parse_result

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
CELL_KEY = ("suite", "task", "backbone", "method", "mitigation", "seed")
SETTING = ("task_version", "task_options", "protocol", "backbone_spec", "conflict")  # shared by one table


@dataclass(frozen=True)
class Problem:
    path: Path
    field: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {'warning: ' if self.warning else ''}{self.field}: {self.message}"


@dataclass
class Known:
    """What the project declares: per task its version and metrics (key -> (sub-task,
    higher_is_better)); per method its kind, option names and version; per mitigation its version."""

    tasks: dict[str, tuple[str, dict[str, tuple[str, bool]]]] = field(default_factory=dict)
    methods: dict[str, tuple[str, set[str]]] = field(default_factory=dict)
    mitigations: set[str] = field(default_factory=set)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> name -> version
    bases: dict[str, str] = field(default_factory=dict)  # a wrapper method -> the base it wraps by default


@dataclass
class Report:
    problems: list[Problem]
    n_files: int

    @property
    def rejected(self) -> list[Path]:
        return sorted({p.path for p in self.problems if not p.warning}, key=str)


def known_from_project(root: Path) -> Known:
    """The names declared by the plugins next to a benchmark.toml (imports them)."""
    from mtlbench.core.errors import ConfigError
    from mtlbench.grid.plugins import discover

    root = Path(root)
    if not (root / "tasks").is_dir() and not (root / "baselines").is_dir():
        raise ConfigError(
            f"{root.resolve()}: no tasks/ or baselines/ folder, so task and method names cannot be "
            "checked; run from the project root or pass --config path/to/benchmark.toml"
        )
    plugins = discover(root)
    return Known(
        tasks={n: (str(c.version), {m.key: (m.task, m.higher_is_better) for m in c.metrics}) for n, c in plugins.tasks.items()},
        methods={n: (c.kind, set(c.option_defaults())) for n, c in plugins.methods.items()},
        mitigations=set(plugins.mitigations),
        versions=plugins.versions(),
        bases={n: str(c.option_defaults().get("base")) for n, c in plugins.methods.items() if getattr(c, "wraps_base", False)},
    )


# --------------------------------------------------------------------------- one file


COMMIT_FIELD = "provenance.git.commit"


def check_schema(path: Path, data: dict[str, Any]) -> list[Problem]:
    """The result file's typed definition (mtlbench.core.result) and the agreement of its parts,
    plus what a submission needs beyond a readable result: the commit of the code that ran."""
    _, problems = parse_result(data)
    out = [Problem(path, p.field, p.message) for p in problems]
    if data.get("status") == "failed" and not (isinstance(data.get("reason"), str) and data["reason"]):
        out.append(Problem(path, "reason", "a failed result needs the reason it failed"))
    commit = _get(data, COMMIT_FIELD)[1]
    if not (isinstance(commit, str) and COMMIT_RE.match(commit)):
        out.append(
            Problem(
                path,
                COMMIT_FIELD,
                f"{commit!r:.80}, expected the 40-hex git commit of the code that ran (run from a git checkout of mtlbench)",
            )
        )
    return out


def _get(data: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def check_identity(path: Path, data: dict[str, Any]) -> list[Problem]:
    """Hash, copies of the cell's fields, labels and the file name."""
    out = []
    try:
        check_hash(path, data)
    except ResultError as e:
        out.append(Problem(path, "config_hash", str(e).split(": ", 1)[-1]))
    cell: dict[str, Any] = data["cell"] if isinstance(data.get("cell"), dict) else {}
    for k in CELL_KEY + ("task_version", "method_name", "method_version", "mitigation_name", "mitigation_version"):
        if data.get(k) != cell.get(k):
            out.append(Problem(path, k, f"{data.get(k)!r} but cell.{k} = {cell.get(k)!r}"))
    for k in ("suite", "task", "backbone", "method", "mitigation"):
        if not isinstance(data.get(k), str) or not LABEL_RE.match(data[k]):
            out.append(
                Problem(
                    path,
                    k,
                    f"{data.get(k)!r:.80} is not a valid label (letters, digits, '_', '.', '+', '-'; "
                    "starting with a letter or digit)",
                )
            )
    expected = f"{data.get('method')}__{data.get('mitigation')}__seed{data.get('seed')}.json"
    if path.name != expected:
        out.append(
            Problem(
                path,
                "file name",
                f"expected {expected} (as `mtlbench run` names it), in "
                f"<results>/{data.get('suite')}/{data.get('task')}/{data.get('backbone')}/",
            )
        )
    return out


def check_known(path: Path, data: dict[str, Any], known: Known) -> list[Problem]:
    """Names, versions, kinds, options and metric declarations against the project's plugins."""
    out = []
    cell: dict[str, Any] = data["cell"] if isinstance(data.get("cell"), dict) else {}
    task = data.get("task")
    if task not in known.tasks:
        out.append(Problem(path, "task", f"unknown task {task!r}; known: {', '.join(sorted(known.tasks))}"))
    else:
        version, metrics = known.tasks[task]
        if data.get("task_version") != version:
            out.append(
                Problem(
                    path,
                    "task_version",
                    f"{data.get('task_version')!r}, but {task} is version {version!r} "
                    "now; results of different versions never mix: re-run the cell",
                )
            )
        elif data.get("status") == "ok" and isinstance(data.get("metric_info"), dict):
            stored = {
                k: (v.get("task"), v.get("higher_is_better")) for k, v in data["metric_info"].items() if isinstance(v, dict)
            }
            if stored != metrics:
                out.append(Problem(path, "metric_info", f"{stored} differs from what {task} declares: {metrics}"))
    name = data.get("method_name")
    if name not in known.methods:
        out.append(
            Problem(
                path,
                "method_name",
                f"unknown method {name!r}; known: {', '.join(sorted(known.methods))} "
                "(a new method needs its file in baselines/ in the same pull request)",
            )
        )
    else:
        kind, options = known.methods[name]
        if data.get("method_kind") != kind:
            out.append(Problem(path, "method_kind", f"{data.get('method_kind')!r}, but {name} is a {kind!r} method"))
        extra = sorted(set(cell.get("method_options") or {}) - options)
        if extra:
            out.append(Problem(path, "cell.method_options", f"{extra} are not options of {name} (options: {sorted(options)})"))
    mitigation = cell.get("mitigation_name")
    if mitigation not in known.mitigations:
        out.append(
            Problem(
                path, "cell.mitigation_name", f"unknown mitigation {mitigation!r}; known: {', '.join(sorted(known.mitigations))}"
            )
        )
    for kind, plugin in (("method", name), ("mitigation", mitigation)):
        now = known.versions.get(kind, {}).get(str(plugin))
        if kind == "method" and now is not None and name in known.bases:  # a wrapper's version names its base's
            base = str((cell.get("method_options") or {}).get("base", known.bases[str(name)]))
            now = wrapper_version(now, base, str(known.versions.get("method", {}).get(base)))
        if now is not None and str(data.get(f"{kind}_version")) != now:
            out.append(
                Problem(
                    path,
                    f"{kind}_version",
                    f"{data.get(f'{kind}_version')!r}, but {kind} {plugin} is version "
                    f"{now!r} now; results of different versions never mix: re-run the cell",
                )
            )
    return out


def _against_first(
    first: dict[tuple[str, ...], tuple[Path, dict[str, Any]]], key: tuple[str, ...], path: Path, values: dict[str, Any]
) -> list[tuple[str, Path, Any]]:
    """Remember ``values`` as ``key``'s first file's, or return where they differ from that
    file's: (field, that file, its value)."""
    if key not in first:
        first[key] = (path, values)
        return []
    other, expected = first[key]
    return [(k, other, expected[k]) for k in values if values[k] != expected[k]]


def check_same_setting(
    path: Path, data: dict[str, Any], first: dict[tuple[str, ...], tuple[Path, dict[str, Any]]]
) -> list[Problem]:
    """The runs of one suite, task and backbone form one table and share one setting (task
    version and options, protocol, backbone, conflict sampling); ``first`` remembers each
    table's first file. A tuned method's cells (labels ``<method>.lr<lr>``) may differ in the
    learning rate only; the other runs share one."""
    cell: dict[str, Any] = data["cell"] if isinstance(data.get("cell"), dict) else {}
    setting = {k: cell.get(k) for k in SETTING}
    table = tuple(str(data.get(k)) for k in CELL_KEY[:3])
    out: list[Problem] = []
    protocol = setting["protocol"]
    if isinstance(protocol, dict):
        setting["protocol"] = {k: v for k, v in protocol.items() if k != "lr"}
        if not TUNED.match(str(data.get("method"))):
            out += [
                Problem(
                    path,
                    "cell.protocol.lr",
                    f"{protocol.get('lr')!r} differs from {other} ({was!r}) in the same suite, task and "
                    "backbone; only a tuned method's cells (suite `tune`) may use other rates",
                )
                for _, other, was in _against_first(first, (*table, "lr"), path, {"lr": protocol.get("lr")})
            ]
    return out + [
        Problem(
            path,
            f"cell.{k}",
            f"{setting[k]!r:.120} differs from {other} ({was!r:.120}) in the same "
            f"suite, task and backbone; one table compares runs of one setting",
        )
        for k, other, was in _against_first(first, table, path, setting)
    ]


# --------------------------------------------------------------------------- files


def validate_file(path: Path, known: Known | None = None) -> list[Problem]:
    return _validate(path, known)[0]


def _validate(path: Path, known: Known | None) -> tuple[list[Problem], dict[str, Any] | None]:
    try:
        data = read_result(path)
    except ResultError as e:
        return [Problem(path, "file", str(e).split(": ", 1)[-1])], None
    out = check_identity(path, data) + check_schema(path, data)
    if known is not None:
        out += check_known(path, data, known)
    if _get(data, "provenance.git.dirty")[1] is True:
        out.append(
            Problem(
                path,
                "provenance.git.dirty",
                "the code had uncommitted changes when this ran; say in the pull request what they were",
                warning=True,
            )
        )
    return out, data


def validate_paths(paths: Iterable[Path], known: Known | None = None) -> Report:
    """Check every ``*.json`` under ``paths``; the same cell twice is reported on the later file."""
    paths = [Path(p) for p in paths]
    problems = [Problem(p, "path", "no such file or folder") for p in paths if not p.exists()]
    seen: dict[tuple[str, ...], Path] = {}
    settings: dict[tuple[str, ...], tuple[Path, dict[str, Any]]] = {}
    n = 0
    for f in iter_result_files(paths):
        n += 1
        found, data = _validate(f, known)
        problems.extend(found)
        if data is None:
            continue
        key = tuple(str(data.get(k)) for k in CELL_KEY)
        if key in seen:
            problems.append(Problem(f, "cell", f"duplicate: {seen[key]} holds the same cell ({'/'.join(key)})"))
        else:
            seen[key] = f
        problems.extend(check_same_setting(f, data, settings))
    if n == 0 and all(p.exists() for p in paths):
        problems.append(Problem(Path(", ".join(map(str, paths))), "path", "no result files (*.json) found"))
    return Report(problems, n)
