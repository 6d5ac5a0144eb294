"""The message-passing network of Gilmer et al. (ICML 2017) as the QM9 experiments of Nash-MTL and
FAMO build it (their ``Net``, a modification of PyTorch Geometric's ``qm9_nn_conv.py`` example):
a linear embedding of the 11 atom features to ``dim``, three rounds of an edge-conditioned
convolution (``NNConv``: a per-edge weight matrix from an MLP of the 5 edge features, mean
aggregation) each followed by a GRU update, Set2Set pooling (3 steps) and a linear layer with
ReLU; each task's head is then Linear(dim, 1). The layers are PyTorch Geometric's."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.datasets.graphs import GraphBatch
from mtlbench.plugin.backbone import NativeBackbone

EDGE_FEATURES = 5  # bond type one-hot (4) + distance


class MPNN(nn.Module):
    """The shared trunk: molecule graphs -> (molecules, dim) features. ``in_chans``: atom features."""

    def __init__(self, in_chans: int = 11, dim: int = 64) -> None:
        from torch_geometric.nn import NNConv, Set2Set

        super().__init__()
        if dim < 1 or in_chans < 1:
            raise ValueError(f"dim and in_chans must be >= 1, got dim={dim}, in_chans={in_chans}")
        self.lin0 = nn.Linear(in_chans, dim)
        edge_net = nn.Sequential(nn.Linear(EDGE_FEATURES, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = NNConv(dim, dim, edge_net, aggr="mean")
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
        for _ in range(3):
            m = F.relu(self.conv(out, g.edge_index, g.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        pooled = self.set2set(out, g.batch, dim_size=g.num_graphs)
        return F.relu(self.lin1(pooled))


def feature_channels(dim: int = 64) -> int:
    return dim


class MPNNBackbone(NativeBackbone):
    name = "mpnn"
    description = "Gilmer et al.'s MPNN as Nash-MTL/FAMO build it for QM9 (NNConv x3 + GRU, Set2Set); kwargs: dim (default 64)"
    citation = (
        "Gilmer, Schoenholz, Riley, Vinyals & Dahl, Neural Message Passing for Quantum Chemistry, ICML 2017; "
        "Navon et al., ICML 2022 (experiments/quantum_chemistry of AvivNavon/nash-mtl)"
    )
    representation = "graph"
    network = MPNN
    feature_channels = staticmethod(feature_channels)
