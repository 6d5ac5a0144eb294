"""Aggregation of result files with pandas: mean ± std over seeds, Δm in both conventions
against the suite's own single-task baseline runs (the method whose class declares the role
``baseline``, ``stl`` here), conflict rate and cost. Reads result files only.

Δm (design notes §5). With M_k the method's value of metric k, B_k the single-task value and
s_k = 1 when higher is better, each metric contributes the term (-1)^{s_k} (M_k - B_k) / B_k:
- flat (CAGrad, Nash-MTL, FAMO, ST): Δm = 100 * mean of the terms over all metrics;
- per-task (Recon, LibMTL): the terms are averaged within each task first, then over tasks.
Lower is better in both. B_k is the mean over seeds of the suite's baseline runs (without
mitigation) on the same task and backbone; each seed of a method gets its own Δm against that B, and the table reports the
mean ± sample std of those per-seed values (the mean equals Δm of the seed-mean metrics).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from mtlbench.core.cell import RESULT_SCHEMA
from mtlbench.core.errors import ResultError
from mtlbench.core.files import MIGRATABLE, SchemaMismatch, iter_result_files, read_result
from mtlbench.core.parallel import fork_map, shared
from mtlbench.core.registry import version_key
from mtlbench.core.result import IDENTITY_FIELDS, ROLE_COLUMNS, MetricDecl, OkResult, Result, parse_result

GROUP = ["suite", "task", "backbone"]
ROW = ["method", "mitigation"]
CONVENTIONS = ("flat", "task")


def delta_m_rows(values: np.ndarray, base: np.ndarray, info: Mapping[str, MetricDecl]) -> dict[str, np.ndarray]:
    """Δm in percent of each row of ``values`` (runs × metrics, in ``info``'s order) against
    ``base`` (one value per metric), in both conventions. A NaN value, or a baseline of 0 (no
    relative change is defined), gives NaN."""
    sign = np.array([-1.0 if m.higher_is_better else 1.0 for m in info.values()])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = sign * (values - base) / np.where(base == 0, np.nan, base)
    tasks = [m.task for m in info.values()]
    per_task = [terms[:, [i for i, t in enumerate(tasks) if t == task]].mean(axis=1) for task in dict.fromkeys(tasks)]
    return {"flat": 100.0 * terms.mean(axis=1), "task": 100.0 * np.mean(per_task, axis=0)}


def delta_m(
    values: Mapping[str, float], base: Mapping[str, float], info: Mapping[str, MetricDecl], convention: str = "flat"
) -> float:
    """Δm in percent (lower is better) of ``values`` against ``base``; see the module docstring.
    NaN when a baseline value is 0 (e.g. an F1 of 0): the relative change is undefined."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown Δm convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    info = {k: m for k, m in info.items() if k in values}
    missing = [k for k in info if k not in base]
    if missing:
        raise KeyError(f"baseline lacks metrics {missing}")
    if not info:
        return math.nan
    rows = delta_m_rows(np.array([[values[k] for k in info]], dtype=float), np.array([base[k] for k in info], dtype=float), info)
    return float(rows[convention][0])


@dataclass
class Loaded:
    runs: pd.DataFrame
    metric_info: dict[tuple[str, str], dict[str, MetricDecl]]  # (task, task_version) -> metrics
    failed: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def load_results(
    dirs: Iterable[Path],
    visit: Callable[[Path, Result], Any] | None = None,
    cache: Path | None = None,
    revisit: Callable[[Path, Any], None] | None = None,
    workers: int = 1,
) -> Loaded:
    """Read every result file under ``dirs`` into one row per ok run (plus a table of failures).
    Each file is read as the typed result (mtlbench.core.result); one that does not hold is
    skipped and reported. ``visit(path, result)``, when given, extracts what the caller keeps of
    each result that is kept, ok or failed (one read per file); ``revisit(path, value)`` then
    receives that value, for every kept file in order.

    ``cache`` (a file): what an earlier call extracted from each readable file, keyed by the
    file's path, size and modification time (and this code): an unchanged file is not read
    again, its stored ``visit`` value goes to ``revisit``. ``workers`` > 1 reads the files that
    are not in the cache in that many forked processes (``visit`` must then be free of side
    effects: it runs in the children)."""
    rows, failed, problems = [], [], []
    infos: dict[tuple[str, str], dict[str, MetricDecl]] = {}
    seen: dict[tuple, str] = {}
    other_schemas: dict[str, list[Path]] = {}
    version = _parse_cache_version(visit) if cache is not None else ""
    stored = _read_parse_cache(cache, version)
    kept: dict[str, Any] = {}
    files: list[tuple[Path, tuple[int, int]]] = []
    dirs = [Path(d) for d in dirs]
    for path in iter_result_files(dirs):
        try:
            stat = path.stat()
        except OSError as e:
            problems.append(f"{path}: cannot be read ({e.strerror}); skipped")
            continue
        files.append((path, (stat.st_mtime_ns, stat.st_size)))
    todo = [(path, stamp) for path, stamp in files if (stored.get(str(path)) or (None,))[0] != stamp]
    found = fork_map(lambda item: _extract(*item, visit), todo, workers, MIN_PARALLEL)
    extracted = dict(zip((p for p, _ in todo), found))
    for path, _ in files:
        entry = extracted.get(path) or stored[str(path)]
        if entry[0] == "schema":
            other_schemas.setdefault(entry[1], []).append(path)
            continue
        if entry[0] == "problem":
            problems.append(entry[1])
            continue
        if revisit is not None:
            revisit(path, entry[5])
        kept[str(path)] = entry
        _, key, config_hash, task_key, (kind, row, info), _ = entry
        if key in seen:
            if seen[key] != config_hash:
                problems.append(f"{path}: another result for the same cell with a different config hash was read first; skipped")
            continue
        seen[key] = config_hash
        if kind == "ok":
            infos.setdefault(task_key, info)
            rows.append(row)
        else:
            failed.append(row)
    if todo or kept.keys() != stored.keys():  # a rebuild with nothing new keeps the cache as it is
        _write_parse_cache(cache, version, kept)
    _refuse_mixed_schemas(other_schemas, dirs)
    runs, failed_runs = (latest_versions(pd.DataFrame(frame), problems) for frame in (rows, failed))
    if not runs.empty:
        versions = runs.groupby(["suite", "task"])["task_version"].nunique()
        mixed = versions[versions > 1]
        if not mixed.empty:
            raise ResultError(
                "results of different task versions would be mixed: "
                + "; ".join(f"{s}/{t}" for s, t in mixed.index)
                + ". Keep one version per result folder (re-run the stale cells)."
            )
    return Loaded(runs, infos, failed_runs, problems)


MIN_PARALLEL = 500  # files to read before extra processes pay for themselves (~0.7 ms a file)


def _extract(path: Path, stamp: tuple[int, int], visit: Callable[[Path, Result], Any] | None) -> tuple:
    """What is kept of one result file: (stamp, identity key, config hash, (task, version),
    ("ok" | "failed", row, metric info), visit's value), or ("schema", its schema) for a file
    of another result schema, or ("problem", message) for one that cannot be used."""
    try:
        result, found = parse_result(read_result(path), lenient=True)
    except SchemaMismatch as e:
        return ("schema", e.schema)
    except ResultError as e:
        return ("problem", str(e))
    if result is None or found:
        return (
            "problem",
            f"{path}: malformed result ({found[0] if found else 'unreadable'}); skipped. "
            "`mtlbench validate` explains every problem",
        )
    key = (result.suite, result.task, result.backbone, result.method, result.mitigation, result.seed)
    base = {k: getattr(result, k) for k in IDENTITY_FIELDS} | result.roles() | {"path": str(path)}
    if isinstance(result, OkResult):
        extract: tuple = ("ok", *_run_row(result, base))
    else:
        extract = ("failed", {**base, "reason": result.reason}, None)
    payload = visit(path, result) if visit is not None else None
    return (stamp, key, result.config_hash, (result.task, result.task_version), extract, payload)


def _parse_cache_version(visit: Callable[..., Any] | None = None) -> str:
    """This code's key for the parse cache: a change to the result schema, to the rows built from
    it or to the caller's ``visit`` (what it keeps of each file) drops the cache."""
    digest = hashlib.sha256(RESULT_SCHEMA.encode())
    modules = [sys.modules[__name__], sys.modules[OkResult.__module__]]
    if visit is not None and getattr(visit, "__module__", None) in sys.modules:
        modules.append(sys.modules[visit.__module__])
    for module in modules:
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


def _read_parse_cache(cache: Path | None, version: str) -> dict[str, Any]:
    if cache is None:
        return {}
    try:
        with open(cache, "rb") as fh:
            saved_version, entries = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError):
        return {}
    return entries if saved_version == version and isinstance(entries, dict) else {}


