"""Methods through the real trainer: per-task gradient strategies, representation gradients,
the after-step hook, learned method parameters, a dropped-in stateful method, the CLI listing,
and clear errors for bad options and missing solvers."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from mtlbench.api import StepInfo
from mtlbench.cli import main
from mtlbench.core.errors import ConfigError, MissingDependencyError
from mtlbench.train.gradients import STRATEGIES, task_gradients
from mtlbench.grid.plugins import discover
from tests.conftest import REPO, make_project

ZOO_TOML = """
[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.zoo]
backbones = ["r8"]
methods = ["famo", "gradnorm", "mgda-ub", "nash-mtl", "upgrad", "sdmgrad", "tracked", "samo", "sel-update", "bayes-agg",
           { name = "fixed", label = "fixed-0.2", options = { weights = [0.2, 0.8] } }]
seeds = [0]
conflict = { every = 3 }

[suites.zoo.tasks.multimnist]
epochs = 2
batch_size = 32
optimizer = "adam"
lr = 0.002
max_train_samples = 96
eval_batch_size = 1024
"""

# A method a submitter might write: stateful (a lazily sized buffer), on representation gradients.
TRACKED = '''
import torch
from mtlbench.api import GradientAggregator


class Tracked(GradientAggregator):
    """Sum of moving averages of the representation gradients."""

    name = "tracked"
    description = "moving average of each task's representation gradient, summed"
    citation = "a test method"
    reference = "none"
    gradients = "representation"

    def __init__(self, n_tasks: int, beta: float = 0.5):
        super().__init__(n_tasks)
        self.beta = beta
        self.register_buffer("average", torch.empty(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def aggregate(self, grads, losses, info):
        if self.average.shape != grads.shape:  # the batch's representation size
            self.average = torch.zeros_like(grads)
        self.average = self.beta * self.average + (1 - self.beta) * grads
        self.steps += 1
        return self.average.sum(0)
'''


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    config = make_project(root / "proj", ZOO_TOML)
    (config.parent / "baselines" / "tracked.py").write_text(TRACKED)
    results = root / "results"
    code = main(["run", "--config", str(config), "--results", str(results), "--no-progress"])
    files = {p.name.split("__")[0]: json.loads(p.read_text()) for p in results.rglob("*.json")}
    return code, files


def test_new_methods_train_end_to_end(zoo_run):
    code, files = zoo_run
    assert code == 0
    assert set(files) == {"famo", "gradnorm", "mgda-ub", "nash-mtl", "upgrad", "sdmgrad", "tracked", "samo", "sel-update", "bayes-agg", "fixed-0.2"}
    for label, r in files.items():
        assert r["status"] == "ok", (label, r.get("reason"))
        assert all(0.0 <= v <= 1.0 for v in r["metrics"]["test"].values())
        assert r["cost"]["task_gradients"] == {"strategy": "loop", "chunk_size": 1}  # the CPU rule
        # conflict statistics on parameter gradients, also for representation-gradient methods
        assert r["conflict"]["n_samples"] == 2 and len(r["conflict"]["layers"]["names"]) > 10
    assert files["fixed-0.2"]["cell"]["method_options"] == {"weights": [0.2, 0.8]}
    assert files["nash-mtl"]["cell"]["method_options"] == {"max_norm": 1.0, "update_weights_every": 1}


def test_representation_gradient_step_equals_parameter_step_for_a_linear_method():
    """For a linear aggregation (here: the plain sum) back-propagating the combined
    representation gradient equals combining the parameter gradients."""
    torch.manual_seed(0)
    trunk = timm.create_model("resnet18", num_classes=0, in_chans=1, channels=[8, 8, 16, 16]).double()
    heads = nn.ModuleList([nn.Linear(trunk.num_features, 10).double() for _ in range(3)])
    x, y = torch.randn(8, 1, 36, 36, dtype=torch.float64), torch.randint(0, 10, (8,))
    shared = list(trunk.parameters())

    z = trunk(x)
    rep = z.detach().requires_grad_()
    losses = [nn.functional.cross_entropy(h(rep), y) for h in heads]
    rep_grads, _ = task_gradients(losses, [rep])
    via_rep = torch.autograd.grad(z, shared, grad_outputs=rep_grads.sum(0).view_as(z))

    trunk.zero_grad()
    z = trunk(x)
    param_grads, _ = task_gradients([nn.functional.cross_entropy(h(z), y) for h in heads], shared)
    assert torch.allclose(torch.cat([g.reshape(-1) for g in via_rep]), param_grads.sum(0), atol=1e-10)


def test_gradient_strategies_agree_on_a_real_model():
    torch.manual_seed(0)
    trunk = timm.create_model("resnet18", num_classes=0, in_chans=1, channels=[8, 8, 16, 16])
    heads = nn.ModuleList([nn.Linear(trunk.num_features, 10) for _ in range(5)])
    x, y = torch.randn(8, 1, 36, 36), torch.randint(0, 10, (8,))
    shared, private = list(trunk.parameters()), [list(h.parameters()) for h in heads]
    results = {}
    for strategy in STRATEGIES:
        for chunk in (0, 2):
            torch.manual_seed(1)  # the same batch-norm statistics in every forward pass
            z = trunk(x)
            losses = [nn.functional.cross_entropy(h(z), y) for h in heads]
            results[strategy, chunk] = task_gradients(losses, shared, private, strategy=strategy, chunk_size=chunk)
    ref_matrix, ref_private = results["loop", 0]
    assert ref_matrix.shape == (5, sum(p.numel() for p in shared))
    for key, (matrix, priv) in results.items():
        assert torch.allclose(matrix, ref_matrix, atol=1e-6), key
        for mine, ref in zip(priv, ref_private):
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mine, ref)), key
    with pytest.raises(ValueError, match="strategy"):
        task_gradients(losses, shared, strategy="fastest")


def test_list_methods_shows_every_method(capsys):
    assert main(["list", "methods", "--config", str(REPO / "benchmark.toml")]) == 0
    out = capsys.readouterr().out
    methods = discover(REPO).methods
    assert len(methods) >= 21
    for name, cls in methods.items():
        assert f"{name} " in out and cls.citation in out
    assert "weights=None" in out and "c=0.5" in out and "cite:" in out


def test_bad_method_option_is_one_config_error(tmp_path):
    from mtlbench.grid.config import load_benchmark

    bad = ZOO_TOML.replace("weights = [0.2, 0.8]", "weights = [0.2, 0.3, 0.5]").replace('"tracked",', "")
    config = make_project(tmp_path / "p", bad)
    with pytest.raises(ConfigError, match=r"methods\[9\].*'fixed'.*2 numbers"):
        load_benchmark(config)


def test_missing_qp_solver_names_the_pip_command(monkeypatch):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "quadprog" else real(name))
    with pytest.raises(MissingDependencyError, match=r'pip install "mtlbench\[solvers\]"'):
        discover(REPO).methods["upgrad"](n_tasks=2)


def test_the_documented_example_method_works(tmp_path):
    doc = (REPO / "docs" / "add-a-method.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert 20 <= len(code.strip().splitlines()) <= 40  # "about 30 lines"
    config = make_project(tmp_path / "p", ZOO_TOML.replace('"tracked",', ""))
    (config.parent / "baselines" / "norm_avg.py").write_text(code)
    cls = discover(config.parent).methods["norm-avg"]
    assert cls.option_defaults() == {"beta": 0.9, "eps": 1e-8}
    m = cls(n_tasks=2)
    g = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    d = m.aggregate(g, torch.ones(2), StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1))
    assert d.tolist() == pytest.approx([1.0, 1.0], rel=1e-6)  # each task scaled to unit norm
    restored = cls(n_tasks=2)
    restored.load_state_dict(m.state_dict())
    assert torch.equal(restored.norm_avg, m.norm_avg) and int(restored.steps) == 1


@pytest.mark.gpu
def test_cuda_rule_uses_the_batched_strategy_and_agrees_with_the_loop():
    from mtlbench.train.gradients import default_strategy

    device = torch.device("cuda")
    assert default_strategy(device, 40) == ("batched", 8)
    torch.manual_seed(0)
    trunk = timm.create_model("resnet18", num_classes=0, in_chans=1, channels=[8, 8, 16, 16]).to(device)
    heads = nn.ModuleList([nn.Linear(trunk.num_features, 10) for _ in range(12)]).to(device)
    x, y = torch.randn(16, 1, 36, 36, device=device), torch.randint(0, 10, (16,), device=device)
    shared = list(trunk.parameters())
    out = {}
    for strategy, chunk in (("loop", 1), ("batched", 8)):
        torch.manual_seed(1)
        z = trunk(x)
        out[strategy] = task_gradients([nn.functional.cross_entropy(h(z), y) for h in heads], shared,
                                       strategy=strategy, chunk_size=chunk)[0]
    assert torch.allclose(out["batched"], out["loop"], rtol=1e-4, atol=1e-6)


# re-grouping from the third step, so an interrupted run resumes with groups formed from its affinity map
ENTRIES = {"sel-update": '{ name = "sel-update", options = { warmup_steps = 2 } },'}


@pytest.mark.parametrize("method", ["db-mtl", "famo", "dwa", "modo", "auto-lambda", "samo", "sel-update", "bayes-agg"])
def test_stateful_methods_resume_to_the_uninterrupted_result(method, tmp_path, data_dir):
    """Method state (a lazily sized (T, P) average, FAMO's logits and Adam moments, DWA's loss
    history, MoDo's weights over three batches per step, Auto-Lambda's lambda, its Adam moments and the order of its meta batches, SAMO's random directions, Selective Task Group Updates' affinity map and groups, BayesAgg-MTL's collected representations) lives in the method's state_dict or the checkpoint, so a cell interrupted after epoch 1 and resumed
    from its checkpoint ends exactly as an uninterrupted one."""
    from mtlbench.train.checkpoint import CellCheckpoints
    from mtlbench.grid.config import load_benchmark
    from mtlbench.train.cell import train_cell
    from tests.grid_support import training_record
    from tests.test_resume import Interrupted, StopAfter

    toml = ZOO_TOML.replace('"tracked",', "").replace('"samo",', "").replace('"sel-update",', "").replace('"bayes-agg",', "").replace('"famo",', ENTRIES.get(method, f'"{method}",'), 1).replace("epochs = 2", "epochs = 3")
    config = make_project(tmp_path / "p", toml)
    cell = next(c for c in load_benchmark(config).cells() if c.method == method)
    run = dict(plugins=load_benchmark(config).plugins, data_dir=data_dir, device=torch.device("cpu"), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = train_cell(cell, **run).to_json()
        with pytest.raises(Interrupted):
            train_cell(cell, checkpoints=StopAfter(tmp_path / "r", cell, "joint", 1), **run)
        checkpoints = CellCheckpoints(tmp_path / "r", cell)
        resumed = train_cell(cell, checkpoints=checkpoints, **run).to_json()
    finally:
        torch.set_num_threads(threads)
    assert checkpoints.resumed == {"joint": 1}
    assert training_record(resumed) == training_record(expected)


def test_multi_sample_steps_draw_distinct_batches_and_keep_the_epoch_length():
    """SDMGrad/MoDo draw three batches per step from the cycled training data: an epoch keeps
    its number of steps, each step's batches are distinct, and the batches depend only on the
    generator's state at the epoch's start (what a resumed run restores)."""
    from mtlbench.datasets.splits import Split
    from mtlbench.train.trainer import step_batches

    split = Split(torch.arange(10.0).view(10, 1), {"a": torch.arange(10)})
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    steps = list(step_batches(split, 3, gen, steps=3, samples=3))
    assert len(steps) == 3 and all(len(s) == 3 for s in steps)
    for group in steps:
        rows = [tuple(y["a"].tolist()) for _, y in group]
        assert len(set(rows)) == 3 and all(len(r) == 3 for r in rows)
    # 9 batches from passes of 3 batches each: every pass is a permutation of 9 of the 10 samples
    flat = [v for group in steps for _, y in group for v in y["a"].tolist()]
    for k in range(3):
        assert len(set(flat[9 * k : 9 * k + 9])) == 9
    gen.set_state(state)
    again = list(step_batches(split, 3, gen, steps=3, samples=3))
    assert [[y["a"].tolist() for _, y in g] for g in again] == [[y["a"].tolist() for _, y in g] for g in steps]
    single = list(step_batches(split, 3, torch.Generator().manual_seed(0), steps=3, samples=1))
    assert len(single) == 3 and all(len(s) == 1 for s in single)
