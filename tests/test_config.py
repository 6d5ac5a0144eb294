"""benchmark.toml validation: every bad input gets one clear message naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlbench.grid.config import load_benchmark, parse_filters
from mtlbench.core.errors import ConfigError
from tests.conftest import TINY_TOML, make_project


def load(tmp_path: Path, toml: str):
    return load_benchmark(make_project(tmp_path / "p", toml))


def error(tmp_path: Path, toml: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml)
    return str(info.value)


def test_tiny_config_expands_the_full_grid(tmp_path):
    bench = load(tmp_path, TINY_TOML)
    cells = bench.cells()
    assert len(cells) == 1 * 1 * 4 * 1 * 2  # task x backbone x method x mitigation x seed
    assert {c.method for c in cells} == {"stl", "ew", "mgda", "pcgrad"}
    assert len({c.config_hash for c in cells}) == len(cells)
    assert cells[0].protocol.epochs == 2 and cells[0].protocol.optimizer == "adam"
    assert cells[0].task_options == {"source": "embedded"}


def test_the_repository_config_is_valid():
    bench = load_benchmark(Path(__file__).resolve().parents[1] / "benchmark.toml")
    assert bench.default_suite == "default"
    assert len(bench.cells()) == 2 * 4 * 3


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found.*--config"):
        load_benchmark(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    msg = error(tmp_path, "[suites.x\nmethods = 1")
    assert "benchmark.toml: not valid TOML" in msg and "line 1" in msg


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["stl", "pcgard"]',
         r"suites\.tiny\.methods\[1\]: unknown method 'pcgard' \(did you mean 'pcgrad' or 'upgrad' or 'cagrad'\?\); valid: .*\bpcgrad, "),
        ('mitigations = ["none"]', 'mitigations = ["recn"]',
         r"suites\.tiny\.mitigations\[0\]: unknown mitigation 'recn' \(did you mean 'recon'\?\); valid: none, recon, st"),
        ('mitigations = ["none"]', 'mitigations = [{ name = "recon", options = { s = 0.5 } }]',
         r"suites\.tiny\.mitigations\[0\]: recon: s=0.5 must satisfy -1 < s <= 0"),
        ('mitigations = ["none"]', 'mitigations = [{ name = "recon", options = { search_method = "stl" } }]',
         r"mitigations\[0\]\.options\.search_method: unknown multi-task method 'stl'; valid: .*\bew, .*\bpcgrad"),
        ('mitigations = ["none"]', 'mitigations = [{ name = "st", options = { selection = "top" } }]',
         r"suites\.tiny\.mitigations\[0\]: st: selection='top'; valid: psn, random, reverse, global"),
        ('mitigations = ["none"]', 'mitigations = [{ name = "st", options = { fraction = "30%" } }]',
         r"mitigations\[0\]\.options\.fraction: expected float"),
        ('[suites.tiny.tasks.multimnist]', '[suites.tiny.tasks.imagenet]',
         r"suites\.tiny\.tasks\.imagenet: unknown task 'imagenet'; valid: celeba, .*multimnist"),
        ('backbones = ["r8"]', 'backbones = ["r9"]',
         r"suites\.tiny\.backbones\[0\]: unknown backbone 'r9'; defined \[backbones\.\*\]: r8, vit1"),
        ('model = "resnet18"', 'model = "resnet181"',
         r"backbones\.r8\.model: unknown model 'resnet181' \(neither native nor timm\); close matches: .*resnet18"),
        ("epochs = 2\n", 'epochs = "2"\n',
         r"suites\.tiny\.tasks\.multimnist\.epochs: expected int .* got '2'"),
        ("epochs = 2\n", "epochs = 0\n", r"suites\.tiny\.tasks\.multimnist\.epochs: must be >= 1"),
        ('optimizer = "adam"\nlr = 0.002\nmax_train_samples = 256', 'optimizer = "adamm"\nlr = 0.002\nmax_train_samples = 256',
         r"suites\.tiny\.tasks\.multimnist\.optimizer: unknown value 'adamm'; valid: sgd, adam, adamw"),
        ("epochs = 2\n", "epochs = 2\nepoch = 3\n",
         r"suites\.tiny\.tasks\.multimnist\.epoch: unknown key; protocol fields: epochs, .*options of task 'multimnist': source"),
        ("epochs = 2\n", 'epochs = 2\nsource = "fashion"\n', r"multimnist: option source='fashion'; valid: 'embedded', 'mnist'"),
        ('methods = ["stl", "ew", "mgda", "pcgrad"]', "methods = []",
         r"suites\.tiny\.methods: expected a non-empty list of method names"),
        ("seeds = [0, 1]", "seeds = []", r"suites\.tiny\.seeds: expected a non-empty list of integers"),
        ("seeds = [0, 1]", "seeds = [0, 0]", r"suites\.tiny\.seeds: duplicate seeds"),
        ("seeds = [0, 1]", "seeds = [0, -1]", r"suites\.tiny\.seeds\[1\]: expected a non-negative integer"),
        ("seeds = [0, 1]", 'seeds = [0, "1"]', r"suites\.tiny\.seeds\[1\]: expected a non-negative integer, got '1'"),
        ('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["ew", { name = "mgda", options = { norm = "l2" } }]',
         r"suites\.tiny\.methods\[1\]\.options\.norm: unknown option of method 'mgda'; valid: normalization"),
        ('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = [{ name = "mgda", options = { normalization = "l3" } }]',
         r"suites\.tiny\.methods\[0\]: method 'mgda' rejects its options .*normalization='l3'; valid: none, l2, loss, loss\+"),
        ('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["ew", "ew"]',
         r"suites\.tiny\.methods\[1\]: duplicate method label 'ew'; give each entry a distinct `label`"),
        ('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["ew", { name = "ew", label = "ew.lr0.01" }]',
         r"suites\.tiny\.methods\[1\]\.label: 'ew\.lr0\.01': method labels ending in '\.lr<rate>' are reserved .*tune"),
        ("conflict = { every = 2 }", "conflict = { every = -1 }", r"suites\.tiny\.conflict\.every: expected an integer >= 0"),
        ("conflict = { every = 2 }", "conflict = { every = 2, s = [0.1] }", r"suites\.tiny\.conflict\.s: expected a non-empty list of thresholds with -1 < S <= 0"),
        ("conflict = { every = 2 }", 'conflict = { every = 2, histogram = "fine" }',
         r"suites\.tiny\.conflict\.histogram: unknown histogram 'fine'; valid: recon, 0\.02"),
        ("conflict = { every = 2 }", "conflict = { every = 2, S = [0.0] }", r"suites\.tiny\.conflict\.S: unknown key; valid keys: every, histogram, s"),
        ("conflict = { every = 2 }", "conflict = { every = 2 }\nseed = 3",
         r"suites\.tiny\.seed: unknown key; valid keys: backbones, conflict, description, exclude, methods, mitigations, seeds, tasks, tune"),
        ('default_suite = "tiny"', 'default_suite = "big"', r"default_suite: 'big' is not a defined suite; defined: tiny, vit"),
        ('model = "resnet18"', 'model = "resnet18"\nstem = "5x5"', r"backbones\.r8\.stem: unknown stem '5x5'; valid: default, 3x3, 3x3-s2"),
        ("kwargs = { channels = [8, 8, 16, 16] }", "kwargs = { channels = [8, 8, 16, 16], in_chans = 3 }",
         r"backbones\.r8\.kwargs\.in_chans: is set by mtlbench"),
    ],
)
def test_bad_input_gets_a_clear_message(tmp_path, old, new, expected):
    assert old in TINY_TOML
    msg = error(tmp_path, TINY_TOML.replace(old, new, 1))
    assert "benchmark.toml" in msg or "multimnist" in msg
    import re

    assert re.search(expected, msg), msg


def test_no_suites(tmp_path):
    assert "suites: no suites defined" in error(tmp_path, 'default_suite = "x"\n')


def test_unknown_top_level_key(tmp_path):
    assert "sutes: unknown key; valid keys: backbones, default_suite, executor, suites" in error(tmp_path, TINY_TOML + "\n[sutes.a]\n")


def test_unknown_suite_on_the_command_line(tmp_path):
    bench = load(tmp_path, TINY_TOML)
    with pytest.raises(ConfigError, match=r"no suite named 'nope'; defined suites: tiny, vit"):
        bench.cells(["nope"])


def test_only_filters(tmp_path):
    bench = load(tmp_path, TINY_TOML)
    cells = bench.cells(filters=parse_filters(["method=ew,mgda", "seed=1"]))
    assert sorted(c.method for c in cells) == ["ew", "mgda"] and {c.seed for c in cells} == {1}
    with pytest.raises(ConfigError, match=r"unknown key 'metod'; valid keys: suite, task, backbone, method, mitigation, seed"):
        parse_filters(["metod=ew"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_filters(["method"])


def test_method_entries_with_labels_and_options(tmp_path):
    toml = TINY_TOML.replace('methods = ["stl", "ew", "mgda", "pcgrad"]',
                             'methods = ["mgda", { name = "mgda", label = "mgda-l2", options = { normalization = "l2" } }]')
    cells = load(tmp_path, toml).cells()
    by_label = {c.method: c for c in cells if c.seed == 0}
    assert by_label["mgda"].method_options == {"normalization": "none"}
    assert by_label["mgda-l2"].method_options == {"normalization": "l2"}
    assert by_label["mgda-l2"].method_name == "mgda"
    assert by_label["mgda"].config_hash != by_label["mgda-l2"].config_hash


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    from mtlbench.cli import main

    path = make_project(tmp_path / "p", TINY_TOML.replace('"pcgrad"]', '"pcgard"]'))
    assert main(["run", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown method 'pcgard'" in err and "Traceback" not in err


def test_a_missing_optional_solver_does_not_break_the_file(tmp_path, monkeypatch):
    """Without the `solvers` extra, every suite still loads; only the cells of the methods that
    need the solver fail, each with the pip command (here: upgrad's QP solver made unimportable)."""
    import builtins

    from mtlbench.core.errors import MissingDependencyError

    real_import = builtins.__import__

    def no_torchjd(name, *args, **kwargs):
        if name.startswith("torchjd"):
            raise ImportError("No module named 'quadprog'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchjd)
    toml = TINY_TOML.replace('methods = ["ew", "pcgrad"]', 'methods = ["ew", "upgrad"]')
    bench = load(tmp_path, toml)
    assert {c.method for c in bench.cells(["vit"])} == {"ew", "upgrad"}
    with pytest.raises(MissingDependencyError, match=r'pip install "mtlbench\[solvers\]"'):
        bench.plugins.methods["upgrad"](n_tasks=2)


def test_an_excluded_pair_is_not_run_and_allows_an_incompatible_combination(tmp_path):
    toml = TINY_TOML.replace(
        'methods = ["stl", "ew", "mgda", "pcgrad"]\nmitigations = ["none"]',
        'methods = ["stl", "ew", "mgda-ub"]\nmitigations = ["none", "recon", "st"]',
    )
    with pytest.raises(ConfigError, match=r'recon cannot run .mgda-ub.*`exclude` list') as e:
        load_benchmark(make_project(tmp_path / "a", toml))
    assert 'method = "mgda-ub", mitigation = "recon"' in str(e.value)
    fixed = toml.replace("conflict = { every = 2 }", 'conflict = { every = 2 }\nexclude = [{ method = "mgda-ub", mitigation = "recon" }]', 1)
    suite = load_benchmark(make_project(tmp_path / "b", fixed)).suites["tiny"]
    pairs = {(c.method, c.mitigation) for c in suite.cells}
    assert ("mgda-ub", "recon") not in pairs and {("mgda-ub", "none"), ("mgda-ub", "st"), ("ew", "recon")} <= pairs
    assert any("mgda-ub/recon: excluded" in s for s in suite.skipped)
    for bad, message in (('[{ method = "pcgrad", mitigation = "recon" }]', "not a method label"),
                         ('[{ method = "ew", mitigation = "st2" }]', "not a mitigation label"),
                         ('["ew"]', "expected a table"), ('{ method = "ew" }', "expected a list")):
        with pytest.raises(ConfigError, match=message):
            load_benchmark(make_project(tmp_path / f"c{len(message)}", fixed.replace(
                '[{ method = "mgda-ub", mitigation = "recon" }]', bad)))


def test_a_project_method_class_without_a_name_is_pointed_out(tmp_path):
    """A method file in baselines/ whose class sets no ``name`` is not registered; running a suite
    that asks for it names the file and the class instead of only 'unknown method'."""
    config = make_project(tmp_path, TINY_TOML.replace('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["stl", "geo"]'))
    (config.parent / "baselines").mkdir(exist_ok=True)
    (config.parent / "baselines" / "geo.py").write_text(
        "import torch\nfrom mtlbench.api import LossWeighting\n\n\nclass GeometricMean(LossWeighting):\n"
        "    def loss(self, losses, info):\n        return torch.log(losses).mean()\n"
    )
    with pytest.raises(ConfigError, match=r"unknown method 'geo'; .*geo\.py: class GeometricMean sets no `name`, so it is not registered"):
        load_benchmark(config)


def test_run_with_filters_that_match_nothing_says_which_and_what_to_do(tmp_path, capsys):
    from mtlbench.cli import main

    config = make_project(tmp_path / "p", TINY_TOML)
    assert main(["run", "--config", str(config), "--only", "method=geo", "--only", "seed=0", "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "--only method=geo: no cell of suite(s) tiny has method 'geo' (they have: ew, mgda, pcgrad, stl)" in out
    assert "add it to the suite's `methods` in benchmark.toml" in out
    assert "seed" not in out.split("\n")[1]  # seed=0 occurs: only the method is named


def test_protocol_and_conflict_settings_check_themselves_wherever_they_are_built():
    """The rules live with the records: a Protocol or ConflictSettings built in code (a task's
    declaration, a test, a result file) is checked as benchmark.toml's are, with the same message."""
    from mtlbench.core.spec import ConflictSettings, Protocol, SpecError

    for kwargs, field_name, message in [
        ({"lr": 0.0}, "lr", "must be > 0, got 0.0"),
        ({"optimizer": "adagrad"}, "optimizer", "unknown value 'adagrad'; valid: sgd, adam, adamw"),
        ({"selection": "last_mean", "last_n": 5, "epochs": 3}, "last_n", "last_n=5 exceeds epochs=3"),
        ({"scheduler": "plateau", "step_size": 2, "gamma": 1.5}, "step_size", "0 < gamma < 1"),
        ({"batch_size": 0}, "batch_size", "must be >= 1, got 0"),
    ]:
        with pytest.raises(SpecError) as e:
            Protocol(**kwargs)
        assert e.value.field == field_name and message in e.value.message, kwargs
    for kwargs, field_name in [({"every": -1}, "every"), ({"histogram": "fine"}, "histogram"), ({"s": (0.5,)}, "s")]:
        with pytest.raises(SpecError) as e:
            ConflictSettings(**kwargs)
        assert e.value.field == field_name
    assert Protocol(lr=1e-3, scheduler="step", step_size=2).lr == 1e-3 and ConflictSettings(s=(-0.1,)).s == (-0.1,)


def test_add_method_runs_a_new_method_under_a_suite_s_protocol_without_editing_it(tmp_path, capsys):
    """``--add-method`` gives exactly the cells a suite listing the method would have (same
    config hashes), runs only those, and names an unknown method with its close match."""
    from mtlbench.cli import main
    from mtlbench.grid.config import load_benchmark

    config = make_project(tmp_path / "p", TINY_TOML)
    listed = make_project(tmp_path / "q", TINY_TOML.replace('"mgda", "pcgrad"]', '"mgda", "pcgrad", "rlw"]'))
    added = load_benchmark(config, ["rlw"]).cells(None, {"method": {"rlw"}})
    expected = load_benchmark(listed).cells(None, {"method": {"rlw"}})
    assert added and [c.config_hash for c in added] == [c.config_hash for c in expected]
    assert main(["run", "--config", str(config), "--add-method", "rlw", "--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "--add-method: rlw under suite tiny's protocol" in out and "2 cells (2 would run)" in out
    assert all(" rlw " in line for line in out.splitlines() if line.startswith("tiny "))
    with pytest.raises(ConfigError, match=r"--add-method rwl: unknown method \(did you mean 'rlw'\?\)"):
        load_benchmark(config, ["rwl"])
    assert [c.method for c in load_benchmark(config, ["ew"]).cells(None, {"method": {"ew"}})] == ["ew", "ew"]  # listed already