def _write_parse_cache(cache: Path | None, version: str, entries: dict[str, Any]) -> None:
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump((version, entries), fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, cache)


def _refuse_mixed_schemas(other_schemas: dict[str, list[Path]], dirs: list[Path]) -> None:
    if other_schemas:
        raise ResultError(
            f"results of different schemas would be mixed: this mtlbench reads {RESULT_SCHEMA}, but "
            + "; ".join(
                f"{len(paths)} file(s) have {schema} (e.g. {paths[0]})" for schema, paths in sorted(other_schemas.items())
            )
            + (
                ". Rewrite them in this schema, values unchanged: `mtlbench migrate " + " ".join(str(d) for d in dirs) + "`"
                if any(s in MIGRATABLE for s in other_schemas)
                else ". Re-run those cells with this version (`mtlbench run` treats them as stale) or read them with the "
                "mtlbench version that wrote them."
            )
        )


def latest_versions(runs: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    """Keep, per suite, task, backbone, method and mitigation, only the runs of the newest method
    and mitigation versions: older ones are stale (the code changed since) and never mix with
    newer ones. Each left-out group is reported in ``problems``."""
    if runs.empty:
        return runs
    # (method version, mitigation version), each compared numerically part by part
    version = pd.Series(
        [
            (version_key(m), version_key(g))
            for m, g in zip(runs["method_version"].astype(str), runs["mitigation_version"].astype(str))
        ],
        index=runs.index,
    )
    newest_of_row: dict[tuple, tuple] = {}
    for key, v in zip(runs[GROUP + ROW].itertuples(index=False, name=None), version):
        newest_of_row[key] = max(newest_of_row.get(key, v), v)
    newest = pd.Series([newest_of_row[key] for key in runs[GROUP + ROW].itertuples(index=False, name=None)], index=runs.index)
    stale = runs[version != newest]
    for key, group in stale.groupby(GROUP + ROW + ["method_version", "mitigation_version"], sort=True):
        problems.append(
            f"{'/'.join(map(str, key[:5]))}: {len(group)} result(s) of method version {key[5]}, "
            f"mitigation version {key[6]} left out: newer versions of the same row exist "
            f"(e.g. {group['path'].iloc[0]} is stale; re-run it)"
        )
    return runs[version == newest].reset_index(drop=True)


def _run_row(result: OkResult, base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, MetricDecl]]:
    """One ok result as a table row, and its metric declarations."""
    info = shared(
        ("metrics", result.task, result.task_version),
        {k: m if m.label else m.model_copy(update={"label": k}) for k, m in result.metric_info.items()},
    )
    conflict, cost = result.conflict, result.cost
    row = {**base, "device": result.provenance.device}
    # the machine: step times compare only within one (or as ratios to its reference step)
    row["host"] = f"{getattr(result.provenance, 'hostname', '')}/{getattr(result.provenance, 'device_name', '')}"
    row["p_pct"] = _nan(conflict.p_pct if conflict is not None else None)
    reference = conflict.reference if conflict is not None else None
    row["p_pct_ref"] = _nan(reference.p_pct if reference is not None else None)
    row["mean_cos"] = _nan(conflict.mean_cos if conflict is not None else None)
    for k in ("step_time_ms", "peak_memory_mb", "params", "wall_time_s"):
        row[k] = float(getattr(cost, k))
    row["step_x_ref"] = row["step_time_ms"] / cost.reference_step_ms if cost.reference_step_ms else math.nan
    row["lr"] = float(result.cell.protocol.lr)
    for k, v in result.metrics.test.items():
        row[f"test:{k}"] = float(v)
    for k, v in result.metrics.val.items():
        row[f"val:{k}"] = float(v)
    return row, info


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


