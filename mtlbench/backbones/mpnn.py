"""The message-passing network of Gilmer et al. (ICML 2017) as the QM9 experiments of Nash-MTL and
FAMO build it (their ``Net``, a modification of PyTorch Geometric's ``qm9_nn_conv.py`` example):
a linear embedding of the 11 atom features to ``dim``, three rounds of an edge-conditioned
convolution (``NNConv``: a per-edge weight matrix from an MLP of the 5 edge features, mean
aggregation) each followed by a GRU update, Set2Set pooling (3 steps) and a linear layer with
ReLU; each task's head is then Linear(dim, 1). The layers are PyTorch Geometric's.

One change of cost, not of function: the edge network's per-edge weight matrices depend only on
the edge features, which do not change between the three rounds, so they are computed once per
forward (:func:`shared_edge_nnconv`) where PyG's ``NNConv`` recomputes them in every round (and
every per-task backward pass pays for the three copies). Outputs equal ``NNConv``'s; gradients
equal them up to float summation order (tests/test_mpnn.py); ``bench/qm9_step.py --edge-net``
measures the saving."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.datasets.graphs import GraphBatch
from mtlbench.plugin.backbone import NativeBackbone

EDGE_FEATURES = 5  # bond type one-hot (4) + distance


@functools.cache
def shared_edge_nnconv() -> type:
    """PyG's ``NNConv`` with the edge network applied once: ``edge_weights(edge_attr)`` gives the
    per-edge weight matrices (E, in, out), then ``forward(x, edge_index, weights)`` any number of
    times. Same parameters, names and initialisation as ``NNConv``. (A class made on first use, so
    that importing this module does not import PyG.)"""
    from torch_geometric.nn import NNConv

    class SharedEdgeNNConv(NNConv):
        def edge_weights(self, edge_attr: Tensor) -> Tensor:
            return self.nn(edge_attr).view(-1, self.in_channels_l, self.out_channels)

        def forward(self, x: Tensor, edge_index: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
            # the weights travel in NNConv's edge_attr slot (PyG's generated propagate knows its names)
            out = self.propagate(edge_index, x=(x, x), edge_attr=weights)
            if self.root_weight:
                out = out + self.lin(x)
            if self.bias is not None:
                out = out + self.bias
            return out

        def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
            return torch.matmul(x_j.unsqueeze(1), edge_attr).squeeze(1)

    return SharedEdgeNNConv


class MPNN(nn.Module):
    """The shared trunk: molecule graphs -> (molecules, dim) features. ``in_chans``: atom features."""

    # Recon re-initialises a branched layer's task copies with each layer's own PyTorch initialiser
    init_style = "default"

    def __init__(self, in_chans: int = 11, dim: int = 64) -> None:
        from torch_geometric.nn import Set2Set

        super().__init__()
        if dim < 1 or in_chans < 1:
            raise ValueError(f"dim and in_chans must be >= 1, got dim={dim}, in_chans={in_chans}")
        self.lin0 = nn.Linear(in_chans, dim)
        edge_net = nn.Sequential(nn.Linear(EDGE_FEATURES, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = shared_edge_nnconv()(dim, dim, edge_net, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=3)
        self.lin1 = nn.Linear(2 * dim, dim)
        self.out_channels = dim

    def forward(self, g: GraphBatch) -> Tensor:
        if not isinstance(g, GraphBatch):
            raise TypeError(
                f"mpnn takes molecule graphs (GraphBatch), got {type(g).__name__}: use it with a graph task such as qm9"
            )
        out = F.relu(self.lin0(g.x))
        h = out.unsqueeze(0)
        weights = self.conv.edge_weights(g.edge_attr)  # the same in every round: computed once
        for _ in range(3):
            m = F.relu(self.conv(out, g.edge_index, weights))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        pooled = self.set2set(out, g.batch, dim_size=g.num_graphs)
        return F.relu(self.lin1(pooled))


def feature_channels(dim: int = 64) -> int:
    return dim


class MPNNBackbone(NativeBackbone):
    name = "mpnn"
    version = "2"  # 2: the edge network once per forward (gradients change at float rounding)
    description = "Gilmer et al.'s MPNN as Nash-MTL/FAMO build it for QM9 (NNConv x3 + GRU, Set2Set); kwargs: dim (default 64)"
    citation = (
        "Gilmer, Schoenholz, Riley, Vinyals & Dahl, Neural Message Passing for Quantum Chemistry, ICML 2017; "
        "Navon et al., ICML 2022 (experiments/quantum_chemistry of AvivNavon/nash-mtl)"
    )
    representation = "graph"
    network = MPNN
    feature_channels = staticmethod(feature_channels)
