"""The result file: one typed definition (pydantic), used by the writer (the trainer's record),
by ``mtlbench validate``, by aggregation and by the site. Torch-free.

A result is :class:`OkResult` or :class:`FailedResult` (by ``status``); :func:`parse_result`
picks the model and turns every validation error into a :class:`FieldProblem` naming the
field (a dotted path such as ``metrics.test.left.acc``), the value and what was expected —
the texts of :data:`EXPECTED`. Parts that are free-form by design (``provenance`` beyond its
required fields, ``mitigation_report``, per-epoch records beyond theirs) keep extra keys.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mtlbench.core import packed
from mtlbench.core.cell import RESULT_SCHEMA


def _json_number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PydanticCustomError("number", "is not a number")
    return v


def _iso_time(v: str) -> str:
    try:
        datetime.fromisoformat(v)
    except ValueError:
        raise PydanticCustomError("iso_time", "is not an ISO 8601 time") from None
    return v


Number = Annotated[float, BeforeValidator(_json_number)]  # a JSON number (NaN/Inf allowed: stored as null)
Finite = Annotated[float, BeforeValidator(_json_number), Field(allow_inf_nan=False)]
Int = Annotated[int, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1)]
Pct = Annotated[Finite, Field(ge=0, le=100)]
Cosine = Annotated[Finite, Field(ge=-1, le=1)]
IsoTime = Annotated[str, Strict(), AfterValidator(_iso_time)]


SchemaName = Literal["mtlbench.result/3"]
if get_args(SchemaName) != (RESULT_SCHEMA,):  # one schema name, declared in core/cell.py
    raise RuntimeError(f"the result model reads {get_args(SchemaName)}, cells write {RESULT_SCHEMA}")


# a run's roles as table columns: column -> (the part of the result declaring it, the role)
ROLE_COLUMNS = {"is_baseline": ("method_info", "baseline"), "is_reference": ("method_info", "reference"),
                "is_front": ("method_info", "front"), "unmitigated": ("mitigation_info", "unmitigated")}  # fmt: skip


class Record(BaseModel):
    """A part of a result with a fixed set of keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Open(BaseModel):
    """A part of a result that may carry further keys (kept as they are)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class MetricDecl(Record):
    task: Text
    higher_is_better: Annotated[bool, Strict()]
    label: str = ""


class PluginInfo(Open):
    version: str = ""
    description: str = ""
    citation: str = ""
    reference: str = ""
    roles: list[str] = []


class MitigationClaim(Record):
    """One line a paper claims about its mitigation, as the mitigation declares it (the claims
    page checks it on paired runs): ``measure`` ``dm`` (ΔΔm, lower is better) or ``p_ref`` (Δp%
    on the reference set); ``kinds``: the method kinds it is about (empty: every method);
    ``source``: the paper (empty: the mitigation's citation)."""

    text: Text
    measure: Literal["dm", "p_ref"]
    kinds: tuple[str, ...] = ()
    source: str = ""


class MitigationInfo(PluginInfo):
    claims: list[MitigationClaim] = []
    report_tables: dict[str, str] = {}  # a list of records in the report -> its caption on the run page


class MethodInfo(PluginInfo):
    kind: str = ""
    option_defaults: dict[str, Any] = {}


class TaskInfo(PluginInfo):
    delta_m_convention: Literal["flat", "task"] = "flat"
    main_metrics: dict[str, str] = {}


class Git(Open):
    commit: str | None = None
    dirty: Annotated[bool, Strict()] | None  # None: the project is not a git checkout


class Provenance(Open):
    mtlbench: Text
    python: Text
    torch: Text
    device: Text
    git: Git
    start_time: IsoTime
    end_time: IsoTime
    threads: Int | None = None
    device_name: str = ""


class Metrics(Record):
    val: dict[str, Finite] = {}
    test: dict[str, Finite] = {}


class Selection(Record):
    rule: Literal["best_val", "last_mean"]
    per_model: dict[str, dict[str, Any]] = {}


class Epoch(Open):
    epoch: Int
    train_loss: dict[str, Number] = {}
    val: dict[str, Number] = {}
    test: dict[str, Number] | None = None


class Histogram(Open):
    edges: list[Number] = []
    labels: list[str] = []
    counts: list[Annotated[Int, Field(ge=0)]]


class Layers(Open):
    names: list[str]
    params: list[Annotated[Int, Field(ge=0)]]
    mean_cos: list[Cosine | None]
    p_pct: list[Pct | None]
    s_conflict: dict[str, list[Int]] = {}


class Packed(Record):
    """A columnar array packed into one base64 string (:mod:`mtlbench.core.packed`). Its length
    is checked on every read; the values are decoded and checked only by ``validate`` (strict
    reads), so readers that skip them pay for one string."""

    dtype: Literal["float32", "uint8", "uint16"]
    shape: Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1, max_length=2)]
    base64: Annotated[str, Strict()]

    @model_validator(mode="after")
    def _check(self) -> Packed:
        problem = packed.length_problem(self.dtype, self.shape, self.base64)
        if problem:
            raise PydanticCustomError("packed", "{problem}", {"problem": problem})
        return self

    def values(self) -> list[float]:
        """The values, flat in row order (PackedError when the text is not base64)."""
        return packed.decode(self.dtype, self.shape, self.base64).tolist()