MITIGATION_DELTAS = ("dm_flat", "dm_task", "p_pct", "p_pct_ref")
# per-row descriptions carried into the summary table (the same in every seed of a row)
DESCRIPTIVE = [
    "task_version",
    "method_name",
    "method_version",
    "method_kind",
    "mitigation_name",
    "mitigation_version",
    *ROLE_COLUMNS,
]
COST = ("p_pct", "p_pct_ref", "mean_cos", "step_time_ms", "step_x_ref", "peak_memory_mb", "params", "wall_time_s")


def run_delta_m(loaded: Loaded) -> pd.DataFrame:
    """``loaded.runs`` with each run's Δm (``dm_flat``, ``dm_task``) against the mean of the suite's
    baseline runs (role ``baseline``, unmitigated) on the same task and backbone; NaN where there are none.
    The same on the validation metrics (``dm_val_flat``, ``dm_val_task``): what model selection,
    e.g. a learning-rate grid, may look at."""
    runs = loaded.runs.copy()
    for conv in CONVENTIONS:
        runs[f"dm_{conv}"] = runs[f"dm_val_{conv}"] = math.nan
    if runs.empty:
        return runs
    for (_, task, _), group in runs.groupby(GROUP, sort=False):
        info = loaded.metric_info[(task, str(group["task_version"].iloc[0]))]
        is_base = group["is_baseline"] & group["unmitigated"]
        if not is_base.any():
            continue
        for split, prefix in (("test", "dm_"), ("val", "dm_val_")):
            cols = [f"{split}:{k}" for k in info]
            if not all(c in group for c in cols):
                continue
            base = group.loc[is_base, cols].mean().to_numpy(dtype=float)
            for conv, dm in delta_m_rows(group[cols].to_numpy(dtype=float), base, info).items():
                runs.loc[group.index, f"{prefix}{conv}"] = dm
    return runs


