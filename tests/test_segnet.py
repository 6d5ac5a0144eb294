"""SegNet and SegNet-MTAN: the deterministic un-pooling/up-sampling, the MultiTaskModel split of
parameters, and the backbone registry shared with timm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlbench.backbones.build import BackboneSpec, build_multitask_model, check_backbone, known_model, suggest_models
from mtlbench.backbones.segnet import SegNet, SegNetMTAN, unpool, upsample2x
from mtlbench.core.errors import ConfigError
from mtlbench.datasets.dense import DenseHead
from tests.conftest import make_project

TINY = (4, 8, 8, 16, 16)
OUT = {"segmentation": 13, "depth": 1, "normal": 3}


def tiny_mtan() -> SegNetMTAN:
    torch.manual_seed(0)
    return SegNetMTAN({t: DenseHead(TINY[0], c, unit_norm=t == "normal") for t, c in OUT.items()}, widths=TINY)


def test_upsampling_equals_bilinear_interpolation_with_aligned_corners():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    assert torch.allclose(upsample2x(x), ref, atol=1e-12)
    one = torch.randn(1, 2, 1, 3, dtype=torch.float64)
    assert torch.allclose(upsample2x(one), F.interpolate(one, scale_factor=2, mode="bilinear", align_corners=True))


def test_unpooling_equals_max_unpool(monkeypatch):
    x = torch.randn(2, 3, 8, 12)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # MaxUnpool2d has no deterministic implementation
    try:
        ref = F.max_unpool2d(pooled, idx, 2, 2)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert torch.equal(unpool(pooled, idx, x.shape[-2:]), ref)


def test_segnet_returns_full_resolution_features_and_checks_the_input_size():
    net = SegNet(widths=TINY)
    assert net(torch.randn(2, 3, 32, 64)).shape == (2, TINY[0], 32, 64)
    with pytest.raises(ValueError, match="divisible by 32.*got 30x64"):
        net(torch.randn(1, 3, 30, 64))


def test_mtan_splits_parameters_into_shared_and_per_task_parts():
    model = tiny_mtan()
    shared = {id(p) for p in model.shared_parameters()}
    own = {t: {id(p) for p in model.task_parameters(t)} for t in OUT}
    everything = {id(p) for p in model.parameters()}
    assert shared | set().union(*own.values()) == everything
    assert not shared & set().union(*own.values())
    assert not own["depth"] & own["normal"] and not own["segmentation"] & own["depth"]
    names = [n for n, _ in model.shared_layers()]
    assert names[0] == "segnet.encoder.0.first.0" and any(n.startswith("decoder_link") for n in names)
    assert not any("attention" in n or "heads" in n for n in names)
    assert len(names) == 2 * (26 + 10)  # conv + BN of SegNet's 26 conv blocks and of the 10 shared links


def test_a_task_loss_reaches_the_shared_network_and_only_its_own_attention():
    model = tiny_mtan()
    out = model(torch.randn(2, 3, 32, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {t: (2, c, 32, 64) for t, c in OUT.items()}
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 32, 64), atol=1e-5)
    out["depth"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task_parameters("depth"))
    assert all(p.grad is None for t in ("segmentation", "normal") for p in model.task_parameters(t))
    assert sum(p.grad.abs().sum() for p in model.shared_parameters() if p.grad is not None) > 0


def test_native_models_resolve_before_timm_and_typos_get_matches_from_both():
    assert known_model("segnet") and known_model("segnet_mtan") and known_model("resnet18")
    assert not known_model("segnett")
    assert suggest_models("segnet_mtn")[0] == "segnet_mtan"
    assert "resnet18" in suggest_models("resnet19")


def test_native_backbone_specs_are_checked():
    with pytest.raises(ConfigError, match="widths.*positive"):
        build_multitask_model(BackboneSpec("s", "segnet", {"widths": (4, 8)}), (3, 32, 32), "dense", ["depth"],
                              lambda t, c: DenseHead(c, 1))
    with pytest.raises(ConfigError, match=r"widths\[3\] == widths\[4\]"):
        build_multitask_model(BackboneSpec("m", "segnet_mtan", {"widths": (4, 8, 8, 16, 32)}), (3, 32, 32), "dense",
                              ["depth"], lambda t, c: DenseHead(c, 1))
    with pytest.raises(ConfigError, match=r"no kwargs \['depth'\]; valid: widths"):
        check_backbone(BackboneSpec("s", "segnet", {"depth": 3}), "dense")
    with pytest.raises(ConfigError, match="gives a feature vector .* needs a feature map .*segnet, segnet_mtan"):
        check_backbone(BackboneSpec("r", "resnet18"), "dense")


DENSE_TOML = """
[backbones.s]
model = "segnet"
kwargs = { widths = [4, 8, 8, 16, 16] }

