"""QM9: prepare from PyG's files (its pre-processed raw file and its processed copy, written here
in their real formats), Nash-MTL's split, complete-graph batching and metrics by hand, a training
run through the CLI with the MPNN, and clear errors for bad sources and backbones."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.cli import main
from mtlbench.core.errors import ConfigError, DataError
from mtlbench.datasets.graphs import GraphSplit, offsets
from mtlbench.grid.plugins import discover
from tests.conftest import REPO, make_project

PLUGINS = discover(REPO)
QM9 = PLUGINS.tasks["qm9"]
N_MOLECULES = 40


def molecules(n: int = N_MOLECULES, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Tiny molecules in PyG's QM9 fields: a chain of 2-7 atoms, bonds both ways, 19 targets."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        atoms = int(torch.randint(2, 8, (1,), generator=gen))
        kind = torch.randint(0, 5, (atoms,), generator=gen)
        x = torch.zeros(atoms, 11)
        x[torch.arange(atoms), kind] = 1
        x[:, 5] = torch.tensor([1.0, 6, 7, 8, 9])[kind]
        chain = torch.arange(atoms - 1)
        edge_index = torch.cat([torch.stack([chain, chain + 1]), torch.stack([chain + 1, chain])], dim=1)
        bond = torch.randint(0, 4, (atoms - 1,), generator=gen).repeat(2)
        edge_attr = torch.nn.functional.one_hot(bond, 4).float()
        y = torch.randn(1, 19, generator=gen) * torch.linspace(0.1, 10, 19)
        out.append({"x": x, "edge_index": edge_index, "edge_attr": edge_attr, "y": y,
                    "pos": torch.randn(atoms, 3, generator=gen), "z": x[:, 5].long(), "name": f"gdb_{i + 1}", "idx": i})
    return out


def write_raw(root: Path) -> Path:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    torch.save(molecules(), root / "raw" / "qm9_v3.pt")  # the file PyG downloads when RDKit is missing
    return root


def write_processed(root: Path) -> Path:
    from torch_geometric.data import Data, InMemoryDataset

    (root / "processed").mkdir(parents=True, exist_ok=True)
    InMemoryDataset.save([Data(**m) for m in molecules()], str(root / "processed" / "data_v3.pt"))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir):
    src = write_raw(tmp_path_factory.mktemp("qm9-src"))
    assert main(["prepare", "qm9", "--source", str(src), "--config", str(REPO / "benchmark.toml"), "--data", str(data_dir),
                 "--option", "source=pyg"]) == 0
    return data_dir


def test_prepare_from_the_raw_file_and_from_the_processed_copy_agree(prepared, tmp_path):
    other = tmp_path / "data"
    QM9(source="pyg").prepare(write_processed(tmp_path / "src"), other)
    a, b = QM9(source="pyg").load(prepared), QM9(source="pyg").load(other)
    for split in ("train", "val", "test"):
        assert len(a[split]) == len(b[split])
        assert torch.equal(a[split].x, b[split].x) and torch.equal(a[split].bonds, b[split].bonds)
        for t in QM9.tasks:
            assert torch.equal(a[split].targets[t], b[split].targets[t])
    meta = json.loads((QM9(source="pyg").store_path(prepared) / "meta.json").read_text())
    assert meta["molecules"] == {"test": 4, "val": 4, "train": 32}  # a tenth each below 30,000 molecules


def test_split_replays_nash_mtl_s_shuffle_and_leaves_the_generators_alone():
    from tasks.qm9 import nash_permutation

    torch.manual_seed(7)
    random.seed(7)
    before = torch.rand(1), random.random()
    torch.manual_seed(7)
    random.seed(7)
    perm = nash_permutation(1000)
    assert sorted(perm.tolist()) == list(range(1000))
    assert torch.equal(perm, nash_permutation(1000))
    assert (torch.rand(1), random.random()) == before  # the caller's generators are untouched


def test_targets_are_the_papers_eleven_standardised_on_the_training_split(prepared):
    splits = QM9(source="pyg").load(prepared)
    mols = molecules()
    meta = json.loads((QM9(source="pyg").store_path(prepared) / "meta.json").read_text())
    ds = __import__("datasets").load_from_disk(str(QM9(source="pyg").store_path(prepared)))
    train_index = ds["train"]["index"]
    raw = torch.stack([mols[i]["y"][0] for i in train_index]).double()
    columns = [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]
    for k, t in enumerate(QM9.tasks):
        values = raw[:, columns[k]]
        assert meta["mean"][t] == pytest.approx(float(values.mean()))
        assert meta["std"][t] == pytest.approx(float(values.std()))
        expected = ((values - values.mean()) / values.std()).float()
        torch.testing.assert_close(splits["train"].targets[t], expected)


def test_complete_graph_batch_by_hand():
    # molecule 0: 3 atoms, one bond 0-1 (type 2) both ways; molecule 1: 2 atoms, no bond
    x = torch.arange(5 * 11, dtype=torch.float32).view(5, 11)
    pos = torch.tensor([[0.0, 0, 0], [3, 4, 0], [0, 0, 1], [1, 0, 0], [1, 0, 2]])
    bonds = torch.tensor([[0, 1], [1, 0]])
    bond_attr = torch.tensor([[0.0, 0, 1, 0], [0, 0, 1, 0]])
    split = GraphSplit(x, pos, offsets(np.array([3, 2])), bonds, bond_attr, offsets(np.array([2, 0])),
                       {"a": torch.tensor([1.0, 2.0])})
    g, y = split.batch(torch.tensor([1, 0]))
    assert g.num_graphs == 2 and g.batch.tolist() == [0, 0, 1, 1, 1] and y["a"].tolist() == [2.0, 1.0]
    assert torch.equal(g.x, torch.cat([x[3:5], x[0:3]]))
    edges = {(int(s), int(d)): a.tolist() for s, d, a in zip(g.edge_index[0], g.edge_index[1], g.edge_attr)}
    assert len(edges) == 2 + 6  # every ordered pair of distinct atoms, per molecule
    assert edges[(0, 1)] == [0, 0, 0, 0, 2.0] and edges[(1, 0)] == [0, 0, 0, 0, 2.0]  # no bond; distance 2
    assert edges[(2, 3)] == [0, 0, 1, 0, 5.0] and edges[(3, 2)] == [0, 0, 1, 0, 5.0]  # the bond; distance 5
    assert edges[(2, 4)] == [0, 0, 0, 0, 1.0]
    # graph = "bonds": the bonded pairs only, same features
    bonded = GraphSplit(x, pos, offsets(np.array([3, 2])), bonds, bond_attr, offsets(np.array([2, 0])),
                        {"a": torch.tensor([1.0, 2.0])}, complete=False).graph(torch.tensor([1, 0]))
    assert bonded.batch.tolist() == [0, 0, 1, 1, 1] and torch.equal(bonded.x, g.x)
    assert bonded.edge_index.tolist() == [[2, 3], [3, 2]] and bonded.edge_attr.tolist() == [[0, 0, 1, 0, 5.0]] * 2


@pytest.mark.parametrize("complete", [True, False])
def test_a_shard_of_a_graph_batch_is_the_batch_of_its_molecules(complete):
    """A rank's block of a graph batch (mtlbench.train.distributed) equals the batch built from
    its molecules alone: nodes, edges (re-indexed) and owners, on complete and bond graphs."""
    x = torch.arange(5 * 11, dtype=torch.float32).view(5, 11)
    pos = torch.tensor([[0.0, 0, 0], [3, 4, 0], [0, 0, 1], [1, 0, 0], [1, 0, 2]])
    bonds = torch.tensor([[0, 1], [1, 0], [1, 0]])
    bond_attr = torch.tensor([[0.0, 0, 1, 0], [0, 0, 1, 0], [1.0, 0, 0, 0]])
    split = GraphSplit(x, pos, offsets(np.array([3, 2])), bonds, bond_attr, offsets(np.array([2, 1])),
                       {"a": torch.tensor([1.0, 2.0])}, complete=complete)  # fmt: skip
    order = torch.tensor([1, 0, 0, 1])
    whole = split.graph(order)
    for start, stop in ((0, 2), (2, 4), (1, 3)):
        part, alone = whole.graphs(start, stop), split.graph(order[start:stop])
        assert part.num_graphs == alone.num_graphs == stop - start
        for name in ("x", "edge_index", "edge_attr", "batch"):
            assert torch.equal(getattr(part, name), getattr(alone, name)), (name, start, stop)


def test_mae_in_reported_units_by_hand():
    from tasks.qm9 import TargetMAE

    ev = TargetMAE(["mu", "homo"], {"mu": 2.0, "homo": 0.5})
    ev.update({"mu": torch.tensor([[1.0], [0.0]]), "homo": torch.tensor([[0.0], [0.0]])},
              {"mu": torch.tensor([0.5, 0.5]), "homo": torch.tensor([1.0, -3.0])})
    # mu: mean |err| 0.5 standardised x std 2 = 1.0 D; homo: mean 2.0 x 0.5 eV = 1 eV = 1000 meV
    assert ev.compute() == {"mu.mae": pytest.approx(1.0), "homo.mae": pytest.approx(1000.0)}


QM9_TOML = """
[backbones.mpnn-s]
model = "mpnn"
kwargs = { dim = 8 }

