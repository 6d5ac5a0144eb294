"""The protocol table of the paper presets (``leaderboard/published/protocols.toml``): for each
(suite, task) that a published table is reproduced with, what the paper's code or text does in
every field of :data:`FIELDS`, where that is written (``source``), what the preset does
(``ours``) and why the two differ where they do (``differs``). ``check`` repeats the preset's
settings that benchmark.toml must hold (the tests compare them). docs/published-tables.md and
the reproduction page render it (:func:`protocol_markdown`, the page's template)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from mtlbench.core.errors import ConfigError

PROTOCOLS_FILE = "protocols.toml"  # inside the folder of published tables

# field -> its label on the pages, in the order they are shown
FIELDS = {
    "split": "split",
    "validation": "validation hold-out",
    "input": "input",
    "augmentation": "augmentation",
    "epochs": "epochs",
    "optimizer": "optimizer and learning rate",
    "schedule": "schedule",
    "batch": "batch",
    "evaluation": "evaluation batch, pooling and batch norm",
    "selection": "model selection",
    "delta_m": "Δm baseline and convention",
}
ENTRY_KEYS = {"paper", "source", "ours", "differs"}
PRESET_KEYS = {"suite", "task", "paper", "reference", "check", "fields"}


@dataclass(frozen=True)
class ProtocolEntry:
    paper: str
    source: str
    ours: str
    differs: str = ""


@dataclass
class PresetProtocol:
    suite: str
    task: str
    paper: str
    reference: str
    check: dict[str, Any]
    fields: dict[str, ProtocolEntry] = field(default_factory=dict)

    @property
    def n_differences(self) -> int:
        return sum(1 for e in self.fields.values() if e.differs)


def load_protocols(path: Path) -> list[PresetProtocol]:
    """Every preset of ``path``, checked: each has every field of :data:`FIELDS`, each field a
    non-empty ``paper``, ``source`` and ``ours``; one entry per (suite, task)."""
    path = Path(path)

    def err(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {message}")

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such protocol table") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if set(raw) - {"preset"}:
        raise err("top level", f"unknown keys {sorted(set(raw) - {'preset'})}; the file holds [[preset]] tables only")
    out: list[PresetProtocol] = []
    for i, p in enumerate(raw.get("preset", [])):
        where = f"preset[{i}]"
        for key in sorted(set(p) - PRESET_KEYS):
            raise err(where, f"unknown key {key!r}; valid: {', '.join(sorted(PRESET_KEYS))}")
        for key in ("suite", "task", "paper", "reference"):
            if not isinstance(p.get(key), str) or not p[key]:
                raise err(f"{where}.{key}", "required: a non-empty string")
        where = f"preset {p['suite']}/{p['task']}"
        if not isinstance(p.get("check"), dict):
            raise err(f"{where}.check", "required: { setting = value, ... } as benchmark.toml gives them")
        fields = p.get("fields")
        if not isinstance(fields, dict):
            raise err(f"{where}.fields", f"required: one entry per field ({', '.join(FIELDS)})")
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise err(f"{where}.fields", f"missing {', '.join(missing)}: every field needs paper, source and ours")
        entries = {}
        for name, entry in fields.items():
            if name not in FIELDS:
                raise err(f"{where}.fields.{name}", f"unknown field; valid: {', '.join(FIELDS)}")
            if not isinstance(entry, dict) or set(entry) - ENTRY_KEYS:
                raise err(f"{where}.fields.{name}", f"a table of {', '.join(sorted(ENTRY_KEYS))}")
            for key in ("paper", "source", "ours"):
                if not isinstance(entry.get(key), str) or not entry[key].strip():
                    raise err(f"{where}.fields.{name}.{key}", "required: a non-empty string")
            entries[name] = ProtocolEntry(entry["paper"], entry["source"], entry["ours"], entry.get("differs", ""))
        if any((q.suite, q.task) == (p["suite"], p["task"]) for q in out):
            raise err(where, "listed twice")
        out.append(PresetProtocol(p["suite"], p["task"], p["paper"], p["reference"], dict(p["check"]), entries))
    return out


def protocols_for(published: Path | None) -> dict[tuple[str, str], PresetProtocol]:
    """The protocol table beside a folder of published tables, keyed by (suite, task); empty
    when the folder has none."""
    if published is None or not (Path(published) / PROTOCOLS_FILE).is_file():
        return {}
    return {(p.suite, p.task): p for p in load_protocols(Path(published) / PROTOCOLS_FILE)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def protocol_markdown(protocols: list[PresetProtocol]) -> str:
    """One Markdown table per preset (field, paper, source, ours), differences marked ≠."""
    parts = []
    for p in protocols:
        lines = [
            f"### `{p.suite}` · {p.task}",
            "",
            f"{p.paper}. Reference: {p.reference}.",
            "",
            "| field | paper | source | ours |",
            "|---|---|---|---|",
        ]
        for name, label in FIELDS.items():
            e = p.fields[name]
            ours = f"≠ {e.ours} ({e.differs})" if e.differs else e.ours
            lines.append(f"| {label} | {_cell(e.paper)} | {_cell(e.source)} | {_cell(ours)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
