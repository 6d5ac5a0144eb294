"""NYUv2 and CityScapes from tiny fixtures in MTAN's real npy layout: prepare into the
memory-mapped HF store, load, carve validation, reject broken sources, augment, and train
through the CLI with SegNet and SegNet-MTAN."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.cli import main
from mtlbench.datasets.splits import CONTENT_HASH_FILE, STORE_MARKER, MappedColumn, arrow_columns, build_store_for
from mtlbench.datasets.dense import random_scale_crop_flip
from mtlbench.core.errors import DataError
from mtlbench.datasets.mtan_npy import open_store
from mtlbench.grid.plugins import discover
from tests.conftest import REPO, make_project
from tests.mtan_fixture import SIZE, write_mtan_npy

PLUGINS = discover(REPO)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mtan-npy")
    return {kind: write_mtan_npy(root / kind, kind, seed=i) for i, kind in enumerate(("nyuv2", "cityscapes"))}


@pytest.fixture(scope="module")
def prepared(sources, data_dir) -> Path:
    for kind, src in sources.items():
        assert main(["prepare", kind, "--source", str(src), "--config", str(REPO / "benchmark.toml"), "--data", str(data_dir)]) == 0
    return data_dir


def test_prepare_builds_a_complete_store_with_the_source_hash(prepared, sources):
    for kind in ("nyuv2", "cityscapes"):
        store = PLUGINS.tasks[kind]().store_path(prepared)
        assert (store / STORE_MARKER).exists()
        meta = json.loads((store / "meta.json").read_text())
        assert meta["counts"] == {"train": 6, "test": 4} and meta["image_size"] == list(SIZE)
        assert meta["content_hash"] == (store / CONTENT_HASH_FILE).read_text().strip()
        assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]  # no leftovers


@pytest.mark.parametrize("kind", ["nyuv2", "cityscapes"])
def test_loaded_splits_hold_the_source_arrays(prepared, sources, kind):
    task = PLUGINS.tasks[kind]()
    splits = task.load(prepared)
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "val": 1, "test": 4}
    train_rows, val_rows = set(splits["train"].rows.tolist()), set(splits["val"].rows.tolist())
    assert not train_rows & val_rows and train_rows | val_rows == set(range(6))
    assert val_rows == set(task.load(prepared)["val"].rows.tolist())  # fixed seed

    x, y = splits["test"].batch(torch.tensor([2, 0]))
    src = sources[kind] / "val"
    label_folder = "label" if kind == "nyuv2" else "label_7"
    assert x.dtype == torch.float32 and x.shape == (2, 3, *SIZE)
    assert torch.equal(x[0], torch.from_numpy(np.load(src / "image" / "2.npy")).permute(2, 0, 1))
    assert y["segmentation"].dtype == torch.int64
    assert torch.equal(y["segmentation"][1], torch.from_numpy(np.load(src / label_folder / "0.npy")).long())
    assert torch.equal(y["depth"][0], torch.from_numpy(np.load(src / "depth" / "2.npy")).permute(2, 0, 1))
    if kind == "nyuv2":
        normal = torch.from_numpy(np.load(src / "normal" / "0.npy").astype(np.float32)).permute(2, 0, 1)
        assert torch.equal(y["normal"][1], normal)
    else:
        assert set(y) == {"segmentation", "depth"}


def test_prepare_again_reuses_the_store_and_new_content_replaces_it(prepared, sources, tmp_path):
    src = tmp_path / "copy"
    shutil.copytree(sources["cityscapes"], src)
    data = tmp_path / "data"
    task = PLUGINS.tasks["cityscapes"]()
    store = task.prepare(src, data)
    first = (store / CONTENT_HASH_FILE).read_text()
    marker = (store / STORE_MARKER).stat().st_mtime_ns
    assert task.prepare(src, data) == store and (store / STORE_MARKER).stat().st_mtime_ns == marker
    depth = np.load(src / "train" / "depth" / "0.npy")
    np.save(src / "train" / "depth" / "0.npy", depth + 1.0)
    task.prepare(src, data)
    assert (store / CONTENT_HASH_FILE).read_text() != first
    stored = open_store(store, task.layout)["train"]["depth"].take(np.array([0]))[0]
    assert np.array_equal(stored, np.moveaxis(depth + 1.0, -1, 0))
    assert not [p for p in data.joinpath("cityscapes").iterdir() if p.name.startswith(".")]


def break_file(src: Path, how: str) -> tuple[Path, str]:
    if how == "missing":
        path = src / "train" / "depth" / "3.npy"
        path.unlink()
        return path, r"3\.npy: missing"
    if how == "truncated":
        path = src / "val" / "image" / "1.npy"
        path.write_bytes(path.read_bytes()[:300])
        return path, "truncated"
    if how == "shape":
        path = src / "train" / "normal" / "2.npy"
        np.save(path, np.zeros((SIZE[0], SIZE[1] - 1, 3)))
        return path, r"expected surface normals of shape \(32, 64, 3\) \(float\), found shape \(32, 63, 3\) dtype float64"
    path = src / "train" / "label" / "4.npy"
    np.save(path, np.full(SIZE, 13.0))
    return path, r"label values \[13\.0\] outside -1 \(ignore\) \.\. 12"


@pytest.mark.parametrize("how", ["missing", "truncated", "shape", "labels"])
def test_broken_sources_name_the_file_and_the_fix_and_leave_no_store(sources, tmp_path, how):
    src = tmp_path / "src"
    shutil.copytree(sources["nyuv2"], src)
    path, expected = break_file(src, how)
    data = tmp_path / "data"
    with pytest.raises(DataError) as info:
        PLUGINS.tasks["nyuv2"]().prepare(src, data)
    msg = str(info.value)
    assert str(path) in msg and f"mtlbench prepare nyuv2 --source {src}" in msg
    assert re.search(expected, msg), msg
    assert not (data / "nyuv2").exists() or not any((data / "nyuv2").iterdir())


def test_loading_an_unprepared_task_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError, match=r"store not found\. Build it once with `mtlbench prepare cityscapes --source PATH`"):
        PLUGINS.tasks["cityscapes"]().load(tmp_path)


def test_options_are_checked_and_best_val_scores_minus_delta_m_against_the_reference():
    with pytest.raises(ValueError, match=r"val_fraction=1\.0; expected a number in \(0, 1\)"):
        PLUGINS.tasks["nyuv2"](val_fraction=1.0)
    task = PLUGINS.tasks["cityscapes"]()
    ref = dict(task.selection_reference)
    assert set(ref) == {m.key for m in task.metrics}
    assert task.selection_score(ref, task.tasks) == 0.0
    better = {**ref, "segmentation.miou": ref["segmentation.miou"] * 1.1, "depth.abs_err": ref["depth.abs_err"] * 0.9}
    assert task.selection_score(better, task.tasks) == pytest.approx((0.1 + 0.1) / 4)
    assert task.selection_score(better, ["depth"]) == pytest.approx(0.1 / 2)


def test_a_failed_rebuild_keeps_the_previous_store(tmp_path):
    target = tmp_path / "store"
    build_store_for(target, "aaa", lambda out: (out.mkdir(), (out / "x").write_text("old")))

    def fail(out: Path) -> None:
        out.mkdir()
        (out / "x").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_store_for(target, "bbb", fail)
    assert (target / "x").read_text() == "old" and (target / CONTENT_HASH_FILE).read_text().strip() == "aaa"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_mapped_columns_gather_across_chunks_like_one_array():
    rng = np.random.default_rng(0)
    chunks = [rng.random((n, 2, 3)) for n in (3, 1, 4)]
    rows = np.array([7, 0, 3, 3, 5, 1])
    assert np.array_equal(MappedColumn(chunks).take(rows), np.concatenate(chunks)[rows])


def test_arrow_columns_are_zero_copy_views_of_a_chunked_store(tmp_path):
    import datasets

    features = datasets.Features({"a": datasets.Array3D((2, 3, 4), "float32"), "b": datasets.Value("int64")})
    values = np.arange(7 * 24, dtype=np.float32).reshape(7, 2, 3, 4)
    ds = datasets.Dataset.from_generator(lambda: ({"a": v, "b": i} for i, v in enumerate(values)), features=features,
                                         cache_dir=str(tmp_path / "c"), writer_batch_size=2)
    ds.save_to_disk(str(tmp_path / "s"), num_shards=3)
    cols = arrow_columns(datasets.load_from_disk(str(tmp_path / "s")), ["a", "b"], "s")
    assert len(cols["a"].chunks) > 1 and not cols["a"].chunks[0].flags.owndata
    rows = np.array([6, 0, 3])
    assert np.array_equal(cols["a"].take(rows), values[rows]) and cols["b"].take(rows).tolist() == [6, 0, 3]


def batch_of_targets(n: int = 16):
    g = torch.Generator().manual_seed(1)
    h, w = SIZE
    x = torch.rand(n, 3, h, w, generator=g)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    return x, {"segmentation": torch.randint(-1, 13, (n, h, w), generator=g),
               "depth": torch.rand(n, 1, h, w, generator=g) + 0.5, "normal": normal}


def test_flip_mirrors_every_map_and_negates_normal_x():
    x, y = batch_of_targets()
    ax, ay = random_scale_crop_flip(x, y, torch.Generator().manual_seed(0), scales=(1.0,))
    flipped = [not torch.equal(ax[i], x[i]) for i in range(len(x))]
    assert 0 < sum(flipped) < len(x)  # both outcomes occur
    for i, f in enumerate(flipped):
        mirror = (lambda t: t.flip(-1)) if f else (lambda t: t)
        assert torch.equal(ax[i], mirror(x[i]))
        assert torch.equal(ay["segmentation"][i], mirror(y["segmentation"][i]))
        assert torch.equal(ay["depth"][i], mirror(y["depth"][i]))
        sign = -1.0 if f else 1.0
        assert torch.equal(ay["normal"][i, 0], sign * mirror(y["normal"][i, 0]))
        assert torch.equal(ay["normal"][i, 1:], mirror(y["normal"][i, 1:]))


def test_scale_crop_zooms_in_and_divides_depth_by_the_scale():
    x, y = batch_of_targets(4)
    y["depth"] = torch.full_like(y["depth"], 3.0)
    ax, ay = random_scale_crop_flip(x, y, torch.Generator().manual_seed(0), scales=(1.5,))
    assert ax.shape == x.shape and ay["segmentation"].shape == y["segmentation"].shape
    assert torch.allclose(ay["depth"], torch.full_like(ay["depth"], 2.0))
    for i in range(4):  # nearest resampling keeps labels from the image
        assert set(ay["segmentation"][i].unique().tolist()) <= set(y["segmentation"][i].unique().tolist())
    again = random_scale_crop_flip(x, y, torch.Generator().manual_seed(0), scales=(1.5,))
    assert torch.equal(again[0], ax)  # the generator alone decides


TINY_BACKBONES = """
[backbones.segnet-t]
model = "segnet"
kwargs = { widths = [4, 8, 8, 16, 16] }

