"""Executor options: the ``[executor]`` table of benchmark.toml, overridable on the command line.

Where cells run does not change what they compute, so none of these options is part of a
cell's config hash; each result records them in its provenance. Torch-free: the config check
reads them without importing the trainer.

Layout::

    [executor]
    kind = "local"            # "local" (default) or "slurm"
    devices = "auto"          # "auto", "cpu", "cuda" or a list such as ["cuda:0", "cuda:1"]
    runs_per_device = 1       # k cells sharing each device (local pool)
    threads = 0               # torch threads per run (0: torch's default in-process, cores / runs in a pool)
    deterministic = true      # deterministic kernels on GPU too (CPU runs are always deterministic)
    checkpoint = true         # checkpoint every epoch so a killed cell resumes mid-training
    lock_stale_s = 600        # a lock from another host without a heartbeat for this long is stale

    [executor.slurm]          # used with kind = "slurm"
    backend = "slurm"         # or "local": the same jobs through submitit's LocalExecutor
    partition = ""
    account = ""
    qos = ""
    constraint = ""
    gpus = 1                  # per job (one cell per job)
    cpus = 4
    mem_gb = 16.0
    time_min = 240
    max_parallel = 16         # at most this many array jobs at a time
    max_requeue = 3           # pre-emptions / time-outs a job may be requeued after
    setup = []                # shell lines run before each job (e.g. "module load cuda")
    additional = {}           # further sbatch options, e.g. { gres = "gpu:a100:1" }
    wait = true               # wait for the jobs and report them; false: submit and return
    folder = ""               # submitit's job folder (default: <results>/.slurm)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from mtlbench.core.errors import ConfigError

KINDS = ("local", "slurm")
BACKENDS = ("slurm", "local")
DEVICE_WORDS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SlurmOptions:
    backend: str = "slurm"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gpus: int = 1
    cpus: int = 4
    mem_gb: float = 16.0
    time_min: int = 240
    max_parallel: int = 16
    max_requeue: int = 3
    setup: tuple[str, ...] = ()
    additional: dict[str, Any] = field(default_factory=dict)
    wait: bool = True
    folder: str = ""


@dataclass(frozen=True)
class ExecutorOptions:
    kind: str = "local"
    devices: tuple[str, ...] = ("auto",)
    runs_per_device: int = 1
    processes_per_run: int = 1  # ranks that train one cell together (mtlbench.train.distributed)
    threads: int = 0
    deterministic: bool = True
    checkpoint: bool = True
    lock_stale_s: float = 600.0
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "slurm"}
        if self.kind == "slurm":
            out["slurm"] = {f.name: getattr(self.slurm, f.name) for f in fields(self.slurm)}
        return out


def parse_executor(raw: Any, where: str) -> ExecutorOptions:
    """Validate an ``[executor]`` table (``where`` names its source in error messages)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: executor: expected a table [executor]")
    values = _typed_table(raw, ExecutorOptions(), "executor", where, nested={"slurm"})
    slurm_raw = raw.get("slurm", {})
    if not isinstance(slurm_raw, dict):
        raise ConfigError(f"{where}: executor.slurm: expected a table [executor.slurm]")
    slurm = SlurmOptions(**_typed_table(slurm_raw, SlurmOptions(), "executor.slurm", where))
    options = ExecutorOptions(**values, slurm=slurm)
    _check(options, where)
    return options


def with_overrides(options: ExecutorOptions, overrides: dict[str, Any], where: str = "command line") -> ExecutorOptions:
    """``options`` with the non-None values of ``overrides`` (keys as in the table; slurm keys
    prefixed ``slurm.``), validated like the file's."""
    top = {k: v for k, v in overrides.items() if v is not None and not k.startswith("slurm.")}
    nested = {k.split(".", 1)[1]: v for k, v in overrides.items() if v is not None and k.startswith("slurm.")}
    if "devices" in top and isinstance(top["devices"], str):
        top["devices"] = [d.strip() for d in top["devices"].split(",") if d.strip()]
    top = _typed_table(top, options, "executor", where, keep_missing=False)
    nested = _typed_table(nested, options.slurm, "executor.slurm", where, keep_missing=False)
    result = replace(options, **top, slurm=replace(options.slurm, **nested))
    _check(result, where)
    return result


def _typed_table(
    raw: dict[str, Any],
    defaults: Any,
    key: str,
    where: str,
    nested: frozenset[str] | set[str] = frozenset(),
    keep_missing: bool = True,
) -> dict[str, Any]:
    valid = {f.name for f in fields(defaults)} - set(nested)
    out = {}
    for k, v in raw.items():
        if k in nested:
            continue
        if k not in valid:
            raise ConfigError(f"{where}: {key}.{k}: unknown key; valid keys: {', '.join(sorted(valid | set(nested)))}")
        out[k] = _typed(f"{key}.{k}", v, getattr(defaults, k), where)
    if keep_missing:
        out = {k: out.get(k, getattr(defaults, k)) for k in valid}
    return out


def _typed(key: str, value: Any, default: Any, where: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: expected {expected}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise bad("a list of strings")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad("a table")
        return dict(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _check(o: ExecutorOptions, where: str) -> None:
    def err(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {message}")

    if o.kind not in KINDS:
        raise err("executor.kind", f"unknown executor {o.kind!r}; valid: {', '.join(KINDS)}")
    if not o.devices:
        raise err("executor.devices", 'expected "auto", "cpu", "cuda" or a list such as ["cuda:0", "cuda:1"]')
    for d in o.devices:
        if d in DEVICE_WORDS and len(o.devices) > 1:
            raise err("executor.devices", f'{d!r} stands alone; list devices as ["cuda:0", "cuda:1"]')
        if d not in DEVICE_WORDS and not _is_indexed_device(d):
            raise err("executor.devices", f"unknown device {d!r}; valid: auto, cpu, cuda, cuda:N")
    for name, value, low in (
        ("runs_per_device", o.runs_per_device, 1),
        ("processes_per_run", o.processes_per_run, 1),
        ("threads", o.threads, 0),
    ):
        if value < low:
            raise err(f"executor.{name}", f"must be >= {low}, got {value}")
    if o.lock_stale_s <= 0:
        raise err("executor.lock_stale_s", f"must be > 0 seconds, got {o.lock_stale_s}")
    s = o.slurm
    if s.backend not in BACKENDS:
        raise err("executor.slurm.backend", f"unknown backend {s.backend!r}; valid: {', '.join(BACKENDS)}")
    for name, low in (("gpus", 0), ("cpus", 1), ("time_min", 1), ("max_parallel", 1), ("max_requeue", 0)):
        if getattr(s, name) < low:
            raise err(f"executor.slurm.{name}", f"must be >= {low}, got {getattr(s, name)}")
    if s.mem_gb <= 0:
        raise err("executor.slurm.mem_gb", f"must be > 0, got {s.mem_gb}")


def _is_indexed_device(name: str) -> bool:
    kind, sep, index = name.partition(":")
    return kind == "cuda" and sep == ":" and index.isdigit()
