"""Cells and their identity: torch-free, so result readers (aggregation, the site) can use it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mtlbench.core.spec import BackboneSpec, ConflictSettings, Protocol

RESULT_SCHEMA = "mtlbench.result/3"
# What the config hash is salted with: the schema that last changed what a cell is. Schema 3 only
# changed how a file is written (compact, packed series), so a migrated result keeps its hash and
# still belongs to the same cell; a schema that changes what cells compute changes this too.
HASH_SALT = "mtlbench.result/2"
CELL_FILTER_KEYS = ("suite", "task", "backbone", "method", "mitigation", "seed")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # suite, backbone, method and mitigation labels
# a tuned method's cells, one label per grid point of a suite's `tune` table, and the pattern that
# reads the method and rate back (config makes and refuses them; validate and report.tuning read them)
TUNED_LABEL = "{label}.lr{lr:g}"
TUNED = re.compile(r"^(?P<base>.+)\.lr(?P<lr>\d[\d.e+-]*)$")


@dataclass
class Cell:
    """One run of the grid: task x backbone x method x mitigation x seed, fully resolved.

    The protocol, backbone spec and conflict settings are typed records (their defaults live in
    their classes, core/spec.py); the cell flattens them only for its hash and for JSON
    (:meth:`to_dict`), and accepts the flattened form back (a cell read from a result file)."""

    suite: str
    task: str
    task_version: str
    task_options: dict[str, Any]
    protocol: Protocol
    backbone: str
    backbone_spec: BackboneSpec
    method: str
    method_name: str
    method_version: str
    method_options: dict[str, Any]
    mitigation: str
    mitigation_name: str
    mitigation_version: str
    mitigation_options: dict[str, Any]
    seed: int
    conflict: ConflictSettings

    def __post_init__(self) -> None:
        if isinstance(self.protocol, Mapping):
            self.protocol = Protocol(**self.protocol)
        if isinstance(self.backbone_spec, Mapping):
            self.backbone_spec = BackboneSpec(id=self.backbone, **self.backbone_spec)
        if isinstance(self.conflict, Mapping):
            self.conflict = ConflictSettings.from_dict(self.conflict)

    def to_dict(self) -> dict[str, Any]:
        """The cell as plain data (what result files store and the hash covers)."""
        flat = {k: getattr(self, k) for k in self.__dataclass_fields__}
        flat["protocol"] = self.protocol.to_dict()
        flat["backbone_spec"] = self.backbone_spec.to_dict()
        flat["conflict"] = self.conflict.to_dict()
        return flat

    def identity(self) -> dict[str, Any]:
        """Everything that determines the result (labels and the suite name are cosmetic)."""
        d = self.to_dict()
        for k in ("suite", "method", "mitigation", "backbone"):
            d.pop(k)
        d["schema"] = HASH_SALT
        return d

    @property
    def config_hash(self) -> str:
        return config_hash(self.identity())

    @property
    def relpath(self) -> Path:
        return Path(self.suite) / self.task / self.backbone / f"{self.method}__{self.mitigation}__seed{self.seed}.json"

    def matches(self, filters: dict[str, set[str]]) -> bool:
        return all(str(getattr(self, k)) in values for k, values in filters.items())

    def short(self) -> str:
        return f"{self.suite}/{self.task}/{self.backbone}/{self.method}/{self.mitigation}/seed{self.seed}"


def config_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