[suites.qm9]
backbones = ["mpnn-s"]
methods = ["stl", "ew", "pcgrad"]
seeds = [0]
conflict = { every = 1 }

[suites.qm9.tasks.qm9]
source = "pyg"
epochs = 2
batch_size = 8
eval_batch_size = 16
"""


def test_qm9_trains_with_the_mpnn_through_the_cli(prepared, tmp_path):
    config = make_project(tmp_path / "p", QM9_TOML)
    results = tmp_path / "r"
    assert main(["run", "--config", str(config), "--results", str(results), "--data", str(prepared), "--no-progress"]) == 0
    runs = {p.name.split("__")[0]: json.loads(p.read_text()) for p in results.rglob("*.json")}
    assert set(runs) == {"stl", "ew", "pcgrad"}
    for name, r in runs.items():
        assert r["status"] == "ok", r.get("reason")
        assert set(r["metrics"]["test"]) == {f"{t}.mae" for t in QM9.tasks}
        assert all(v > 0 for v in r["metrics"]["test"].values())
    pc = runs["pcgrad"]
    assert pc["conflict"]["n_samples"] == 8 and len(pc["conflict"]["pairs"]) == 55  # 11 tasks: 55 pairs
    assert pc["cell"]["protocol"]["scheduler"] == "plateau"
    assert main(["validate", str(results)]) == 0


def test_bad_sources_and_backbones_get_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"no QM9 files found. Expected PyG's processed copy \(processed/data_v3\.pt\)"):
        QM9(source="pyg").prepare(tmp_path, tmp_path / "data")
    bad = tmp_path / "bad"
    (bad / "raw").mkdir(parents=True)
    torch.save([{"x": torch.zeros(2, 9), "pos": torch.zeros(2, 3), "edge_index": torch.zeros(2, 0, dtype=torch.long),
                 "edge_attr": torch.zeros(0, 4), "y": torch.zeros(1, 19)}] * 12, bad / "raw" / "qm9_v3.pt")
    with pytest.raises(DataError, match=r"qm9_v3\.pt: molecule 0 is not in PyG's QM9 layout \(x \(2, 9\)"):
        QM9(source="pyg").prepare(bad, tmp_path / "data")
    from mtlbench.grid.config import load_benchmark

    toml = QM9_TOML.replace('model = "mpnn"\nkwargs = { dim = 8 }', 'model = "resnet18"')
    with pytest.raises(ConfigError, match=r"needs a feature vector per molecular graph .*use a native graph model: mpnn"):
        load_benchmark(make_project(tmp_path / "p", toml))


def test_list_backbones_names_each_native_model_s_representation(capsys):
    assert main(["list", "backbones", "--config", str(REPO / "benchmark.toml")]) == 0
    out = capsys.readouterr().out
    assert "mpnn           v2  [graph]" in out and "segnet_mtan    v1  [dense]" in out and "resnet18_recon v1  [pooled]" in out


def test_standardize_all_uses_every_molecule_as_nash_mtl_and_libmtl(prepared):
    """Nash-MTL's trainer standardises with train_dataset.data.y, PyG's storage of every molecule
    (experiments/quantum_chemistry/trainer.py lines 93-96): the option ``standardize = "all"``."""
    task = QM9(source="pyg", standardize="all")
    splits = task.load(prepared)
    columns = [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]
    raw = torch.cat([m["y"] for m in molecules()]).double()[:, columns]
    mean, std = raw.mean(dim=0), raw.std(dim=0)  # torch's std: n - 1, as the reference
    ds = __import__("datasets").load_from_disk(str(task.store_path(prepared)))
    for split in ("train", "test"):
        rows = raw[torch.tensor(ds[split]["index"])]
        for k, t in enumerate(QM9.tasks):
            torch.testing.assert_close(splits[split].targets[t], ((rows[:, k] - mean[k]) / std[k]).float())
    assert splits["train"].meta["std"] == pytest.approx(dict(zip(QM9.tasks, std.tolist())))  # the MAE's unit
    train_only = QM9(source="pyg").load(prepared)["train"].meta["std"]
    assert train_only != pytest.approx(splits["train"].meta["std"])
    with pytest.raises(ValueError, match="standardize must be one of train, all"):
        QM9(standardize="full")


def test_qm9_methods_train_with_recon_and_st_on_the_mpnn(prepared, tmp_path):
    """The QM9 grid's mitigations on the MPNN: Recon branches its most conflicting layers
    (GRU, LSTM and linear layers alike), ST trains a fixed sparse subset; a meta-weighting and a
    gradient method run under both."""
    toml = QM9_TOML.replace('methods = ["stl", "ew", "pcgrad"]', 'methods = ["ew", "pcgrad", "auto-lambda"]').replace(
        "seeds = [0]", 'seeds = [0]\nmitigations = [{ name = "recon", options = { s = 0.0, k = 3 } }, { name = "st", options = { fraction = 0.3 } }]'
    )
    config = make_project(tmp_path / "p", toml)
    results = tmp_path / "r"
    assert main(["run", "--config", str(config), "--results", str(results), "--data", str(prepared), "--no-progress"]) == 0
    runs = {p.name.rsplit("__", 1)[0]: json.loads(p.read_text()) for p in results.rglob("*__seed*.json")}
    assert set(runs) == {f"{m}__{g}" for m in ("ew", "pcgrad", "auto-lambda") for g in ("recon", "st")}
    for label, r in runs.items():
        assert r["status"] == "ok", (label, r.get("reason"))
        assert all(v > 0 for v in r["metrics"]["test"].values())
    for m in ("ew", "pcgrad", "auto-lambda"):
        assert len(runs[f"{m}__recon"]["mitigation_report"]["chosen"]) == 3
    assert main(["validate", str(results)]) == 0