class LayerSeries(Record):
    """Per sampled step and shared layer (shape ``[n_samples, layers]``): the mean cosine over
    task pairs (float32) and the number of pairs that conflict (cos < 0; p% = 100 × count /
    pairs)."""

    mean_cos: Packed
    conflicting_pairs: Packed

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> LayerSeries:
        if self.mean_cos.dtype != "float32":
            raise PydanticCustomError("packed", "mean_cos has dtype {d}, expected float32", {"d": self.mean_cos.dtype})
        if self.conflicting_pairs.dtype == "float32":
            raise PydanticCustomError("packed", "conflicting_pairs has dtype float32, expected uint8 or uint16 (counts)")
        if self.mean_cos.shape != self.conflicting_pairs.shape:
            raise PydanticCustomError(
                "packed",
                "mean_cos has shape {a}, conflicting_pairs {b}: expected one shape [n_samples, layers]",
                {"a": self.mean_cos.shape, "b": self.conflicting_pairs.shape},
            )
        if not (info.context or {}).get("lenient"):  # validate decodes and checks every value
            try:
                bad = [v for v in self.mean_cos.values() if not -1 <= v <= 1 and v == v]
                self.conflicting_pairs.values()
            except packed.PackedError as e:
                raise PydanticCustomError("packed", "{e}", {"e": str(e)}) from None
            if bad:
                raise PydanticCustomError(
                    "packed", "mean_cos holds {n} value(s) outside [-1, 1] (e.g. {v})", {"n": len(bad), "v": f"{bad[0]:.4g}"}
                )
        return self


class ReferenceConflict(Open):
    """Conflict statistics on the reference parameter set (the unmodified model's shared
    trunk), comparable across the mitigations of a cell."""

    set: str
    params: Annotated[Int, Field(ge=0)]
    n_samples: Annotated[Int, Field(ge=0)]
    p_pct: Pct | None = None
    p_pct_ci95: list[Pct] | None = None
    mean_cos: Cosine | None = None
    histogram: Histogram | None = None
    layers: Layers | None = None


class Conflict(Open):
    every: Int = 0
    n_samples: Annotated[Int, Field(ge=0)]
    parameters: str = ""  # which parameters p% is taken on (older results leave it out)
    pairs: list[list[str]] = []
    p_pct: Pct | None = None
    p_pct_ci95: list[Pct] | None = None  # 95% Wilson interval over the pooled pair observations
    mean_cos: Cosine | None = None
    histogram: Histogram | None = None
    series: dict[str, Any] = {}
    layers: Layers | None = None
    layer_series: LayerSeries | None = None
    reference: ReferenceConflict | None = None


