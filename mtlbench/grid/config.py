"""benchmark.toml: parsing, validation and expansion into cells.

Layout::

    default_suite = "default"            # optional; the suite `mtlbench run` runs by default

    [backbones.<id>]                      # shared trunks, referenced by id from suites
    model = "resnet18"                    # any timm model name, or a native one ("segnet", "segnet_mtan")
    stem = "default"                      # or "3x3", "3x3-s2" (ResNets on small images)
    pretrained = false
    kwargs = { ... }                      # passed to timm.create_model

    [suites.<name>]
    description = "..."
    backbones = ["<id>", ...]
    methods = ["ew", { name = "pcgrad", label = "pcgrad", options = { ... } }, ...]
    mitigations = ["none"]
    seeds = [0, 1, 2]
    conflict = { every = 10, histogram = "recon" }
    tune = { lr = [3e-4, 1e-3, 3e-3], methods = ["ew"] }   # optional: a learning-rate grid per method
    exclude = [{ method = "mgda-ub", mitigation = "recon" }]  # optional: pairs not to run

    [suites.<name>.tasks.<task>]          # training budget and task options
    epochs = 3                            # any Protocol field, or an option of the task

    [executor]                            # where cells run (not part of any config hash):
    kind = "local"                        # see mtlbench/grid/executor.py

Every problem is reported as one ConfigError naming the file, the key and the valid choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import tomllib

from mtlbench.backbones.build import STEMS, BackboneSpec, check_backbone, known_model, representation_of, suggest_models
from mtlbench.core.cell import CELL_FILTER_KEYS, LABEL_RE, RESULT_SCHEMA, TUNED, TUNED_LABEL, Cell, config_hash  # noqa: F401
from mtlbench.core.errors import ConfigError, MissingDependencyError, MtlbenchError
from mtlbench.core.spec import ConflictSettings, Protocol, SpecError
from mtlbench.grid.executor import parse_executor
from mtlbench.grid.plugins import Plugins, discover
from mtlbench.grid.suites import Benchmark, Entry, Grid, Suite, SuiteTask, parse_filters  # noqa: F401  (re-exported)
from mtlbench.plugin.method import build_method, method_version

TOP_KEYS = {"default_suite", "backbones", "suites", "executor"}
SUITE_KEYS = {"description", "tasks", "backbones", "methods", "mitigations", "seeds", "conflict", "tune", "exclude"}
TUNE_KEYS = {"lr", "methods"}
BACKBONE_KEYS = {"model", "kwargs", "stem", "pretrained"}
CONFLICT_KEYS = {"every", "histogram", "s"}


def load_benchmark(path: str | Path, add_methods: list[str] | None = None, suites: list[str] | None = None) -> Benchmark:
    """The parsed, checked benchmark file. ``add_methods``: method names appended (with their
    default options) to the ``methods`` of ``suites`` (default: the file's default suite), as if
    the file listed them there: a new method runs under an existing suite's protocol without
    editing the file (``mtlbench run --add-method``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Run from the project folder or pass --config PATH/benchmark.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    plugins = discover(path.parent)
    return _Parser(path, plugins, add_methods or [], suites).parse(raw)


class _Parser:
    def __init__(
        self, path: Path, plugins: Plugins, add_methods: list[str] | None = None, targets: list[str] | None = None
    ) -> None:
        self.path = path
        self.plugins = plugins
        self.add_methods, self.targets = list(add_methods or []), targets

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def parse(self, raw: dict[str, Any]) -> Benchmark:
        _unknown(self, "top level", raw, TOP_KEYS)
        backbones = self.backbones(raw.get("backbones", {}))
        suites_raw = raw.get("suites")
        if not isinstance(suites_raw, dict) or not suites_raw:
            raise self.err("suites", "no suites defined; add at least one [suites.<name>] table")
        default = raw.get("default_suite", "default" if "default" in suites_raw else next(iter(suites_raw)))
        if self.add_methods:
            for name in self.add_methods:
                if name not in self.plugins.methods:
                    raise ConfigError(
                        f"--add-method {name}: unknown method{_hint(name, self.plugins.methods)}; valid: "
                        f"{_names(self.plugins.methods)} (a new method is a file in baselines/ that sets `name`)"
                    )
            for target in self.targets or [default]:
                if not isinstance(suites_raw.get(target), dict) or not isinstance(suites_raw[target].get("methods"), list):
                    continue  # an unknown suite is reported below, a malformed one by suite()
                listed = [m if isinstance(m, str) else m.get("label", m.get("name")) for m in suites_raw[target]["methods"]]
                extra = [m for m in self.add_methods if m not in listed]
                suites_raw = {**suites_raw, target: {**suites_raw[target], "methods": suites_raw[target]["methods"] + extra}}
        suites = {name: self.suite(name, s, backbones) for name, s in suites_raw.items()}
        if default not in suites:
            raise self.err("default_suite", f"{default!r} is not a defined suite; defined: {', '.join(sorted(suites))}")
        executor = parse_executor(raw.get("executor", {}), str(self.path))
        return Benchmark(self.path, self.plugins, default, suites, backbones, executor)

    # -- backbones
    def backbones(self, raw: Any) -> dict[str, BackboneSpec]:
        if not isinstance(raw, dict):
            raise self.err("backbones", "expected a table of [backbones.<id>] entries")
        out = {}
        for bid, spec in raw.items():
            key = f"backbones.{bid}"
            if not LABEL_RE.match(bid):
                raise self.err(key, "backbone ids may hold letters, digits, '_', '.', '+', '-'")
            if not isinstance(spec, dict):
                raise self.err(key, "expected a table with `model` and optional `kwargs`, `stem`, `pretrained`")
            _unknown(self, key, spec, BACKBONE_KEYS)
            model = spec.get("model")
            if not isinstance(model, str) or not model:
                raise self.err(
                    f"{key}.model", 'required: a timm model name such as "resnet18" or a native one ("segnet", "segnet_mtan")'
                )
            if not known_model(model):
                hint = suggest_models(model)
                raise self.err(
                    f"{key}.model",
                    f"unknown model {model!r} (neither native nor timm)"
                    + (f"; close matches: {', '.join(hint)}" if hint else ""),
                )
            kwargs = spec.get("kwargs", {})
            if not isinstance(kwargs, dict):
                raise self.err(f"{key}.kwargs", f"expected a table of keyword arguments, got {type(kwargs).__name__}")
            for bad in ("num_classes", "in_chans"):
                if bad in kwargs:
                    raise self.err(f"{key}.kwargs.{bad}", "is set by mtlbench (features only; channels from the task); remove it")
            stem = spec.get("stem", "default")
            if stem not in STEMS:
                raise self.err(f"{key}.stem", f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
            pretrained = spec.get("pretrained", False)
            if not isinstance(pretrained, bool):
                raise self.err(f"{key}.pretrained", "expected true or false")
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
            out[bid] = BackboneSpec(id=bid, model=model, kwargs=kwargs, stem=stem, pretrained=pretrained)
            try:
                check_backbone(out[bid], representation_of(out[bid]))
            except ConfigError as e:
                raise self.err(key, str(e)) from None
        return out

    # -- suites
    def suite(self, name: str, raw: Any, backbones: dict[str, BackboneSpec]) -> Suite:
        key = f"suites.{name}"
        if not LABEL_RE.match(name):
            raise self.err(key, "suite names may hold letters, digits, '_', '.', '+', '-'")
        if not isinstance(raw, dict):
            raise self.err(key, "expected a table")
        _unknown(self, key, raw, SUITE_KEYS)
        for required in ("tasks", "backbones", "methods", "seeds"):
            if required not in raw:
                raise self.err(f"{key}.{required}", "is required")
        tasks = self.tasks(key, raw["tasks"])
        bb_ids = self.suite_backbones(key, raw["backbones"], backbones, tasks)
        methods = self.entries(f"{key}.methods", raw["methods"], self.plugins.methods, "method")
        unmitigated = self.plugins.mitigations.with_role("unmitigated")
        mitigations = self.entries(
            f"{key}.mitigations", raw.get("mitigations", unmitigated[:1]), self.plugins.mitigations, "mitigation"
        )
        seeds = self.seeds(f"{key}.seeds", raw["seeds"])
        conflict = self.conflict(f"{key}.conflict", raw.get("conflict", {}))
        tune = self.tune(f"{key}.tune", raw.get("tune"), methods)
        exclude = self.exclude(f"{key}.exclude", raw.get("exclude", []), methods, mitigations)
        self.check_options(key, tasks, methods, mitigations, exclude)
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise self.err(f"{key}.description", "expected a string")
        grid = Grid(tasks, {bid: backbones[bid] for bid in bb_ids}, methods, mitigations, seeds, conflict, tune, exclude)
        return Suite(name, description, *self.expand(name, grid))

    def suite_backbones(self, key: str, raw: Any, backbones: dict[str, BackboneSpec], tasks: dict[str, SuiteTask]) -> list[str]:
        bb_ids = self.str_list(f"{key}.backbones", raw)
        for i, bid in enumerate(bb_ids):
            if bid not in backbones:
                raise self.err(
                    f"{key}.backbones[{i}]",
                    f"unknown backbone {bid!r}; defined [backbones.*]: {', '.join(sorted(backbones)) or '(none)'}",
                )
        for task_name, (task_cls, _, _) in tasks.items():
            for i, bid in enumerate(bb_ids):
                try:
                    check_backbone(backbones[bid], task_cls.representation)
                except ConfigError as e:
                    raise self.err(f"{key}.backbones[{i}]", f"task {task_name!r}: {e}") from None
        return bb_ids

    def seeds(self, key: str, seeds: Any) -> list[int]:
        if not isinstance(seeds, list) or not seeds:
            raise self.err(key, "expected a non-empty list of integers, e.g. [0, 1, 2]")
        for i, s in enumerate(seeds):
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise self.err(f"{key}[{i}]", f"expected a non-negative integer, got {s!r}")
        if len(set(seeds)) != len(seeds):
            raise self.err(key, f"duplicate seeds in {seeds}")
        return seeds

    def exclude(self, key: str, raw: Any, methods: list[Entry], mitigations: list[Entry]) -> set[tuple[str, str]]:
        """``exclude = [{ method = label, mitigation = label }, ...]``: pairs of the suite's method
        and mitigation labels that are not run (e.g. a method a mitigation cannot combine with)."""
        if not isinstance(raw, list):
            raise self.err(key, 'expected a list of tables, e.g. [{ method = "mgda-ub", mitigation = "recon" }]')
        m_labels, g_labels = [m[0] for m in methods], [g[0] for g in mitigations]
        out = set()
        for i, item in enumerate(raw):
            ikey = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise self.err(ikey, 'expected a table { method = "...", mitigation = "..." }')
            _unknown(self, ikey, item, {"method", "mitigation"})
            for field_name, labels in (("method", m_labels), ("mitigation", g_labels)):
                if item.get(field_name) not in labels:
                    raise self.err(
                        f"{ikey}.{field_name}",
                        f"{item.get(field_name)!r} is not a {field_name} label of this suite: {', '.join(labels)}",
                    )
            out.add((item["method"], item["mitigation"]))
        return out

    def check_options(
        self,
        key: str,
        tasks: dict,
        methods: list[Entry],
        mitigations: list[Entry],
        exclude: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    ) -> None:
        """Methods and mitigations validate their option values in ``__init__``."""
        for task_name, (task_cls, task_options, _) in tasks.items():
            n_tasks = len(task_cls(**task_options).tasks)
            for i, (_, m_name, m_opts) in enumerate(methods):
                try:
                    build_method(self.plugins.methods, m_name, n_tasks, m_opts)
                except MissingDependencyError:
                    pass  # an optional solver is missing: the file stays usable, the method's cells fail with the pip command
                except (ValueError, TypeError) as e:
                    raise self.err(
                        f"{key}.methods[{i}]", f"method {m_name!r} rejects its options for task {task_name!r}: {e}"
                    ) from None
        for i, (g_label, g_name, g_opts) in enumerate(mitigations):
            try:
                mitigation = self.plugins.mitigations[g_name](**g_opts)
            except (ValueError, TypeError) as e:
                raise self.err(f"{key}.mitigations[{i}]", str(e)) from None
            errors = mitigation.option_errors(self.plugins.methods)
            if errors:
                option, message = next(iter(errors.items()))
                raise self.err(f"{key}.mitigations[{i}].options.{option}", message)
            for j, (m_label, m_name, _) in enumerate(methods):
                method_cls = self.plugins.methods[m_name]
                if (m_label, g_label) in exclude:
                    continue
                problem = None if method_cls.kind == "single_task" else mitigation.method_errors(method_cls)
                if problem:
                    raise self.err(
                        f"{key}.methods[{j}]",
                        f"{problem} (or drop {g_name!r} from this suite's mitigations, or add "
                        f'{{ method = "{m_label}", mitigation = "{g_label}" }} to the suite\'s `exclude` list)',
                    )

    def tune(self, key: str, raw: Any, methods: list[Entry]) -> dict[str, list[float]]:
        """``tune = { lr = [...], methods = [labels] }``: each listed method runs once per
        learning rate, under the label ``<label>.lr<lr>`` (the suite's own lr is not run unless
        listed); the report keeps, per method and mitigation, the rate chosen on validation."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.err(key, 'expected a table { lr = [0.0003, 0.001, 0.003], methods = ["ew", ...] }')
        _unknown(self, key, raw, TUNE_KEYS)
        lrs = raw.get("lr")
        if not isinstance(lrs, list) or len(lrs) < 2 or not all(isinstance(v, (int, float)) and v > 0 for v in lrs):
            raise self.err(f"{key}.lr", f"expected a list of at least two positive learning rates, got {lrs!r}")
        if len({f"{float(v):g}" for v in lrs}) != len(lrs):
            raise self.err(f"{key}.lr", f"learning rates must differ (as printed with %g): {lrs!r}")
        labels = {label: name for label, name, _ in methods}
        chosen = self.str_list(f"{key}.methods", raw.get("methods"))
        for label in chosen:
            if label not in labels:
                raise self.err(f"{key}.methods", f"{label!r} is not a method label of this suite; labels: {', '.join(labels)}")
            if self.plugins.methods[labels[label]].kind == "single_task":
                raise self.err(f"{key}.methods", f"{label!r} is the single-task baseline Δm is measured against: not tunable")
        return {label: [float(v) for v in lrs] for label in chosen}

    def expand(self, suite: str, grid: Grid) -> tuple[list[Cell], list[str]]:
        """The suite's cells (task × backbone × method × mitigation × seed; a tuned method once
        per learning rate), and the combinations left out with the reason (single-task
        baselines with a mitigation)."""
        cells: list[Cell] = []
        skipped: list[str] = []
        methods: list[tuple[str, str, str, dict, float | None]] = []  # (label, listed label, plugin, options, lr)
        for label, name, opts in grid.methods:
            if label in grid.tune:
                methods += [(TUNED_LABEL.format(label=label, lr=lr), label, name, opts, lr) for lr in grid.tune[label]]
            else:
                methods.append((label, label, name, opts, None))
        for task_name, (task_cls, task_options, protocol) in grid.tasks.items():
            for bid, spec in grid.backbones.items():
                for m_label, listed, m_name, m_opts, lr in methods:
                    for g_label, g_name, g_opts in grid.mitigations:
                        if (listed, g_label) in grid.exclude:
                            skipped.append(f"{task_name}/{bid}/{m_label}/{g_label}: excluded by the suite's `exclude` list")
                            continue
                        method_cls, mitigation_cls = self.plugins.methods[m_name], self.plugins.mitigations[g_name]
                        if method_cls.kind == "single_task" and "unmitigated" not in mitigation_cls.roles:
                            skipped.append(
                                f"{task_name}/{bid}/{m_label}/{g_label}: single-task baselines share nothing to mitigate"
                            )
                            continue
                        common: dict[str, Any] = dict(
                            suite=suite, task=task_name, task_version=str(task_cls.version), task_options=task_options,
                            protocol=Protocol(**(protocol if lr is None else {**protocol, "lr": lr})),
                            backbone=bid, backbone_spec=spec,
                            method=m_label, method_name=m_name, method_options=m_opts,
                            method_version=method_version(self.plugins.methods, m_name, m_opts),
                            mitigation=g_label, mitigation_name=g_name, mitigation_version=str(mitigation_cls.version),
                            mitigation_options=g_opts, conflict=grid.conflict,
                        )  # fmt: skip
                        cells.extend(Cell(seed=seed, **common) for seed in grid.seeds)
        return cells, skipped

    def tasks(self, key: str, raw: Any) -> dict[str, SuiteTask]:
        key = f"{key}.tasks"
        if isinstance(raw, list):  # tasks = ["multimnist"]: task defaults
            raw = {self.str_list(key, raw)[i]: {} for i in range(len(raw))}
        if not isinstance(raw, dict) or not raw:
            raise self.err(key, "expected a non-empty table [<suite>.tasks.<task>] (or a list of task names)")
        out = {}
        for tname, overrides in raw.items():
            tkey = f"{key}.{tname}"
            if tname not in self.plugins.tasks:
                raise self.err(tkey, f"unknown task {tname!r}; valid: {_names(self.plugins.tasks)}")
            if not isinstance(overrides, dict):
                raise self.err(tkey, "expected a table of protocol fields and task options")
            task_cls = self.plugins.tasks[tname]
            opts_default = task_cls.option_defaults()
            proto = task_cls.protocol.to_dict()
            options = dict(opts_default)
            for k, v in overrides.items():
                if k in proto:
                    proto[k] = self.typed(f"{tkey}.{k}", v, proto[k])
                elif k in opts_default:
                    options[k] = self.typed(f"{tkey}.{k}", v, opts_default[k])
                else:
                    raise self.err(
                        f"{tkey}.{k}",
                        f"unknown key; protocol fields: {', '.join(Protocol.keys())}; "
                        f"options of task {tname!r}: {', '.join(opts_default) or '(none)'}",
                    )
            self.check_protocol(tkey, proto)
            try:  # tasks validate their options in __init__ (cheap: no data is read)
                task_cls(**options)
            except (ValueError, TypeError, MtlbenchError) as e:
                raise self.err(tkey, str(e)) from None
            out[tname] = SuiteTask(task_cls, options, proto)
        return out

    def check_protocol(self, key: str, p: dict[str, Any]) -> None:
        """The protocol's own rules (:meth:`Protocol.problem`), reported under ``key``."""
        try:
            Protocol(**p)
        except SpecError as e:
            raise self.err(f"{key}.{e.field}", e.message) from None

    def entries(self, key: str, raw: Any, registry: Mapping[str, Any], what: str) -> list[Entry]:
        if not isinstance(raw, list) or not raw:
            raise self.err(key, f'expected a non-empty list of {what} names, e.g. ["{next(iter(registry), "x")}"]')
        out, labels = [], set()
        for i, item in enumerate(raw):
            ikey = f"{key}[{i}]"
            if isinstance(item, str):
                name, label, options = item, item, {}
            elif isinstance(item, dict):
                _unknown(self, ikey, item, {"name", "label", "options"})
                given = item.get("name")
                if not isinstance(given, str):
                    raise self.err(f"{ikey}.name", f"required: a {what} name; valid: {_names(registry)}")
                name = given
                label = item.get("label", name)
                options = item.get("options", {})
                if not isinstance(options, dict):
                    raise self.err(f"{ikey}.options", "expected a table of options")
            else:
                raise self.err(
                    ikey, f"expected a {what} name or a table {{ name = ..., label = ..., options = {{...}} }}, got {item!r}"
                )
            if name not in registry:
                raise self.err(ikey, f"unknown {what} {name!r}{_hint(name, registry)}; valid: {_names(registry)}")
            if not isinstance(label, str) or not LABEL_RE.match(label):
                raise self.err(f"{ikey}.label", "labels may hold letters, digits, '_', '.', '+', '-'")
            if what == "method" and TUNED.match(label):
                raise self.err(
                    f"{ikey}.label" if isinstance(item, dict) else ikey,
                    f"{label!r}: method labels ending in '.lr<rate>' are reserved for the grid points of the "
                    "suite's `tune` table (the report reads the rate from them); list the method in "
                    "`tune.methods` to run it at several rates, or choose another label",
                )
            if label in labels:
                raise self.err(ikey, f"duplicate {what} label {label!r}; give each entry a distinct `label`")
            labels.add(label)
            defaults = registry[name].option_defaults()
            resolved = dict(defaults)
            for k, v in options.items():
                if k not in defaults:
                    raise self.err(
                        f"{ikey}.options.{k}", f"unknown option of {what} {name!r}; valid: {', '.join(defaults) or '(none)'}"
                    )
                resolved[k] = self.typed(f"{ikey}.options.{k}", v, defaults[k])
            out.append(Entry(label, name, resolved))
        return out

    def conflict(self, key: str, raw: Any) -> ConflictSettings:
        if not isinstance(raw, dict):
            raise self.err(key, 'expected a table such as { every = 10, histogram = "recon" }')
        _unknown(self, key, raw, CONFLICT_KEYS)
        out = {**ConflictSettings().to_dict(), **raw}
        values = out.get("s", [])  # S-conflict thresholds (Recon): per-layer counts of pairs with cos < S
        if "s" in raw and (not isinstance(values, list) or not values):
            raise self.err(f"{key}.s", f"expected a non-empty list of thresholds with -1 < S <= 0, got {values!r}")
        try:
            numbers = tuple(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values)
            return ConflictSettings(every=out["every"], histogram=out["histogram"], s=numbers)
        except SpecError as e:
            raise self.err(f"{key}.{e.field}", e.message) from None

    def str_list(self, key: str, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
            raise self.err(key, f"expected a non-empty list of names, got {raw!r}")
        return raw

    def typed(self, key: str, value: Any, default: Any) -> Any:
        """Check ``value`` against the type of its default (None accepts anything)."""
        if default is None:
            return value
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, list)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise self.err(key, f"expected {type(default).__name__} (like the default {default!r}), got {value!r}")
        return value


def _unknown(parser: _Parser, key: str, table: dict, valid: set[str]) -> None:
    for k in table:
        if k not in valid:
            raise parser.err(f"{key}.{k}" if key != "top level" else k, f"unknown key; valid keys: {', '.join(sorted(valid))}")


def _names(registry: Mapping[str, Any]) -> str:
    return ", ".join(sorted(registry)) or "(none found)"


def _hint(name: str, registry: Mapping[str, Any]) -> str:
    """ " (did you mean ...?)" for a near miss; the project's plugin classes that set no ``name``
    (and so are not registered) are named too."""
    import difflib

    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
    out = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    unnamed = getattr(registry, "unnamed", [])
    if unnamed:
        out += "; " + "; ".join(f"{src}: class {cls} sets no `name`, so it is not registered" for cls, src in unnamed)
    return out
