"""The MPNN computes its edge network once per forward: the same function as PyG's NNConv path
(the edge network re-applied in each of the three rounds), same outputs, same gradients."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from mtlbench.backbones.mpnn import MPNN, shared_edge_nnconv
from mtlbench.datasets.graphs import GraphBatch


def _nnconv_forward(model: MPNN, g: GraphBatch) -> torch.Tensor:
    """The MPNN as Nash-MTL/FAMO run it: PyG's NNConv with the model's own parameters, the edge
    network applied in every round."""
    from torch_geometric.nn import NNConv

    conv = NNConv(model.out_channels, model.out_channels, copy.deepcopy(model.conv.nn), aggr="mean")  # (re-initialises)
    conv.nn, conv.lin, conv.bias = model.conv.nn, model.conv.lin, model.conv.bias  # the model's own parameters
    out = F.relu(model.lin0(g.x))
    h = out.unsqueeze(0)
    for _ in range(3):
        m = F.relu(conv(out, g.edge_index, g.edge_attr))
        out, h = model.gru(m.unsqueeze(0), h)
        out = out.squeeze(0)
    return F.relu(model.lin1(model.set2set(out, g.batch, dim_size=g.num_graphs)))


def _batch(seed: int = 0, molecules: int = 6) -> GraphBatch:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(3, 12, (molecules,), generator=gen)
    xs, edges, batch, start = [], [], [], 0
    for k, n in enumerate(sizes.tolist()):
        xs.append(torch.rand(n, 11, generator=gen))
        src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = src != dst
        edges.append(torch.stack([src[keep], dst[keep]]) + start)
        batch.append(torch.full((n,), k))
        start += n
    edge_index = torch.cat(edges, dim=1)
    edge_attr = torch.cat([F.one_hot(torch.randint(0, 4, (edge_index.shape[1],), generator=gen), 4).float(),
                           torch.rand(edge_index.shape[1], 1, generator=gen) * 3], dim=1)  # fmt: skip
    return GraphBatch(torch.cat(xs), edge_index, edge_attr, torch.cat(batch), molecules)


def test_outputs_and_gradients_equal_pyg_s_nnconv_path():
    torch.manual_seed(0)
    model = MPNN(in_chans=11, dim=16)
    g = _batch()
    ours = model(g)
    theirs = _nnconv_forward(model, g)
    assert ours.shape == (6, 16) and ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    probe = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * probe).sum(), list(model.parameters()))
    ref = torch.autograd.grad((theirs * probe).sum(), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert any(a.abs().sum() > 0 for (name, _), a in zip(model.named_parameters(), grads) if name.startswith("conv.nn"))


def test_same_parameters_names_and_initialisation_as_nnconv():
    from torch_geometric.nn import NNConv

    def build(cls: type) -> dict[str, torch.Tensor]:
        torch.manual_seed(3)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 16))
        return cls(4, 4, net, aggr="mean").state_dict()

    ours, theirs = build(shared_edge_nnconv()), build(NNConv)
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
