"""Plain typed records the pipeline passes around (torch-free): a task's metric declarations
and its training protocol."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


class SpecError(ValueError):
    """A record whose ``field`` breaks one of its rules (``message`` says which and how to fix it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric. ``key`` is unique within a task (e.g. ``"left.acc"``)."""

    key: str
    task: str
    higher_is_better: bool
    label: str = ""


@dataclass(frozen=True)
class Protocol:
    """A training protocol: the defaults a task declares, overridable per suite.

    ``selection`` is ``"best_val"`` (the epoch with the best validation score; its test metrics
    are reported) or ``"last_mean"`` (test metrics averaged over the last ``last_n`` epochs, as
    in Nash-MTL). The test split never selects anything.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | step | cosine | plateau
    # scheduler="step": epochs between decays; "plateau": epochs without a better validation
    # score before the learning rate is multiplied by gamma (down to lr / 100)
    step_size: int = 0
    gamma: float = 0.1
    selection: str = "best_val"  # best_val | last_mean
    last_n: int = 1
    eval_batch_size: int = 512
    max_train_samples: int = 0  # 0 = use the whole training split

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("sgd", "adam", "adamw")
    SCHEDULERS: ClassVar[tuple[str, ...]] = ("none", "step", "cosine", "plateau")
    SELECTIONS: ClassVar[tuple[str, ...]] = ("best_val", "last_mean")

    def __post_init__(self) -> None:
        """A protocol checks itself wherever it is built (benchmark.toml, a task's declaration,
        a result file, a test): the first rule it breaks raises :class:`SpecError`."""
        problem = self.problem()
        if problem is not None:
            raise SpecError(*problem)

    def problem(self) -> tuple[str, str] | None:
        """The first rule this protocol breaks, as (field, message), or None."""
        for name, choices in (("optimizer", self.OPTIMIZERS), ("scheduler", self.SCHEDULERS), ("selection", self.SELECTIONS)):
            if getattr(self, name) not in choices:
                return name, f"unknown value {getattr(self, name)!r}; valid: {', '.join(choices)}"
        for name in ("epochs", "batch_size", "eval_batch_size", "last_n"):
            if getattr(self, name) < 1:
                return name, f"must be >= 1, got {getattr(self, name)}"
        if self.lr <= 0:
            return "lr", f"must be > 0, got {self.lr}"
        if self.selection == "last_mean" and self.last_n > self.epochs:
            return "last_n", f"last_n={self.last_n} exceeds epochs={self.epochs}"
        if self.scheduler == "step" and self.step_size < 1:
            return "step_size", 'scheduler = "step" needs step_size >= 1 (epochs between decays)'
        if self.scheduler == "plateau" and (self.step_size < 1 or not 0 < self.gamma < 1):
            return "step_size", (
                'scheduler = "plateau" needs step_size >= 1 (epochs without a better validation score) and 0 < gamma < 1'
            )
        return None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Cosine histograms of the conflict statistics (bin edges from 1 down to -1): Recon's tables'
# bins, or 0.02-wide bins.
RECON_EDGES = (1.0, 0.0, -0.01, -0.02, -0.03, -1.0)
HISTOGRAMS = {
    "recon": RECON_EDGES,
    "0.02": tuple(round(1.0 - 0.02 * k, 2) for k in range(101)),
}


@dataclass
class BackboneSpec:
    """A ``[backbones.<id>]`` declaration: a timm or native model, its keyword arguments, the
    ResNet stem and whether pretrained weights are loaded."""

    id: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    stem: str = "default"
    pretrained: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The declaration without its id (the cell's label): what the cell's hash covers."""
        return {"model": self.model, "kwargs": dict(self.kwargs), "stem": self.stem, "pretrained": self.pretrained}


@dataclass(frozen=True)
class ConflictSettings:
    """How a run samples gradient-conflict statistics: every ``every`` steps (0: never), cosine
    histogram bins (a key of :data:`HISTOGRAMS`), and Recon's S-conflict thresholds ``s``."""

    every: int = 10
    histogram: str = "recon"
    s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        """Checks itself wherever it is built; the first rule broken raises :class:`SpecError`."""
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 0:
            raise SpecError("every", f"expected an integer >= 0 (0 disables sampling), got {self.every!r}")
        if self.histogram not in HISTOGRAMS:
            raise SpecError("histogram", f"unknown histogram {self.histogram!r}; valid: {', '.join(HISTOGRAMS)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and -1 < v <= 0 for v in self.s):
            raise SpecError("s", f"expected a non-empty list of thresholds with -1 < S <= 0, got {list(self.s)!r}")

    @classmethod
    def from_dict(cls, raw: Any) -> "ConflictSettings":
        return cls(every=int(raw.get("every", cls.every)), histogram=str(raw.get("histogram", cls.histogram)),
                   s=tuple(float(v) for v in raw.get("s", ())))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"every": self.every, "histogram": self.histogram}
        if self.s:
            out["s"] = list(self.s)
        return out