[backbones.mtan-t]
model = "segnet_mtan"
kwargs = { widths = [4, 8, 8, 16, 16] }
"""

DENSE_TOML = TINY_BACKBONES + """
[suites.dense]
backbones = ["segnet-t", "mtan-t"]
methods = ["stl", "pcgrad"]
seeds = [0]
conflict = { every = 1 }

[suites.dense.tasks.nyuv2]
epochs = 2
selection = "best_val"
max_train_samples = 4
eval_batch_size = 3

[suites.dense.tasks.cityscapes]
epochs = 1
last_n = 1
batch_size = 2
augmentation = false
max_train_samples = 4
"""


def test_training_through_the_cli_on_both_tasks_and_backbones(prepared, tmp_path, capsys):
    config = make_project(tmp_path / "proj", DENSE_TOML)
    results = tmp_path / "results"
    code = main(["run", "--config", str(config), "--results", str(results), "--data", str(prepared), "--no-progress"])
    assert code == 0, capsys.readouterr()
    files = sorted(results.rglob("*.json"))
    assert len(files) == 2 * 2 * 2
    for path in files:
        r = json.loads(path.read_text())
        assert r["status"] == "ok", r.get("reason")
        expected = {m.key for m in PLUGINS.tasks[r["task"]].metrics}
        assert set(r["metrics"]["test"]) == expected and set(r["metric_info"]) == expected
        assert all(np.isfinite(v) for v in r["metrics"]["test"].values())
        assert 0.0 <= r["metrics"]["test"]["segmentation.miou"] <= 1.0
        if r["method"] == "pcgrad":
            assert r["conflict"]["n_samples"] > 0
            assert r["conflict"]["layers"]["names"][0] == ("segnet.encoder.0.first.0" if r["backbone"] == "mtan-t" else "encoder.0.first.0")
    assert main(["validate", str(results)]) == 0
    assert os.environ["MTLBENCH_DATA"]  # the session data folder, never the repository


def test_paper_presets_carry_the_papers_protocols():
    from mtlbench.grid.config import load_benchmark

    bench = load_benchmark(REPO / "benchmark.toml")
    adam_halved_at_100 = {"epochs": 200, "optimizer": "adam", "scheduler": "step", "step_size": 100, "gamma": 0.5,
                          "selection": "last_mean"}
    expected = {  # suite -> (task, backbone model, batch size, lr, epochs averaged)
        "nash-nyuv2": [("nyuv2", "segnet_mtan", 2, 1e-4, 10)],
        "st-mtan": [("nyuv2", "segnet_mtan", 2, 1e-4, 10), ("cityscapes", "segnet_mtan", 8, 1e-4, 10)],
        "recon-cityscapes": [("cityscapes", "segnet", 8, 5e-5, 1)],
        "recon-nyuv2": [("nyuv2", "segnet_mtan", 2, 1e-4, 1)],
    }
    for suite, settings in expected.items():
        cells = bench.cells([suite])
        assert {c.method for c in cells} >= {"stl", "ew"} and {c.seed for c in cells} == {0, 1, 2}
        for task, model, batch, lr, last_n in settings:
            mine = [c for c in cells if c.task == task]
            assert mine and all(c.backbone_spec.model == model and c.task_options["augmentation"] for c in mine)
            assert all(c.protocol.to_dict() == {**c.protocol.to_dict(), **adam_halved_at_100, "batch_size": batch,
                                                "lr": lr, "last_n": last_n}
                       for c in mine)
    assert len(bench.cells(["default"])) == 24  # the default suite is unchanged


def test_published_tables_point_at_presets_that_run_their_task_and_backbone():
    from mtlbench.grid.config import load_benchmark
    from mtlbench.report.protocols import PROTOCOLS_FILE
    from mtlbench.report.published import read_table

    bench = load_benchmark(REPO / "benchmark.toml")
    paths = sorted(p for p in (REPO / "leaderboard" / "published").glob("*.toml") if p.name != PROTOCOLS_FILE)
    assert len(paths) == 16
    for path in paths:
        table = read_table(path)
        target = table.reproduce
        cells = [c for c in bench.cells([target["suite"]]) if c.task == target["task"] and c.backbone == target["backbone"]]
        assert cells, path.name
        runs = {(c.method, c.mitigation) for c in cells}
        for row in table.rows:
            # a row labelled with one of ours is one the preset runs; a row no preset runs carries no label
            assert row.ours is None or (row.ours, row.mitigation) in runs, (path.name, row.method, row.ours, row.mitigation)
            if row.ours is None:
                assert row.method.split(" (")[0] not in {"STL", "LS", "EW", "MGDA", "PCGrad", "CAGrad"}, (path.name, row.method)


MITIGATION_TOML = TINY_BACKBONES + """
[suites.recon]
backbones = ["segnet-t"]
methods = ["ew"]
mitigations = [{ name = "recon", options = { s = 0.0, k = 4, search_steps = 2 } }]
seeds = [0]