class Cost(Open):
    wall_time_s: Annotated[Finite, Field(gt=0)]
    train_steps: Int = 0
    step_time_ms: Annotated[Finite, Field(gt=0)]
    step_time_ms_median: Number | None = None
    conflict_time_s: Number = 0.0
    task_gradients: dict[str, Any] | None = None
    peak_memory_mb: Annotated[Finite, Field(ge=0)]
    peak_memory_kind: str = ""
    params: Annotated[Int, Field(gt=0)]
    params_shared: Int = 0
    # the host's reference step: the reference method (EW) on this cell's model, batch and
    # protocol, timed on the same machine right after the run (null in results from before it)
    reference_step_ms: Annotated[Finite, Field(gt=0)] | None = None
    reference_method: str = ""


class CellProtocol(Open):
    """The training protocol a cell ran with (every field of :class:`mtlbench.core.spec.Protocol`;
    the ones readers use are typed here)."""

    epochs: Int
    batch_size: Int
    optimizer: str
    lr: Annotated[Finite, Field(gt=0)]


class CellRecord(Open):
    """The cell a result belongs to, as :meth:`mtlbench.core.cell.Cell.to_dict` writes it (fields
    in that order, so a result file reads back and writes out unchanged)."""

    suite: Text
    task: Text
    task_version: Text
    task_options: dict[str, Any] = {}
    protocol: CellProtocol
    backbone: Text
    backbone_spec: dict[str, Any]
    method: Text
    method_name: Text
    method_version: Text
    method_options: dict[str, Any] = {}
    mitigation: Text
    mitigation_name: Text
    mitigation_version: Text
    mitigation_options: dict[str, Any] = {}
    seed: Annotated[Int, Field(ge=0)]
    conflict: dict[str, Any] = {}


class ResultBase(Record):
    """What every result file holds, ok or failed.

    Read with ``context={"lenient": True}`` (aggregation, the site), top-level keys this
    definition does not know are ignored; ``validate`` reads strictly and names them."""

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and (info.context or {}).get("lenient"):
            return {k: v for k, v in data.items() if k in cls.model_fields or k == "schema"}
        return data

    schema_: SchemaName = Field("mtlbench.result/3", alias="schema")
    config_hash: Text
    cell: CellRecord
    suite: Text
    task: Text
    task_version: Text
    backbone: Text
    method: Text
    method_name: Text
    method_version: Text
    method_kind: str | None = None
    mitigation: Text
    mitigation_name: Text
    mitigation_version: Text
    seed: Annotated[Int, Field(ge=0)]
    method_info: MethodInfo | None = None
    mitigation_info: MitigationInfo | None = None
    task_info: TaskInfo | None = None
    status: Literal["ok", "failed"]
    reason: str | None = None
    metrics: Metrics = Metrics()
    provenance: Provenance

    def roles(self) -> dict[str, bool]:
        """The run's roles (one flag per :data:`ROLE_COLUMNS` entry), from the plugin declarations it records."""
        out = {}
        for column, (part, role) in ROLE_COLUMNS.items():
            info = getattr(self, part)
            out[column] = info is not None and role in info.roles
        return out

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=False)


class FailedResult(ResultBase):
    status: Literal["failed"]
    reason: str | None = None  # `validate` requires one; readers show "no reason recorded"
    traceback: str = ""


