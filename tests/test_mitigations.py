"""Recon and sparse training: S-conflict scores, layer selection, surgery, masks, end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mtlbench.backbones.build import BackboneSpec, build_trunk
from mtlbench.mitigations.recon import Recon, rank_layers, select_layers
from mtlbench.mitigations.sparse import SparseTraining, neuron_mask
from mtlbench.plugin.branching import BranchedModel, branchable_layers
from mtlbench.plugin.mitigation import MitigationContext
from mtlbench.plugin.model import HardSharingModel, module_layers
from mtlbench.train.conflict import ConflictRecorder
from tests.conftest import REPO, TINY_TOML, make_project

# ------------------------------------------------------------------ S-conflict scores and ranking


def test_s_conflict_counts_from_hand_built_layer_gradients():
    # three tasks, three layers of sizes 2, 1, 2; per-layer cosines chosen by construction
    rec = ConflictRecorder(["a", "b", "c"], ["l0", "l1", "l2"], [2, 1, 2], every=1, s_values=[0.0, -0.5])
    g = torch.tensor([
        # l0 (2)      l1 (1)  l2 (2)
        [1.0, 0.0,    1.0,    1.0, 0.0],
        [-1.0, 0.0,   1.0,    0.0, 1.0],    # l0: a,b opposite (cos -1); l2: a,b orthogonal (0)
        [0.6, -0.8,   -1.0,   -1.0, -1.0],  # l0: cos(a,c)=0.6, cos(b,c)=-0.6; l1: c opposite a,b; l2: cos(a,c)=cos(b,c)=-0.707
    ], dtype=torch.float64)
    rec.record(0, g)
    rec.record(1, g)
    s = rec.summary().layers.s_conflict
    # pairs below 0 per step: l0 -> (a,b),(b,c) = 2 ; l1 -> (a,c),(b,c) = 2 ; l2 -> (a,c),(b,c) = 2 (0 is not < 0)
    assert s["0"] == [4, 4, 4]
    # below -0.5: l0 -> -1, -0.6 = 2 ; l1 -> 2 ; l2 -> -0.707 twice = 2
    assert s["-0.5"] == [4, 4, 4]
    rec2 = ConflictRecorder(["a", "b", "c"], ["l0", "l1", "l2"], [2, 1, 2], every=1, s_values=[-0.65])
    rec2.record(0, g)
    assert rec2.summary().layers.s_conflict["-0.65"] == [1, 2, 2]


def test_ranking_and_selection():
    names, sizes, scores = ["stem", "b1", "b2", "b3", "<root>"], [100, 10, 1000, 10, 5], [3, 9, 9, 1, 50]
    ranking = rank_layers(names, sizes, scores, branchable={"stem", "b1", "b2", "b3"})
    assert [r["layer"] for r in ranking] == ["<root>", "b1", "b2", "stem", "b3"]  # ties keep network order
    assert select_layers(ranking, k=2, budget=0.0, shared_params=1125) == ["b1", "b2"]  # <root> is not branchable
    # budget 10% of 1125 = 112.5 params: b1 (10) fits, b2 (1000) does not, stem (100) fits, b3 would exceed
    assert select_layers(ranking, k=0, budget=0.1, shared_params=1125) == ["b1", "stem"]


# ------------------------------------------------------------------ surgery


def tiny_resnet_model(n_tasks: int = 2) -> HardSharingModel:
    torch.manual_seed(0)
    trunk, dim = build_trunk(BackboneSpec("r", "resnet18", {"channels": (8, 8, 16, 16)}), (1, 36, 36))
    return HardSharingModel(trunk, {f"t{i}": nn.Linear(dim, 10) for i in range(n_tasks)})


def tiny_vit_model() -> HardSharingModel:
    torch.manual_seed(0)
    spec = BackboneSpec("v", "vit_tiny_patch16_224", {"img_size": 36, "patch_size": 12, "depth": 2, "embed_dim": 32, "num_heads": 2})
    trunk, dim = build_trunk(spec, (1, 36, 36))
    return HardSharingModel(trunk, {"t0": nn.Linear(dim, 10), "t1": nn.Linear(dim, 10), "t2": nn.Linear(dim, 10)})


@pytest.mark.parametrize("make, layers", [
    (tiny_resnet_model, ["conv1", "layer1.0.bn2", "layer2.0.downsample.1", "layer3.0.conv2", "layer4.1.bn1"]),
    (tiny_resnet_model, ["layer2.0.conv1", "layer3.1.bn2"]),  # the stem and layer1 run once
    (tiny_vit_model, ["patch_embed.proj", "blocks.0.norm1", "blocks.0.attn.qkv", "blocks.1.mlp.fc2", "norm"]),
    (tiny_vit_model, ["blocks.1.mlp.fc2"]),
])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_surgery_keeps_outputs_exactly(make, layers, mode):
    base = make()
    x = torch.randn(6, 1, 36, 36, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(base)
    branched = BranchedModel(base, layers)
    reference.train(mode == "train")
    branched.train(mode == "train")
    with torch.no_grad():
        expected, got = reference(x), branched(x)
    for t in expected:
        torch.testing.assert_close(got[t], expected[t], rtol=1e-5, atol=1e-6)


def test_branched_parameters_are_task_specific():
    base = tiny_resnet_model(3)
    shared_before = sum(p.numel() for p in base.shared_parameters())
    layers = ["conv1", "bn1"]  # the stem (timm zero-initialises each block's last norm: no gradient inside blocks at init)
    sizes = {n: sum(p.numel() for p in ps) for n, ps in base.shared_layers()}
    model = BranchedModel(base, layers)
    names = [n for n, _ in model.shared_layers()]
    assert "conv1" not in names and "bn1" not in names and "layer1.0.bn1" in names
    assert sum(p.numel() for p in model.shared_parameters()) == shared_before - sizes["conv1"] - sizes["bn1"]
    own = {id(p) for p in model.task_parameters("t1")}
    x = torch.randn(4, 1, 36, 36)
    model(x)["t1"].sum().backward()
    branches = [m for m in model.trunk.modules() if m.__class__.__name__ == "TaskBranch"]
    for b in branches:
        for i, c in enumerate(b.copies):
            for p in c.parameters():
                assert (p.grad is not None and p.grad.abs().sum() > 0) == (i == 1)
                assert (id(p) in own) == (i == 1)


def test_container_parameters_are_not_branchable():
    model = tiny_vit_model()
    allowed = branchable_layers(model.trunk)
    assert "blocks.0.attn.qkv" in allowed and "<root>" not in allowed and "" not in allowed
    with pytest.raises(ValueError, match="cannot be branched"):
        BranchedModel(model, ["blocks.0"])


# ------------------------------------------------------------------ sparse training masks


def test_psn_keeps_the_top_k_incoming_weights_of_every_neuron():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -0.2, 1.0]])
    assert neuron_mask(w, 2, "psn").tolist() == [[False, True, True, False], [True, False, False, True]]
    assert neuron_mask(w, 1, "reverse").tolist() == [[True, False, False, False], [False, True, False, False]]
    conv = torch.randn(5, 3, 3, 3)
    mask = neuron_mask(conv, 7, "psn")
    assert mask.shape == conv.shape and mask.flatten(1).sum(1).tolist() == [7] * 5  # per output channel over 3x3x3
    for c in range(5):  # the kept ones are the largest of their channel
        kept, dropped = conv[c].abs()[mask[c]], conv[c].abs()[~mask[c]]
        assert kept.min() >= dropped.max()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(neuron_mask(conv, 4, "random", g1), neuron_mask(conv, 4, "random", g2))


def context(tasks=("t0", "t1")) -> MitigationContext:
    return MitigationContext(tasks=list(tasks), total_steps=10, seed=0, search=lambda *a: None, search_identity={})


@pytest.mark.parametrize("selection, fraction", [("psn", 0.3), ("global", 0.3), ("random", 0.5), ("reverse", 0.3)])
def test_st_trainable_share(selection, fraction):
    model = tiny_resnet_model()
    st = SparseTraining(fraction=fraction, selection=selection)
    st.prepare(model, context())
    report = st.report()
    assert report["neuron_weights_kept_pct"] == pytest.approx(100 * fraction, abs=4.0)
    assert report["trainable_pct"] >= report["neuron_weights_kept_pct"] - 1e-9  # biases and norms train fully
    frozen_all = SparseTraining(fraction=fraction, selection=selection, train_bias_and_norm=False)
    frozen_all.prepare(tiny_resnet_model(), context())
    assert frozen_all.report()["trainable_pct"] < report["trainable_pct"]


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adam", "adamw"])
def test_st_masked_weights_are_bitwise_unchanged(optimizer):
    model = tiny_resnet_model()
    st = SparseTraining(fraction=0.3)
    st.prepare(model, context())
    before = [p.detach().clone() for p in st.params]
    params = list(model.parameters())
    opt = {
        "sgd-momentum-wd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
        "adam": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=0.01),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    }[optimizer]()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(8, 1, 36, 36, generator=gen)
        out = model(x)
        loss = out["t0"].pow(2).mean() + out["t1"].mean()
        opt.zero_grad()
        loss.backward()
        st.before_step()
        opt.step()
        st.after_step(opt)
    moved = 0
    for p, b, m in zip(st.params, before, st.masks):
        assert torch.equal(p.detach()[~m], b[~m])  # bitwise
        moved += int((p.detach()[m] != b[m]).sum())
        for value in opt.state[p].values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert not value[~m].any()
    assert moved > 0  # the trainable part did train


# ------------------------------------------------------------------ end to end


MITIGATION_TOML = TINY_TOML.replace(
    'methods = ["stl", "ew", "mgda", "pcgrad"]\nmitigations = ["none"]\nseeds = [0, 1]',
    'methods = ["stl", "ew", "pcgrad"]\n'
    'mitigations = ["none", { name = "recon", options = { s = -0.02, k = 6, search_steps = 6, search_every = 2 } },'
    ' { name = "st", options = { fraction = 0.4 } }]\nseeds = [0, 1]',
)


def test_recon_and_st_run_end_to_end_with_every_method(tmp_path, capsys):
    from mtlbench.cli import main

    assert MITIGATION_TOML != TINY_TOML
    config = make_project(tmp_path / "p", MITIGATION_TOML)
    results = tmp_path / "r"
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress"]) == 0
    files = {p.name: json.loads(p.read_text()) for p in results.rglob("*.json") if ".cache" not in p.parts}
    assert len(files) == 2 * (1 + 2 * 3)  # stl runs with `none` only
    recon = [r for r in files.values() if r["mitigation"] == "recon"]
    assert len(recon) == 4 and all(r["status"] == "ok" for r in files.values())
    for r in recon:
        rep = r["mitigation_report"]
        assert len(rep["chosen"]) == 6 and rep["search"]["steps"] == 6 and rep["search"]["samples"] == 3
        assert rep["added_params"] == rep["branched_params"] > 0
        assert not set(rep["chosen"]) & set(r["conflict"]["layers"]["names"])  # branched layers are no longer shared
    # the search ran once: one cache entry, identical rankings for both methods and seeds
    cache = list((results / ".cache" / "recon").glob("*.json"))
    assert len(cache) == 1
    assert len({json.dumps(r["mitigation_report"]["ranking"]) for r in recon}) == 1
    assert sum(not r["mitigation_report"]["search"]["cached"] for r in recon) == 1
    st = [r for r in files.values() if r["mitigation"] == "st"]
    assert all(30 < r["mitigation_report"]["trainable_pct"] < 60 for r in st)
    capsys.readouterr()
    site = tmp_path / "site"
    assert main(["leaderboard", "--results", str(results), "--out", str(site)]) == 0
    page = (site / "tiny--multimnist--r8.html").read_text()
    assert "base → + mitigation" in page and "+ recon" in page and "+ st" in page
    import pandas as pd

    summary = pd.read_csv(site / "summary.csv")
    row = summary[(summary["method"] == "pcgrad") & (summary["mitigation"] == "st")].iloc[0]
    base = summary[(summary["method"] == "pcgrad") & (summary["mitigation"] == "none")].iloc[0]
    assert row["dm_flat_vs_none"] == pytest.approx(row["dm_flat"] - base["dm_flat"])


def test_st_and_recon_compose_with_cagrad(tmp_path):
    from mtlbench.cli import main

    toml = MITIGATION_TOML.replace('methods = ["stl", "ew", "pcgrad"]', 'methods = ["cagrad"]').replace(
        'mitigations = ["none", ', "mitigations = [").replace("seeds = [0, 1]", "seeds = [0]", 1)
    config = make_project(tmp_path / "p", toml)
    results = tmp_path / "r"
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress"]) == 0
    files = {p.name: json.loads(p.read_text()) for p in results.rglob("*.json") if ".cache" not in p.parts}
    assert set(files) == {"cagrad__recon__seed0.json", "cagrad__st__seed0.json"}
    assert all(r["status"] == "ok" and r["mitigation_report"] for r in files.values())


def single_stream(branched: BranchedModel, t: int, task: str) -> nn.Module:
    """Task t's own network inside a branched model: its copies of the branched layers, its
    stream's batch-norm statistics, its head."""
    from mtlbench.plugin.branching import PerStream, TaskBranch, _set_submodule

    trunk = copy.deepcopy(branched.trunk)
    for m in trunk.modules():
        m._forward_pre_hooks.clear()  # the split point's stream stacking
    for name, m in list(trunk.named_modules()):
        if isinstance(m, TaskBranch):
            _set_submodule(trunk, name, m.copies[t])
        elif isinstance(m, PerStream):
            bn = copy.deepcopy(m.inner)
            bn.running_mean.copy_(m.running_mean[t])
            bn.running_var.copy_(m.running_var[t])
            bn.num_batches_tracked.copy_(m.num_batches_tracked[t])
            _set_submodule(trunk, name, bn)
    return nn.Sequential(trunk, copy.deepcopy(branched.heads[task]))