def group_delta_m(loaded: Loaded, groups: Mapping[str, Iterable[str]], split: str = "test") -> pd.DataFrame:
    """``loaded.runs`` with each run's flat Δm over a subset of its sub-tasks: for each group name
    ``g`` of ``groups`` (name -> sub-task names), column ``dm_group:g`` is Δm over the metrics of
    those sub-tasks alone, against the same baseline runs as :func:`run_delta_m`. Sub-tasks a task
    lacks are left out of its groups (a group with none of them is NaN)."""
    runs = loaded.runs.copy()
    for g in groups:
        runs[f"dm_group:{g}"] = math.nan
    for (_, task, _), group in runs.groupby(GROUP, sort=False):
        info = loaded.metric_info[(task, str(group["task_version"].iloc[0]))]
        is_base = group["is_baseline"] & group["unmitigated"]
        if not is_base.any():
            continue
        for g, members in groups.items():
            chosen = {k: m for k, m in info.items() if m.task in set(members)}
            cols = [f"{split}:{k}" for k in chosen]
            if not chosen or not all(c in group for c in cols):
                continue
            base = group.loc[is_base, cols].mean().to_numpy(dtype=float)
            runs.loc[group.index, f"dm_group:{g}"] = delta_m_rows(group[cols].to_numpy(dtype=float), base, chosen)["flat"]
    return runs


