"""Recon on the MPNN: molecule-graph batches split into task streams; every parameterised layer
can be branched, the GRU and Set2Set's LSTM included (their streams lie on axis 1), and each task
stream computes exactly what the task's own network (the trunk with that task's copies) would."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlbench.backbones.mpnn import MPNN
from mtlbench.plugin.branching import BranchedModel, branchable_layers
from mtlbench.plugin.model import HardSharingModel
from tests.test_mpnn import _batch

TASKS = ("a", "b", "c")


def _model(seed: int = 0) -> HardSharingModel:
    torch.manual_seed(seed)
    return HardSharingModel(MPNN(in_chans=11, dim=8), {t: nn.Linear(8, 1) for t in TASKS})


def test_every_parameterised_layer_of_the_mpnn_can_be_branched():
    assert branchable_layers(_model().trunk) == {"lin0", "conv.nn.0", "conv.nn.2", "conv.lin", "gru", "set2set.lstm", "lin1"}


def test_graph_batch_streams_are_contiguous_copies():
    g = _batch(molecules=3)
    s = g.repeat_streams(2)
    n, e = g.x.shape[0], g.edge_index.shape[1]
    assert s.num_graphs == 6 and torch.equal(s.x, torch.cat([g.x, g.x])) and torch.equal(s.edge_attr, torch.cat([g.edge_attr] * 2))
    assert torch.equal(s.edge_index[:, e:], g.edge_index + n) and torch.equal(s.batch[n:], g.batch + 3)


@pytest.mark.parametrize("layers", [["gru", "set2set.lstm"], ["lin0", "conv.nn.0", "conv.lin", "lin1"], ["conv.nn.2", "gru"]])
def test_each_task_stream_is_its_own_network(layers):
    base = _model()
    plain = copy.deepcopy(base)
    branched = BranchedModel(base, layers, init="reinit", generator=torch.Generator().manual_seed(1))
    branched.eval()
    g = _batch(molecules=4)
    out = branched(g)
    assert not branched.prefix_once  # graph batches run every stream from the input
    for i, t in enumerate(TASKS):
        own = copy.deepcopy(plain)
        for name in layers:  # the task's copy in place of the shared layer
            own.trunk.get_submodule(name.rpartition(".")[0] or "").__setattr__(
                name.rpartition(".")[2], copy.deepcopy(branched.trunk.get_submodule(name).copies[i])
            )
        own.eval()
        torch.testing.assert_close(out[t], own(g)[t], rtol=1e-5, atol=1e-6)
    copies = branched.trunk.get_submodule(layers[0]).copies
    first = [p for p in copies[0].parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(first, copies[1].parameters()))  # re-drawn independently


def test_copies_start_from_the_shared_weights_with_init_copy():
    base = _model()
    plain = copy.deepcopy(base).eval()
    branched = BranchedModel(base, ["gru", "lin1"], init="copy").eval()
    g = _batch()
    for t, y in branched(g).items():
        torch.testing.assert_close(y, plain(g)[t], rtol=1e-5, atol=1e-6)
