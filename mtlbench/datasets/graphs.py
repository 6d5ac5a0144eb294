"""Molecular graphs held in memory and batched the way PyTorch Geometric's QM9 examples batch
them: each molecule a complete graph (every ordered pair of distinct atoms), the edge features
its bond type one-hot (zeros where the atoms share no bond) followed by the interatomic
distance (PyG's ``Complete()`` + ``Distance(norm=False)`` transforms), molecules stacked into
one disjoint graph with a ``batch`` vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from mtlbench.datasets.splits import Split


@dataclass
class GraphBatch:
    """A batch of molecules as one disjoint graph: node features ``x`` (N, F), ``edge_index``
    (2, E; source row 0, target row 1), ``edge_attr`` (E, D), ``batch`` (N,) the molecule of each
    node, ``num_graphs``."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    num_graphs: int

    def to(self, device: torch.device | str) -> "GraphBatch":
        return GraphBatch(
            self.x.to(device), self.edge_index.to(device), self.edge_attr.to(device), self.batch.to(device), self.num_graphs
        )

    def __len__(self) -> int:
        return self.num_graphs

    def graphs(self, start: int, stop: int) -> "GraphBatch":
        """Molecules ``start`` to ``stop`` (exclusive) as a batch of their own (a rank's shard)."""
        owner = self.batch
        a, b = int(torch.searchsorted(owner, start)), int(torch.searchsorted(owner, stop))
        edge_owner = owner[self.edge_index[0]]  # non-decreasing: each molecule's edges follow the previous one's
        e0, e1 = int(torch.searchsorted(edge_owner, start)), int(torch.searchsorted(edge_owner, stop))
        return GraphBatch(self.x[a:b], self.edge_index[:, e0:e1] - a, self.edge_attr[e0:e1], owner[a:b] - start, stop - start)

    def repeat_streams(self, n: int) -> "GraphBatch":
        """``n`` copies of the batch as one disjoint graph, copy k's molecules after copy k-1's
        (Recon's task streams: node, edge and molecule tensors each hold n contiguous blocks)."""
        nodes = self.x.shape[0]
        shift = torch.arange(n, device=self.x.device).repeat_interleave(self.edge_index.shape[1])
        return GraphBatch(
            self.x.repeat(n, 1),
            self.edge_index.repeat(1, n) + shift * nodes,
            self.edge_attr.repeat(n, 1),
            torch.cat([self.batch + k * self.num_graphs for k in range(n)]),
            self.num_graphs * n,
        )

    @property
    def device(self) -> torch.device:
        return self.x.device


class GraphSplit(Split):
    """Molecules in flat arrays with offsets: ``x`` (atoms, F) and ``pos`` (atoms, 3) by
    ``atom_offsets`` (molecules + 1); bonds ``bonds`` (pairs, 2; atom indices local to the
    molecule) and ``bond_attr`` (pairs, B) by ``bond_offsets``; targets one tensor per sub-task
    (molecules,). Same interface as :class:`mtlbench.datasets.splits.Split` (``len``,
    ``batch(index)``, ``batches``, ``subset``)."""

    def __init__(
        self,
        x: Tensor,
        pos: Tensor,
        atom_offsets: Tensor,
        bonds: Tensor,
        bond_attr: Tensor,
        bond_offsets: Tensor,
        targets: Mapping[str, Tensor],
        complete: bool = True,
    ) -> None:
        # (Split's interface, not its storage: no call to Split.__init__)
        n = atom_offsets.numel() - 1
        if bond_offsets.numel() != n + 1 or any(t.shape[0] != n for t in targets.values()):
            raise ValueError(f"graph split: {n} molecules, but offsets or targets disagree")
        self.x, self.pos, self.atom_offsets = x, pos, atom_offsets
        self.bonds, self.bond_attr, self.bond_offsets = bonds, bond_attr, bond_offsets
        self.targets = dict(targets)
        self.complete = complete  # complete graphs (PyG's Complete()) or the bonds only
        self.meta: dict[str, object] = {}  # what the task stored with the split (e.g. target scales)

    def __len__(self) -> int:
        return int(self.atom_offsets.numel() - 1)

    def subset(self, n: int) -> "GraphSplit":
        """The first ``n`` molecules."""
        a, b = int(self.atom_offsets[n]), int(self.bond_offsets[n])
        out = GraphSplit(
            self.x[:a], self.pos[:a], self.atom_offsets[: n + 1], self.bonds[:b], self.bond_attr[:b],
            self.bond_offsets[: n + 1], {k: v[:n] for k, v in self.targets.items()}, self.complete,
        )  # fmt: skip
        out.meta = dict(self.meta)
        return out

    def batch(self, index: Tensor) -> tuple[GraphBatch, dict[str, Tensor]]:  # type: ignore[override]
        return self.graph(index), {k: v[index] for k, v in self.targets.items()}

    def graph(self, index: Tensor) -> GraphBatch:
        """The molecules ``index`` as complete graphs with bond one-hot + distance edge features
        (or, with ``complete=False``, their bonds only, PyG's QM9 graph without ``Complete()``)."""
        xs, edges, attrs, owners = [], [], [], []
        start = 0
        for g, i in enumerate(index.tolist()):
            a0, a1 = int(self.atom_offsets[i]), int(self.atom_offsets[i + 1])
            b0, b1 = int(self.bond_offsets[i]), int(self.bond_offsets[i + 1])
            n, pairs, bond_attr = a1 - a0, self.bonds[b0:b1], self.bond_attr[b0:b1]
            if self.complete:
                src = torch.arange(n).repeat_interleave(n)
                dst = torch.arange(n).repeat(n)
                keep = src != dst  # no self loops
                src, dst = src[keep], dst[keep]
                bond = torch.zeros(n * n, bond_attr.shape[1], dtype=bond_attr.dtype)
                bond[pairs[:, 0] * n + pairs[:, 1]] = bond_attr
                bond_attr = bond.view(n, n, -1)[src, dst]  # zeros where the atoms share no bond
            else:
                src, dst = pairs[:, 0], pairs[:, 1]
            pos = self.pos[a0:a1]
            dist = (pos[src] - pos[dst]).norm(dim=-1, keepdim=True)
            attrs.append(torch.cat([bond_attr, dist.to(bond_attr.dtype)], dim=1))
            edges.append(torch.stack([src, dst]) + start)
            xs.append(self.x[a0:a1])
            owners.append(torch.full((n,), g, dtype=torch.long))
            start += n
        return GraphBatch(torch.cat(xs), torch.cat(edges, dim=1), torch.cat(attrs), torch.cat(owners), len(index))


def offsets(lengths: np.ndarray) -> Tensor:
    """Offsets (len + 1) of consecutive runs of the given lengths."""
    return torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
