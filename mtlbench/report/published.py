"""Published tables (``leaderboard/published/*.toml``) and the reproduction view.

Each file holds one table of one paper as printed: the metrics (mapped to this suite's metric
keys, with the factor between the paper's unit and ours), and one row per method with its values
and its Δm as printed, as strings so the printed precision is kept. The file also says how the
paper averages Δm (``convention``: ``flat`` over all metrics, or ``task``: within each task
first), which sign it prints (``dm_sign``: ``drop`` — lower is better, as this suite — or
``improvement`` — Recon's Δm↑), which row is its single-task baseline, and which suite, task and
backbone of ours reproduces it. A row whose printed Δm does not follow from its printed values
says so (``dm_check = "inconsistent"``, with a ``note``); a row whose Δm cannot be recomputed from
the table (``dm_check = "not_recomputable"``) says why.

:func:`check_table` recomputes every row's Δm from the printed values and compares it with the
printed Δm within the rounding of the printed digits (a first-order bound, see
:func:`dm_tolerance`). :func:`reproduction_table` puts published and our values side by side.
Reads TOML and result summaries only; no torch.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import tomllib

from mtlbench.core.errors import ConfigError
from mtlbench.core.result import MetricDecl
from mtlbench.report.aggregate import CONVENTIONS, delta_m
from mtlbench.report.protocols import PROTOCOLS_FILE

DM_SIGNS = ("drop", "improvement")
DM_CHECKS = ("recompute", "inconsistent", "not_recomputable")
TABLE_KEYS = {
    "paper",
    "url",
    "table",
    "dataset",
    "backbone",
    "convention",
    "dm_sign",
    "baseline",
    "reproduce",
    "notes",
    "cost",
    "metrics",
    "rows",
    "dm_over",
}
METRIC_KEYS = {"key", "of", "task", "higher_is_better", "label", "scale"}
ROW_KEYS = {"method", "ours", "mitigation", "values", "dm", "dm_check", "note"}
REPRODUCE_KEYS = ("task", "suite", "backbone")


@dataclass(frozen=True)
class PublishedMetric:
    """A column of the paper's table: our metric ``key`` (or the mean of our metrics matching the
    pattern ``of``), its task, direction, label, and ``scale`` (printed value = ours x scale)."""

    key: str
    task: str
    higher_is_better: bool
    label: str
    scale: float = 1.0
    of: str | None = None


@dataclass(frozen=True)
class PublishedRow:
    method: str
    values: dict[str, str]  # metric key -> value as printed
    dm: str | None = None
    dm_check: str = "recompute"
    note: str = ""
    ours: str | None = None  # our method label
    mitigation: str = "none"


@dataclass
class PublishedTable:
    id: str
    path: Path
    paper: str
    url: str
    table: str
    dataset: str
    backbone: str
    convention: str
    dm_sign: str
    baseline: str
    metrics: list[PublishedMetric]
    rows: list[PublishedRow]
    reproduce: dict[str, str] = field(default_factory=dict)
    dm_over: list[str] = field(default_factory=list)  # our metric keys / patterns our Δm covers
    notes: str = ""
    cost: str = ""  # what running the preset costs, as measured (shown while it has no runs)

    @property
    def baseline_row(self) -> PublishedRow:
        return next(r for r in self.rows if r.method == self.baseline)

    def info(self) -> dict[str, MetricDecl]:
        return {m.key: MetricDecl(task=m.task, higher_is_better=m.higher_is_better, label=m.label) for m in self.metrics}


# ---------------------------------------------------------------- reading


def load_published(folder: Path) -> list[PublishedTable]:
    """Every ``*.toml`` table under ``folder``, validated; sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder of published tables")
    # the presets' protocol table lives beside the tables
    return [read_table(p) for p in sorted(folder.glob("*.toml")) if p.name != PROTOCOLS_FILE]