[suites.recon.tasks.cityscapes]
epochs = 1
last_n = 1
batch_size = 2
max_train_samples = 4

[suites.recon-mtan]
backbones = ["mtan-t"]
methods = ["pcgrad"]
mitigations = [{ name = "recon", options = { s = -0.02, k = 6, search_steps = 2 } }]
seeds = [0]
conflict = { every = 1 }

[suites.recon-mtan.tasks.nyuv2]
epochs = 1
last_n = 1
batch_size = 2
max_train_samples = 4

[suites.st]
backbones = ["mtan-t", "segnet-t"]
methods = ["pcgrad"]
mitigations = [{ name = "st", options = { fraction = 0.6 } }]
seeds = [0]

[suites.st.tasks.nyuv2]
epochs = 1
last_n = 1
max_train_samples = 4
"""


def test_recon_branches_segnet_layers_and_st_masks_segnet_mtan(prepared, tmp_path, capsys):
    config = make_project(tmp_path / "proj", MITIGATION_TOML)
    results = tmp_path / "results"
    code = main(["run", "--config", str(config), "--suite", "recon", "--suite", "recon-mtan", "--suite", "st",
                 "--results", str(results), "--data", str(prepared), "--no-progress"])
    assert code == 0, capsys.readouterr()
    runs = {(r["mitigation"], r["backbone"]): r for r in (json.loads(p.read_text()) for p in results.rglob("*__seed0.json"))}
    assert set(runs) == {("recon", "segnet-t"), ("recon", "mtan-t"), ("st", "mtan-t"), ("st", "segnet-t")}
    mtan = runs["recon", "mtan-t"]
    assert mtan["status"] == "ok" and len(mtan["mitigation_report"]["chosen"]) == 6
    assert all(n.startswith(("segnet.", "encoder_link.", "decoder_link.")) for n in mtan["mitigation_report"]["chosen"])
    assert mtan["conflict"]["reference"]["params"] == sum(r["params"] for r in mtan["mitigation_report"]["ranking"])
    recon = runs["recon", "segnet-t"]["mitigation_report"]
    assert len(recon["chosen"]) == 4 and all(name.startswith(("encoder.", "decoder.")) for name in recon["chosen"])
    for backbone in ("mtan-t", "segnet-t"):
        st = runs["st", backbone]["mitigation_report"]
        assert 50.0 < st["neuron_weights_kept_pct"] < 70.0 and st["trainable_pct"] < 100.0