def summarize(loaded: Loaded, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (suite, task, backbone, method, mitigation): mean ± sample std over seeds (NaN
    values skipped; std NaN below two values) of Δm, the test metrics and cost; the number of seeds.
    ``runs``: :func:`run_delta_m` of ``loaded`` when the caller has it already."""
    runs = run_delta_m(loaded) if runs is None else runs
    if runs.empty:
        return pd.DataFrame()
    keys = GROUP + ROW
    metric_cols: dict[str, None] = {}
    base_seeds = {}
    for (suite, task, backbone), group in runs.groupby(GROUP, sort=True):
        metric_cols.update((f"test:{k}", None) for k in loaded.metric_info[(task, str(group["task_version"].iloc[0]))])
        stl = group[group["is_baseline"] & group["unmitigated"]]
        base_seeds[(suite, task, backbone)] = ",".join(str(s) for s in sorted(stl["seed"]))
    values = [f"dm_{c}" for c in CONVENTIONS] + [f"dm_val_{c}" for c in CONVENTIONS] + list(metric_cols) + list(COST) + ["lr"]
    by_row = runs.groupby(keys, sort=True)
    mean, std = by_row[values].mean(), by_row[values].std(ddof=1)
    table = by_row.head(1).set_index(keys)[DESCRIPTIVE].reindex(mean.index)
    table["task_version"] = table["task_version"].astype(str)
    table["n_seeds"] = by_row["seed"].nunique().astype(int)
    table["seeds"] = by_row["seed"].agg(lambda s: ",".join(str(x) for x in sorted(s)))
    table = table.reset_index()
    table["baseline_seeds"] = [base_seeds[k] for k in table[GROUP].itertuples(index=False, name=None)]
    stats = {}
    for col in values:
        stats[col] = mean[col].to_numpy()
        stats[f"{col}_std" if col.startswith("dm_") else f"{col}:std"] = std[col].to_numpy()
    table = pd.concat([table, pd.DataFrame(stats)], axis=1)
    order = GROUP[:2] + ["task_version", GROUP[2]] + ROW + DESCRIPTIVE[1:] + ["n_seeds", "seeds", "baseline_seeds"]
    table = table[order + list(stats)]
    # "base -> +mitigation" deltas, as the Recon and ST papers tabulate them, against the same
    # method's unmitigated row (unmitigated_labels: the one rule every report uses)
    plain = [
        (*group, method, label)
        for group, rows in table.groupby(GROUP, sort=False)
        for method, label in unmitigated_labels(rows).items()
    ]
    chosen = pd.DataFrame(plain, columns=GROUP + ["method", "mitigation"])
    base = table.merge(chosen, on=GROUP + ["method", "mitigation"])[GROUP + ["method", *MITIGATION_DELTAS]]
    base = base.drop_duplicates(GROUP + ["method"])
    same_method = table[GROUP + ["method"]].merge(base, on=GROUP + ["method"], how="left")
    for col in MITIGATION_DELTAS:
        table[f"{col}_vs_none"] = (table[col] - same_method[col].to_numpy()).where(~table["unmitigated"])
    table["rank"] = table.groupby(GROUP)["dm_flat"].rank(method="min", na_option="bottom").astype(int)
    return table.sort_values(GROUP + ["rank", "method"]).reset_index(drop=True)


def unmitigated_labels(rows: pd.DataFrame) -> dict[str, str]:
    """Method label -> the mitigation label of its unmitigated row, within one group (suite x
    task x backbone): the row labelled by its mitigation's own name when the method has several
    unmitigated labels, else the first label in sorted order. The one rule behind every "vs the
    same method without a mitigation" of the reports (summary deltas, group page, claims)."""
    plain = rows[rows["unmitigated"]][["method", "mitigation", "mitigation_name"]]
    return unmitigated_of(plain.itertuples(index=False, name=None))


def unmitigated_of(rows: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """:func:`unmitigated_labels` of (method label, mitigation label, mitigation name) triples of
    unmitigated runs."""
    out: dict[str, str] = {}
    for method, label, name in sorted(set(rows)):
        if method not in out or (label == name and out[method] != name):
            out[method] = label
    return out