def read_table(path: Path) -> PublishedTable:
    def err(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {message}")

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    _unknown(err, "top level", raw, TABLE_KEYS)
    for key in ("paper", "table", "dataset", "backbone", "convention", "dm_sign"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise err(key, "required: a non-empty string")
    if not isinstance(raw.get("baseline"), str):
        raise err("baseline", 'required: the single-task row\'s method name ("" when the table prints none)')
    reproduce = raw.get("reproduce")
    if not isinstance(reproduce, dict) or any(not isinstance(reproduce.get(k), str) or not reproduce[k] for k in REPRODUCE_KEYS):
        raise err(
            "reproduce",
            'required: { task = "...", suite = "...", backbone = "..." }: the preset whose runs the table is compared with',
        )
    _unknown(err, "reproduce", reproduce, set(REPRODUCE_KEYS))
    if raw["convention"] not in CONVENTIONS:
        raise err("convention", f"{raw['convention']!r}; valid: {', '.join(CONVENTIONS)}")
    if raw["dm_sign"] not in DM_SIGNS:
        raise err("dm_sign", f"{raw['dm_sign']!r}; valid: {', '.join(DM_SIGNS)}")
    metrics = _read_metrics(err, raw.get("metrics", []))
    keys = [m.key for m in metrics]
    rows = _read_rows(err, raw.get("rows", []), keys)
    methods = [r.method for r in rows]
    if raw["baseline"] and raw["baseline"] not in methods:
        raise err("baseline", f"{raw['baseline']!r} is not one of the rows ({', '.join(methods)})")
    if not raw["baseline"] and any(r.dm is not None for r in rows):
        raise err("baseline", "rows print Δm, so the table needs its single-task row as baseline")
    if len(set(methods)) != len(methods):
        raise err("rows", "two rows share a method name")
    return PublishedTable(
        id=path.stem,
        path=path,
        paper=raw["paper"],
        url=raw.get("url", ""),
        table=raw["table"],
        dataset=raw["dataset"],
        backbone=raw["backbone"],
        convention=raw["convention"],
        dm_sign=raw["dm_sign"],
        baseline=raw["baseline"],
        metrics=metrics,
        rows=rows,
        reproduce=dict(reproduce),
        dm_over=list(raw.get("dm_over", keys)),
        notes=raw.get("notes", ""),
        cost=raw.get("cost", ""),
    )


def _read_metrics(err: Callable[[str, str], ConfigError], raw: list[dict[str, Any]]) -> list[PublishedMetric]:
    metrics = []
    for i, m in enumerate(raw):
        _unknown(err, f"metrics[{i}]", m, METRIC_KEYS)
        if (
            not isinstance(m.get("key"), str)
            or not isinstance(m.get("task"), str)
            or not isinstance(m.get("higher_is_better"), bool)
        ):
            raise err(f"metrics[{i}]", "needs key (string), task (string) and higher_is_better (true/false)")
        metrics.append(
            PublishedMetric(
                m["key"], m["task"], m["higher_is_better"], m.get("label", m["key"]), float(m.get("scale", 1.0)), m.get("of")
            )
        )
    return metrics


def _read_rows(err: Callable[[str, str], ConfigError], raw: list[dict[str, Any]], keys: list[str]) -> list[PublishedRow]:
    rows = []
    for i, r in enumerate(raw):
        _unknown(err, f"rows[{i}]", r, ROW_KEYS)
        values = r.get("values", [])
        if not isinstance(r.get("method"), str) or not isinstance(values, list) or len(values) not in (0, len(keys)):
            raise err(f"rows[{i}]", f"needs method (string) and values: {len(keys)} strings, one per metric (or none)")
        for v in [*values, *([r["dm"]] if "dm" in r else [])]:
            if not isinstance(v, str) or _decimals(v) is None:
                raise err(f"rows[{i}]", f'value {v!r}: write numbers as printed, in quotes (e.g. "98.37")')
        check = r.get("dm_check", "recompute")
        if check not in DM_CHECKS:
            raise err(f"rows[{i}].dm_check", f"{check!r}; valid: {', '.join(DM_CHECKS)}")
        if check != "recompute" and not r.get("note"):
            raise err(f"rows[{i}].note", f"dm_check = {check!r} needs a note saying why")
        rows.append(
            PublishedRow(
                r["method"], dict(zip(keys, values)), r.get("dm"), check, r.get("note", ""), r.get("ours"),
                r.get("mitigation", "none"),
            )
        )  # fmt: skip
    return rows


def _unknown(err: Any, where: str, table: dict, valid: set[str]) -> None:
    for k in table:
        if k not in valid:
            raise err(where, f"unknown key {k!r}; valid: {', '.join(sorted(valid))}")


def _decimals(text: str) -> int | None:
    try:
        exponent = Decimal(text).as_tuple().exponent
    except InvalidOperation:
        return None
    return -exponent if isinstance(exponent, int) else None


# ---------------------------------------------------------------- Δm of printed rows


def recompute_dm(table: PublishedTable, row: PublishedRow) -> float:
    """Δm of ``row`` against the table's baseline from the printed values, in the paper's
    convention and sign."""
    base = table.baseline_row.values
    value = delta_m(
        {k: float(v) for k, v in row.values.items()}, {k: float(v) for k, v in base.items()}, table.info(), table.convention
    )
    return -value if table.dm_sign == "improvement" else value


def dm_tolerance(table: PublishedTable, row: PublishedRow) -> float:
    """How far a Δm recomputed from rounded printed values may lie from the exact one, plus the
    rounding of the printed Δm: a value printed with d decimals is known to ±0.5·10^-d, and the
    term (M − B)/B moves by at most (h_M + |M/B|·h_B)/B (first order)."""
    base = table.baseline_row.values
    bounds: dict[str, list[float]] = {}
    for m in table.metrics:
        mv, bv = float(row.values[m.key]), float(base[m.key])
        h_m, h_b = _half_unit(row.values[m.key]), _half_unit(base[m.key])
        bounds.setdefault(m.task, []).append((h_m + abs(mv / bv) * h_b) / abs(bv))
    if table.convention == "flat":
        terms = [b for per_task in bounds.values() for b in per_task]
        spread = sum(terms) / len(terms)
    else:
        spread = sum(sum(b) / len(b) for b in bounds.values()) / len(bounds)
    return 100.0 * spread + _half_unit(row.dm or "")


def _half_unit(text: str) -> float:
    """Half a unit in the last printed place of a number printed as ``text`` (read when the
    table is loaded, which rejects a value that is not a plain decimal)."""
    decimals = _decimals(text)
    if decimals is None:
        raise ValueError(f"{text!r} is not a plainly printed decimal number")
    return 0.5 * 10.0**-decimals


@dataclass(frozen=True)
class RowCheck:
    table: str
    method: str
    published: float
    recomputed: float | None
    tolerance: float | None
    dm_check: str
    note: str

    @property
    def consistent(self) -> bool | None:
        if self.recomputed is None or self.tolerance is None:
            return None
        return abs(self.recomputed - self.published) <= self.tolerance


def check_table(table: PublishedTable) -> list[RowCheck]:
    """One check per row that prints a Δm."""
    out = []
    for row in table.rows:
        if row.dm is None:
            continue
        if row.dm_check == "not_recomputable" or not row.values:
            out.append(RowCheck(table.id, row.method, float(row.dm), None, None, row.dm_check, row.note))
            continue
        out.append(
            RowCheck(
                table.id, row.method, float(row.dm), recompute_dm(table, row), dm_tolerance(table, row), row.dm_check, row.note
            )
        )
    return out


# ---------------------------------------------------------------- the reproduction view


def reproduction_table(
    tables: list[PublishedTable], summary: pd.DataFrame, metric_info: Mapping[tuple[str, str], Mapping[str, MetricDecl]]
) -> pd.DataFrame:
    """Published values beside ours, one row per (table, published method, metric), with the
    difference ours − published in the paper's units. Our values are the seed means of the suite,
    task and backbone the table names (``reproduce``); our Δm is computed against our own
    single-task baseline runs (role ``baseline``), over the metrics the paper's Δm covers (``dm_over``; directions from our
    results' ``metric_info``, as :func:`mtlbench.report.aggregate.load_results` reads them), in the
    paper's convention and sign.
    Rows whose method has no counterpart in our results are kept with empty ``ours``."""
    records = []
    for table in tables:
        ours = _our_rows(table, summary)
        base = next((r for r in ours.values() if r.get("is_baseline") and r.get("unmitigated")), None)
        checks = {c.method: c for c in check_table(table)}
        for row in table.rows:
            match = ours.get((row.ours, row.mitigation)) if row.ours else None
            common = {
                "table": table.id,
                "paper": table.paper,
                "table_name": table.table,
                "dataset": table.dataset,
                "method": row.method,
                "ours_method": row.ours or "",
                "ours_mitigation": row.mitigation if row.ours else "",
                "n_seeds": int(match["n_seeds"]) if match is not None else 0,
                "note": row.note,
            }
            for m in table.metrics:
                text = row.values.get(m.key, "")
                published = float(text) if text else math.nan
                value = _our_value(m, match) * m.scale if match is not None else math.nan
                records.append(
                    {**common, "metric": m.label, "published_text": text, "published": published, "ours": value,
                     "difference": value - published}
                )  # fmt: skip
            if row.dm is not None or (table.baseline and row.method == table.baseline):
                published = float(row.dm) if row.dm is not None else 0.0
                value = _our_dm(table, match, base, metric_info)
                check = checks.get(row.method)
                records.append(
                    {
                        **common,
                        "metric": f"Δm % ({table.convention}, {'↑' if table.dm_sign == 'improvement' else '↓'})",
                        "published_text": row.dm if row.dm is not None else "0",
                        "published": published,
                        "ours": value,
                        "difference": value - published,
                        "dm_recomputed": check.recomputed if check is not None and check.recomputed is not None else math.nan,
                        "dm_consistent": check.consistent if check is not None else None,
                        "dm_check": row.dm_check,
                    }
                )
    return pd.DataFrame.from_records(
        records,
        columns=[
            "table",
            "paper",
            "table_name",
            "dataset",
            "method",
            "ours_method",
            "ours_mitigation",
            "n_seeds",
            "note",
            "metric",
            "published_text",
            "published",
            "ours",
            "difference",
            "dm_recomputed",
            "dm_consistent",
            "dm_check",
        ],
    )


def _our_rows(table: PublishedTable, summary: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    if summary.empty:
        return {}
    rows = summary  # runs of the preset the table names, on its task and backbone: never of another suite
    for key in REPRODUCE_KEYS:
        rows = rows[rows[key] == table.reproduce[key]]
    return {(r["method"], r["mitigation"]): r for r in rows.to_dict("records")}


def _our_metric_keys(pattern: str, row: dict[str, Any]) -> list[str]:
    return [
        c[len("test:") :]
        for c in row
        if c.startswith("test:") and not c.endswith(":std") and fnmatch.fnmatchcase(c[len("test:") :], pattern)
    ]


def _our_value(metric: PublishedMetric, row: dict[str, Any]) -> float:
    keys = _our_metric_keys(metric.of or metric.key, row)
    values = [row[f"test:{k}"] for k in keys]
    return sum(values) / len(values) if values else math.nan


def _our_dm(
    table: PublishedTable,
    row: dict[str, Any] | None,
    base: dict[str, Any] | None,
    metric_info: Mapping[tuple[str, str], Mapping[str, MetricDecl]],
) -> float:
    if row is None or base is None:
        return math.nan
    ours = metric_info.get((row["task"], str(row["task_version"])), {})
    info = {k: ours[k] for pattern in table.dm_over for k in _our_metric_keys(pattern, row) if k in ours}
    if not info or any(math.isnan(base.get(f"test:{k}", math.nan)) for k in info):
        return math.nan
    value = delta_m({k: row[f"test:{k}"] for k in info}, {k: base[f"test:{k}"] for k in info}, info, table.convention)
    return -value if table.dm_sign == "improvement" else value