class OkResult(ResultBase):
    status: Literal["ok"]
    tasks: Annotated[list[Text], Field(min_length=1)]
    metric_info: Annotated[dict[str, MetricDecl], Field(min_length=1)]
    metrics: Metrics
    selection: Selection
    curves: dict[str, Annotated[list[Epoch], Field(min_length=1)]]
    conflict: Conflict | None = None
    mitigation_report: dict[str, Any] | None = None
    cost: Cost

    def consistency(self) -> list[FieldProblem]:
        """Agreement between parts of one file (what types alone cannot say)."""
        out = []
        for key, m in self.metric_info.items():
            if m.task not in self.tasks:
                out.append(FieldProblem(f"metric_info.{key}", f"task {m.task!r} is not one of {self.tasks}"))
        for split in ("val", "test"):
            values = getattr(self.metrics, split)
            if not values:
                out.append(FieldProblem(f"metrics.{split}", "{}, expected a non-empty object"))
            elif set(values) != set(self.metric_info):
                out.append(
                    FieldProblem(
                        f"metrics.{split}", f"keys {sorted(values)} differ from metric_info's {sorted(self.metric_info)}"
                    )
                )
        if not self.curves:
            out.append(FieldProblem("curves", "{}, expected per model a non-empty list of epoch records"))
        if self.conflict is None and self.method_kind != "single_task":
            out.append(FieldProblem("conflict", "missing for a multi-task run"))
        if self.conflict is not None:
            out += _conflict_consistency(self.conflict)
        return out


Result = OkResult | FailedResult


def _conflict_consistency(c: Conflict) -> list[FieldProblem]:
    out = []
    if c.layers is not None:
        n = len(c.layers.names)
        for key in ("params", "mean_cos", "p_pct"):
            if len(getattr(c.layers, key)) != n:
                out.append(FieldProblem(f"conflict.layers.{key}", f"expected {n} values, one per layer"))
    if c.layer_series is not None:
        want = [c.n_samples, len(c.layers.names) if c.layers is not None else c.layer_series.mean_cos.shape[-1]]
        if c.layer_series.mean_cos.shape != want:
            out.append(
                FieldProblem(
                    "conflict.layer_series.mean_cos.shape",
                    f"{c.layer_series.mean_cos.shape}, expected [n_samples, layers] = {want}",
                )
            )
    if c.histogram is not None and sum(c.histogram.counts) != c.n_samples * len(c.pairs):
        out.append(
            FieldProblem(
                "conflict.histogram.counts",
                f"{c.histogram.counts!r:.80}, expected counts >= 0 summing to n_samples × pairs = {c.n_samples * len(c.pairs)}",
            )
        )
    return out


# What each field must hold, as the messages say it (dotted paths; * matches one part).
EXPECTED: dict[str, str] = {
    "schema": f"{RESULT_SCHEMA!r}",
    "config_hash": "a non-empty string",
    "cell": "an object (the resolved cell)",
    "seed": "an integer >= 0",
    "status": "'ok' or 'failed'",
    "reason": "a non-empty string (a failed result needs the reason it failed)",
    "tasks": "a non-empty list of sub-task names",
    "metric_info": "a non-empty object",
    "metric_info.*": "{task: one of the sub-tasks, higher_is_better: true/false}",
    "metric_info.*.*": "{task: one of the sub-tasks, higher_is_better: true/false}",
    "metrics.val": "a non-empty object",
    "metrics.test": "a non-empty object",
    "metrics.*.*": "a finite number (an ok result holds no NaN, Inf or null)",
    "selection.rule": "'best_val' or 'last_mean'",
    "curves": "per model a non-empty list of epoch records",
    "curves.*": "per model a non-empty list of epoch records",
    "conflict.n_samples": "an integer >= 0",
    "conflict.p_pct": "a number in [0, 100]",
    "conflict.mean_cos": "a number in [-1, 1]",
    "conflict.layers.params": "integers >= 0, one per layer",
    "conflict.layers.mean_cos": "numbers in [-1, 1], one per layer",
    "conflict.layers.p_pct": "numbers in [0, 100], one per layer",
    "conflict.histogram.counts": "counts >= 0",
    "conflict.layer_series": "{mean_cos, conflicting_pairs}: packed arrays of one shape [n_samples, layers]",
    "conflict.layer_series.*": "a packed array {dtype, shape, base64}",
    "conflict.layer_series.*.dtype": "'float32', 'uint8' or 'uint16'",
    "conflict.layer_series.*.shape": "[n_samples, layers]",
    "conflict.layer_series.*.base64": "base64 of the array's little-endian bytes",
    "cost.wall_time_s": "a number > 0",
    "cost.step_time_ms": "a number > 0",
    "cost.peak_memory_mb": "a number >= 0",
    "cost.params": "an integer > 0",
    "provenance.git.dirty": "true or false (null where the project is not a git checkout)",
    "provenance.start_time": "an ISO 8601 time",
    "provenance.end_time": "an ISO 8601 time",
    "provenance.threads": "an integer",
    "cell.protocol.lr": "a number > 0",
    "cell.protocol.epochs": "an integer >= 1",
    "cell.protocol.batch_size": "an integer >= 1",
    "cell.seed": "an integer >= 0",
}
EXPECTED_BY_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "dict_type": "an object",
    "list_type": "a list",
    "string_too_short": "a non-empty string",
    "missing": "a value",
    "number": "a number",
}
# the fields that say which run a result is, copied from its cell
IDENTITY_FIELDS = ("suite", "task", "task_version", "backbone", "method", "method_name", "method_version", "method_kind",
                   "mitigation", "mitigation_name", "mitigation_version", "seed", "config_hash")  # fmt: skip