[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.a]
backbones = ["BACKBONE"]
methods = ["ew"]
seeds = [0]

[suites.a.tasks.TASK]
epochs = 10
"""


@pytest.mark.parametrize("task, backbone, expected", [
    ("nyuv2", "r8", r"suites\.a\.backbones\[0\]: task 'nyuv2': backbone 'r8' \(resnet18\) gives a feature vector"),
    ("multimnist", "s", r"suites\.a\.backbones\[0\]: task 'multimnist': backbone 's' \(segnet\) gives a feature map"),
])
def test_config_rejects_a_backbone_that_does_not_fit_the_task(tmp_path, task, backbone, expected):
    from mtlbench.grid.config import load_benchmark

    config = make_project(tmp_path / "p", DENSE_TOML.replace("BACKBONE", backbone).replace("TASK", task))
    with pytest.raises(ConfigError, match=expected):
        load_benchmark(config)


def test_config_rejects_a_stem_on_a_native_model(tmp_path):
    from mtlbench.grid.config import load_benchmark

    toml = DENSE_TOML.replace("BACKBONE", "s").replace("TASK", "nyuv2").replace('model = "segnet"', 'model = "segnet"\nstem = "3x3"')
    with pytest.raises(ConfigError, match=r"backbones\.s: .*takes neither `stem` nor `pretrained`"):
        load_benchmark(make_project(tmp_path / "p", toml))


def _tiny_mtan(tasks=("a", "b")):
    torch.manual_seed(0)
    return SegNetMTAN({t: torch.nn.Conv2d(4, 3, 1) for t in tasks}, in_chans=3, widths=(4, 8, 8, 16, 16))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layers", [
    ["segnet.encoder.1.first.0", "segnet.decoder.2.rest.0.1", "encoder_link.2.0", "decoder_link.0.1"],
    ["encoder_link.0.0", "decoder_link.3.0"],  # link blocks only: the SegNet stays one stream
])
def test_recon_surgery_on_segnet_mtan_keeps_outputs(layers, mode):
    """Recon on SegNet-MTAN (Recon's Table 5 network): branching shared SegNet layers and the
    shared link blocks between attention stages leaves the outputs unchanged (copied weights),
    in training and eval mode; each task's copies and attention are its own parameters."""
    import copy

    from mtlbench.backbones.segnet import BranchedMTAN

    base = _tiny_mtan()
    reference = copy.deepcopy(base)
    model = BranchedMTAN(base, layers, init="copy")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train(mode == "train")
    reference.train(mode == "train")
    with torch.no_grad():
        got, expected = model(x), reference(x)
    for t in expected:
        torch.testing.assert_close(got[t], expected[t], rtol=1e-5, atol=1e-6)
    names = [n for n, _ in model.shared_layers()]
    assert not set(layers) & set(names)
    assert [n for n, _ in model.reference_layers(2)] == [n for n, _ in reference.shared_layers()]
    model.train()
    out = model(x)
    out["b"].sum().backward()
    for name in layers:
        copies = model.base.get_submodule(name).copies
        assert copies[0].weight.grad is None or copies[0].weight.grad.abs().sum() == 0
        assert copies[1].weight.grad is not None and copies[1].weight.grad.abs().sum() > 0
        own = {id(p) for p in model.task_parameters("b")}
        assert id(copies[1].weight) in own and id(copies[0].weight) not in own