@pytest.mark.parametrize("make, layers", [
    (tiny_resnet_model, ["layer1.0.conv1", "layer2.0.bn1", "layer3.1.conv2"]),
    (tiny_vit_model, ["blocks.0.attn.qkv", "blocks.1.mlp.fc1"]),
])
def test_trained_branched_model_in_eval_mode_is_its_tasks_own_networks(make, layers):
    """After training steps, every stream is normalised with its own running statistics in eval
    mode: the branched model's outputs equal those of T independent single-stream networks."""
    model = BranchedModel(make(), layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(5):
        x = torch.randn(8, 1, 36, 36, generator=gen)
        out = model(x)
        loss = sum(nn.functional.cross_entropy(o, torch.randint(10, (8,), generator=gen)) for o in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = torch.randn(6, 1, 36, 36, generator=gen)
    with torch.no_grad():
        got = model(x)
        for t, task in enumerate(got):
            torch.testing.assert_close(got[task], single_stream(model, t, task).eval()(x), rtol=1e-5, atol=1e-6)
    per_stream = [m for m in model.trunk.modules() if m.__class__.__name__ == "PerStream"]
    if per_stream:  # the streams' statistics differ after the first branched layer
        assert any(not torch.allclose(m.running_mean[0], m.running_mean[1]) for m in per_stream)
        assert all(int(n) == 5 for m in per_stream for n in m.num_batches_tracked)  # one update per step each


def test_branched_model_eval_accuracy_tracks_train_mode_accuracy_on_multimnist(data_dir):
    """Real digits: a branched ResNet trained for 150 steps scores in eval mode (running
    statistics per stream) within 3 points of what it scores with each stream's batch
    statistics (an unbranched model shows the same gap this early, ~1 point; measured with
    version 1's blended statistics the eval-mode loss was 25 and 16 points)."""
    from mtlbench.grid.plugins import discover

    torch.manual_seed(0)
    task = discover(REPO).tasks["multimnist"]()
    splits = task.load(data_dir)
    base = tiny_resnet_model()
    base.heads = nn.ModuleDict({t: task.build_head(t, h.in_features) for t, h in zip(task.tasks, base.heads.values())})
    model = BranchedModel(base, ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.bn1", "layer4.0.conv2"])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step, (x, y) in enumerate(splits["train"].batches(64, generator=gen, drop_last=True)):
        out = model(x)
        loss = sum(task.loss(t, out[t], y[t]) for t in task.tasks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 150:
            break

    def accuracy(train_mode: bool) -> dict[str, float]:
        model.train(train_mode)
        ev = task.evaluator(task.tasks)
        with torch.no_grad():
            for x, y in splits["val"].batches(250):
                ev.update(model(x), y)
        return ev.compute()

    batch_stats, running = accuracy(True), accuracy(False)
    assert min(running.values()) > 0.5  # it learned
    for key in running:
        assert abs(running[key] - batch_stats[key]) < 0.03, (key, running, batch_stats)


def test_st_masks_the_update_before_the_method_clips_it():
    """Frozen coordinates never count in a method's gradient clipping: after the step the
    trained coordinates' gradient has exactly the clip norm (version 1 clipped, then masked)."""
    from mtlbench.api import GradientAggregator, Task
    from mtlbench.core.spec import ConflictSettings, Protocol
    from mtlbench.datasets.splits import Split
    from mtlbench.train.trainer import Trainer

    class Big(GradientAggregator):
        def __init__(self, n_tasks: int) -> None:
            super().__init__(n_tasks)
            self.max_norm = 1.0

        def aggregate(self, grads, losses, info):
            return torch.full_like(grads[0], 10.0)

    class Toy(Task):
        tasks = ("t0", "t1")

        def loss(self, task, output, target):
            return nn.functional.cross_entropy(output, target)

    model = tiny_resnet_model()
    st = SparseTraining(fraction=0.3)
    st.prepare(model, context())
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(8, 1, 36, 36, generator=gen), {t: torch.randint(10, (8,), generator=gen) for t in ("t0", "t1")})
    trainer = Trainer(model, Toy(), ["t0", "t1"], Big(2), {"train": split, "val": split}, Protocol(epochs=1, batch_size=8, lr=1e-9),
                      ConflictSettings(every=0), 0, torch.device("cpu"), mitigation=st, progress=False)
    x, y = split.batch(torch.arange(8))
    trainer.train_step([(x, y)], 0)
    shared = model.shared_parameters()
    norm = torch.cat([p.grad.flatten() for p in shared]).norm()
    assert float(norm) == pytest.approx(1.0, rel=1e-5)
    for p, m in zip(st.params, st.masks):
        assert (p.grad[~m] == 0).all()


def test_recon_budget_rule_is_explicit():
    """With a parameter budget, the default takes the longest run of top-ranked layers that fits
    (the paper's top-K); ``greedy`` skips layers that do not fit and continues down the ranking."""
    names, sizes, scores = ["stem", "b1", "b2", "b3"], [100, 10, 1000, 10], [3, 9, 8, 1]
    ranking = rank_layers(names, sizes, scores, branchable=set(names))
    assert select_layers(ranking, k=0, budget=0.1, shared_params=1120, rule="prefix") == ["b1"]
    assert select_layers(ranking, k=0, budget=0.1, shared_params=1120, rule="greedy") == ["b1", "stem"]  # skips b2
    from mtlbench.mitigations.recon import Recon

    assert Recon.option_defaults()["budget_rule"] == "prefix"
    with pytest.raises(ValueError, match="budget_rule='fill'; valid: prefix, greedy"):
        Recon(budget=0.1, budget_rule="fill")


def test_recon_refuses_representation_gradient_methods_when_the_config_is_read(tmp_path):
    from mtlbench.core.errors import ConfigError
    from mtlbench.grid.config import load_benchmark

    toml = TINY_TOML.replace('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["stl", "ew", "mgda-ub"]').replace(
        'mitigations = ["none"]', 'mitigations = ["none", { name = "recon", options = { budget = 0.1 } }]')
    config = make_project(tmp_path / "p", toml)
    with pytest.raises(ConfigError) as e:
        load_benchmark(config)
    message = str(e.value)
    assert message.startswith(f"{config}: suites.tiny.methods[2]: recon cannot run 'mgda-ub'")
    assert "use its parameter-gradient variant" in message and "drop 'recon'" in message


@pytest.mark.parametrize("make, layers, split_at", [
    (tiny_resnet_model, ["layer3.1.bn2", "layer2.0.conv1"], "layer2.0"),
    (tiny_resnet_model, ["bn1"], "bn1"),
    (tiny_vit_model, ["norm", "blocks.1.attn.proj"], "blocks.1"),
])
def test_shared_prefix_runs_once(make, layers, split_at):
    """The layers before the first branched one run once on the batch, not once per stream:
    their batch norms stay plain shared layers; the streams split at the enclosing block."""
    from mtlbench.plugin.branching import PerStream

    model = BranchedModel(make(), layers)
    assert model.split_at == split_at
    seen: dict[str, int] = {}
    for name, m in model.trunk.named_modules():
        if not list(m.children()):
            m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, args[0].shape[0]))
    model.train()
    model(torch.randn(5, 1, 36, 36))
    assert model.prefix_once
    order = [n for n, _ in model.trunk.named_modules()]
    for name, batch in seen.items():
        before = order.index(name) < order.index(split_at)
        per_stream = ".copies." in name or name.endswith(".inner")  # a task copy or a PerStream norm: one stream a call
        assert batch == (5 if before or per_stream else 5 * len(model.heads)), name
    plain_before = [n for n, m in model.trunk.named_modules() if isinstance(m, nn.BatchNorm2d) and order.index(n) < order.index(split_at)]
    assert all(not isinstance(model.trunk.get_submodule(n), PerStream) for n in plain_before)
    assert model.trunk.training  # the check left the modes as they were


def test_a_trunk_with_a_skip_across_the_split_runs_every_stream_from_the_input():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h  # h from before the split point is used after it

    torch.manual_seed(0)
    base = HardSharingModel(Skip(), {"t0": nn.Linear(4, 2), "t1": nn.Linear(4, 2)})
    reference = copy.deepcopy(base)
    model = BranchedModel(base, ["b"])
    x = torch.randn(3, 4)
    out = model(x)
    assert not model.prefix_once
    for t, v in reference(x).items():
        torch.testing.assert_close(out[t], v)


def test_recon_reinitialises_each_copy_as_recon_s_code():
    from mtlbench.plugin.branching import TaskBranch

    base = tiny_resnet_model()
    shared = copy.deepcopy(base.trunk.get_submodule("layer2.0.conv1").weight)
    model = BranchedModel(base, ["layer2.0.conv1", "layer2.0.bn1"], init="reinit", generator=torch.Generator().manual_seed(5))
    conv = model.trunk.get_submodule("layer2.0.conv1")
    assert isinstance(conv, TaskBranch)
    w0, w1 = (c.weight for c in conv.copies)
    assert not torch.equal(w0, w1) and not torch.equal(w0, shared)
    fan_out = w0.shape[0] * w0.shape[2] * w0.shape[3]
    for w in (w0, w1):  # Kaiming normal, fan_out, ReLU gain: std sqrt(2 / fan_out)
        assert float(w.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)
    bn = model.trunk.get_submodule("layer2.0.bn1")
    assert all(torch.equal(c.weight, torch.ones_like(c.weight)) and torch.equal(c.bias, torch.zeros_like(c.bias)) for c in bn.copies)
    default = BranchedModel(tiny_resnet_model(), ["layer2.0.conv1"], init="reinit").trunk.get_submodule("layer2.0.conv1")
    assert not torch.equal(default.copies[0].weight, default.copies[1].weight)  # one generator for all copies
    copied = BranchedModel(tiny_resnet_model(), ["layer2.0.conv1"], init="copy").trunk.get_submodule("layer2.0.conv1")
    assert all(torch.equal(c.weight, shared) for c in copied.copies)
    with pytest.raises(ValueError, match="init='kaiming'; valid: reinit, copy"):
        Recon(init="kaiming")


def test_resnet18_recon_is_recon_s_network_and_its_ranking_branches_1_43_percent():
    """41 layers named as in Recon's S-conflict scores (its MultiFashion+MNIST log, vendored in
    tests/data), no zero-initialised batch norm, and the paper's K = 25 branching 1.43% of it."""
    from mtlbench.backbones.build import build_trunk
    from mtlbench.core.spec import BackboneSpec
    from mtlbench.mitigations.recon import rank_layers, select_layers

    torch.manual_seed(0)
    trunk, dim = build_trunk(BackboneSpec("r", "resnet18_recon"), (1, 36, 36))
    assert dim == 100 and trunk.fc.in_features == 512
    layers = module_layers(trunk)
    assert len(layers) == 41
    assert all(float(m.weight.detach().abs().min()) > 0 for m in trunk.modules() if isinstance(m, nn.BatchNorm2d))
    scores = json.loads((Path(__file__).parent / "data" / "recon_multifashion_sconflict.json").read_text())
    names, sizes = [n for n, _ in layers], [sum(p.numel() for p in ps) for _, ps in layers]
    assert set(scores) == set(names)
    ranking = rank_layers(names, sizes, [scores[n] for n in names], branchable_layers(trunk))
    assert [r["layer"] for r in ranking] == list(scores)  # the log lists layers by score
    chosen = select_layers(ranking, 25, 0.0, sum(sizes))
    share = sum(r["params"] for r in ranking if r["layer"] in chosen) / sum(sizes)
    assert share == pytest.approx(0.01428, abs=5e-5)
    x = torch.randn(2, 1, 36, 36)
    assert (trunk(x) >= 0).all()  # the ReLU before the heads


def _reference_matrix(model, losses, n_tasks):
    from mtlbench.train.conflict import ConflictRecorder
    from mtlbench.train.trainer import reference_conflict

    shared = model.shared_parameters()
    recorder = ConflictRecorder([f"t{i}" for i in range(n_tasks)], ["x"], [1], every=1)
    ref = reference_conflict(model, shared, [f"t{i}" for i in range(n_tasks)], recorder)
    if ref.per_task is None:
        from mtlbench.train.gradients import task_gradients

        return None, task_gradients(losses, shared, retain_graph=True)[0]
    return ref, ref.gradients(losses)


@pytest.mark.parametrize("make, layers", [
    (tiny_resnet_model, ["layer1.0.conv1", "layer2.0.bn1", "layer3.1.conv2"]),
    (tiny_vit_model, ["blocks.0.attn.qkv", "norm"]),
])
def test_reference_set_of_a_branched_model_is_the_unmodified_trunk(make, layers):
    """Before any training (copies equal to the shared layers), each task's gradient on the
    reference set of the branched model equals its gradient on the unmodified model's shared
    trunk: the set, its order and its values are the same, so p% compares across mitigations."""
    base = make()
    reference = copy.deepcopy(base)
    model = BranchedModel(base, layers, init="copy")
    x = torch.randn(4, 1, 36, 36, generator=torch.Generator().manual_seed(2))
    n = len(model.heads)
    with torch.no_grad():
        model.train(), reference.train()
    losses_b = [o.square().mean() for o in model(x).values()]
    losses_r = [o.square().mean() for o in reference(x).values()]
    ref, grads = _reference_matrix(model, losses_b, n)
    assert ref is not None  # a separate gradient computation: the branched layers' copies are per task
    assert [name for name, _ in model.reference_layers(n)] == [name for name, _ in reference.shared_layers()]
    _, expected = _reference_matrix(reference, losses_r, n)
    torch.testing.assert_close(grads, expected, rtol=1e-4, atol=1e-6)


def test_reference_conflict_is_reported_for_every_mitigation(tmp_path):
    """Each run reports p% on the parameters it updates and on the reference set, with the
    number of samples and a 95% interval; without a mitigation the two coincide; under ST the
    reference set is the whole trunk (masked coordinates included)."""
    from mtlbench.cli import main

    toml = TINY_TOML.replace('mitigations = ["none"]', 'mitigations = ["none", { name = "recon", options = { k = 3, search_steps = 2 } }, "st"]')
    assert "recon" in toml
    config = make_project(tmp_path / "p", toml)
    results = tmp_path / "r"
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress", "--only", "method=ew", "--only", "seed=0"]) == 0
    files = {p.name.split("__")[1]: json.loads(p.read_text()) for p in results.rglob("*.json") if ".cache" not in p.parts}
    assert set(files) == {"none", "recon", "st"}
    for name, r in files.items():
        c = r["conflict"]
        ref = c["reference"]
        assert ref["n_samples"] == c["n_samples"] > 0 and "unmodified model" in ref["set"]
        assert 0 <= c["p_pct_ci95"][0] <= c["p_pct"] <= c["p_pct_ci95"][1] <= 100
        assert 0 <= ref["p_pct_ci95"][0] <= ref["p_pct"] <= ref["p_pct_ci95"][1] <= 100
        assert ref["params"] == files["none"]["cost"]["params_shared"]  # the unmodified trunk, whatever the mitigation
        assert c["parameters"].startswith("the shared parameters the method updates")
    assert files["none"]["conflict"]["reference"]["p_pct"] == files["none"]["conflict"]["p_pct"]
    assert files["recon"]["conflict"]["reference"]["layers"]["names"] == files["none"]["conflict"]["layers"]["names"]
    assert sum(files["recon"]["conflict"]["layers"]["params"]) < files["none"]["cost"]["params_shared"]
    # the result records what the mitigation declares; the run page shows its report tables by it
    assert [c["text"] for c in files["recon"]["mitigation_info"]["claims"]] == [c.text for c in Recon.claims]
    assert files["none"]["mitigation_info"]["claims"] == [] and len(files["st"]["mitigation_info"]["claims"]) == 3
    from mtlbench.site.build import build_site
    from mtlbench.site.data import run_page

    build_site([results], tmp_path / "site")
    r = files["recon"]
    page = (tmp_path / "site" / run_page(r["suite"], r["task"], r["backbone"], "ew", "recon", 0)).read_text()
    # the page embeds the result (its script draws the report's tables under these captions: tests/test_browser.py)
    block = page.split('<script type="application/json" id="run-result">')[1].split("</script>")[0]
    assert json.loads(block)["mitigation_info"]["report_tables"]["ranking"].startswith("Layers by S-conflict score over the search phase")


def test_recon_names_the_model_that_offers_no_surgery():
    """A model that declares no surgery parts gets a clear error naming it and the interface,
    before any search runs."""
    from mtlbench.core.errors import ConfigError
    from mtlbench.plugin.model import MultiTaskModel

    class Custom(MultiTaskModel):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)

    def no_search(*args, **kwargs):
        raise AssertionError("the search must not run for a model without surgery parts")

    ctx = MitigationContext(tasks=["a", "b"], total_steps=10, seed=0, search=no_search, search_identity={})
    with pytest.raises(ConfigError, match=r"recon: Custom declares no shared parts to branch .*surgery_parts and branch_layers"):
        Recon(k=1).prepare(Custom(), ctx)


def test_a_mitigation_that_masks_must_declare_it():
    """The trainer records the unmasked reference set when a mitigation declares
    ``masks_gradients``; overriding the mask without the declaration is refused at once."""
    from mtlbench.plugin.mitigation import Mitigation

    with pytest.raises(TypeError, match=r"Halves overrides mask_task_gradients but does not declare masks_gradients = True"):

        class Halves(Mitigation):
            def mask_task_gradients(self, grads):
                return grads / 2

    class Declared(Mitigation):
        masks_gradients = True

        def mask_task_gradients(self, grads):
            return grads / 2

    assert Declared.masks_gradients and SparseTraining.masks_gradients and not Recon.masks_gradients