for _name in (*IDENTITY_FIELDS[:7], *IDENTITY_FIELDS[8:11], "provenance.mtlbench", "provenance.python",
              "provenance.torch", "provenance.device"):  # fmt: skip
    EXPECTED[_name] = "a non-empty string"


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str
    short: str = ""  # one line for readers that skip the file: "<field> = <value> is not a number"

    def __str__(self) -> str:
        return self.short or f"{self.field}: {self.message}"


def expected_for(names: list[str], error_type: str) -> str:
    """What the field at ``names`` (its path, one part per key: a key may hold dots) must hold."""
    for pattern, text in EXPECTED.items():
        parts = pattern.split(".")
        if len(parts) == len(names) and all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, parts)):
            return text
    return EXPECTED_BY_TYPE.get(error_type, "a valid value")


def _problems(error: ValidationError) -> list[FieldProblem]:
    """One problem per validation error. List positions are not part of the field's name (the
    message says which item): ``conflict.layers.mean_cos: item 3: 2.0, expected ...``."""
    out = []
    for e in error.errors(include_url=False):
        names = [str(p) for p in e["loc"] if not isinstance(p, int)]
        items = [p for p in e["loc"] if isinstance(p, int)]
        field = ".".join(names) or "file"
        expected = expected_for(names, e["type"])
        where = "".join(f"item {i}: " for i in items)
        if e["type"] == "missing":
            out.append(FieldProblem(field, f"{where}missing; expected {expected}"))
        elif e["type"] == "packed":  # the message says what the block holds and what it should
            out.append(FieldProblem(field, f"{e['msg']}; expected {expected}", f"{field}: {e['msg']:.100}"))
        elif e["type"] == "extra_forbidden":
            out.append(FieldProblem(field, "unknown field; remove it (or check its spelling)"))
        else:
            value = e.get("input")
            shown = "NaN" if isinstance(value, float) and math.isnan(value) else f"{value!r:.80}"
            msg = e["msg"] if e["msg"].startswith("is ") else f"is not {expected}"
            out.append(FieldProblem(field, f"{where}{shown}, expected {expected}", f"{field} = {shown:.60} {msg}"))
    return out


def parse_result(data: dict[str, Any], lenient: bool = False) -> tuple[Result | None, list[FieldProblem]]:
    """The typed result of a file's JSON object and every problem found (the model is None when
    the types do not hold; consistency problems come with a model). ``lenient``: ignore
    top-level keys the definition does not know (readers); ``validate`` reads strictly."""
    status = data.get("status")
    model: type[ResultBase] = OkResult if status == "ok" else FailedResult if status == "failed" else ResultBase
    try:
        result = model.model_validate(data, context={"lenient": lenient})
    except ValidationError as e:
        return None, _problems(e)
    if isinstance(result, OkResult):
        return result, result.consistency()
    if not isinstance(result, (OkResult, FailedResult)):
        return None, []  # unreachable: ResultBase rejects an unknown status
    return result, []
