"""Gradient-conflict statistics (definitions in the design notes, §3).

- Conflict between tasks i and j: cos(g_i, g_j) < 0 (PCGrad's definition). A zero gradient
  has cosine 0 with everything: it conflicts with nothing.
- Conflict incidence p% of one sampled step: (#pairs with cos < 0) / C(T, 2) x 100; the run's
  p% is the mean over sampled steps (as in the ST paper). Also per layer.
- S-conflict score of a layer (Recon, -1 < S <= 0): the number of task pairs whose per-layer
  cosine is below S, summed over the sampled steps (``layers.s_conflict`` per S).
- Histogram of pair cosines in Recon's bins by default. Bins are given by descending edges
  e_0 = 1 > e_1 > ... > e_n = -1: bin 0 is [e_1, e_0] (with Recon's edges: cos >= 0, the
  non-conflicting bin) and bin k >= 1 is [e_{k+1}, e_k).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from mtlbench.core import result as records
from mtlbench.core.packed import count_dtype, pack
from mtlbench.core.spec import HISTOGRAMS, RECON_EDGES  # noqa: F401  (re-exported)


def pairwise_cosines(grads: Tensor) -> Tensor:
    """(T, P) gradients -> (T, T) cosine matrix, computed in float64; zero rows give 0."""
    g = grads.detach().to(torch.float64)
    return gram_cosines(g @ g.T)


def gram_cosines(gram: Tensor) -> Tensor:
    """(T, T) Gram matrix of T vectors -> their (T, T) cosine matrix, in float64; a vector of norm
    0 has cosine 0 with everything."""
    k = gram.detach().to(torch.float64)
    norms = k.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    return torch.where(denom > 0, k / denom.clamp_min(1e-300), torch.zeros_like(k))


def pair_values(matrix: Tensor) -> Tensor:
    """Upper-triangle entries (i < j) of a (T, T) matrix, in row-major order."""
    t = matrix.shape[0]
    i, j = torch.triu_indices(t, t, offset=1)
    return matrix[i, j]


def conflict_incidence(cosines: Tensor) -> float:
    """Percentage of task pairs with negative cosine, from a (T, T) cosine matrix."""
    pairs = pair_values(cosines)
    if pairs.numel() == 0:
        return 0.0
    return float((pairs < 0).sum().item() * 100.0 / pairs.numel())


def histogram(values: Tensor, edges: Sequence[float] = RECON_EDGES) -> list[int]:
    """Counts of ``values`` in the bins defined by descending ``edges`` (see module doc)."""
    counts = [0] * (len(edges) - 1)
    for v in values.tolist():
        for k in range(len(edges) - 1):
            lo, hi = edges[k + 1], edges[k]
            if (k == 0 and lo <= v <= hi) or (k > 0 and lo <= v < hi):
                counts[k] += 1
                break
    return counts


def bin_labels(edges: Sequence[float]) -> list[str]:
    labels = []
    for k in range(len(edges) - 1):
        lo, hi = edges[k + 1], edges[k]
        labels.append(f"[{lo:g}, {hi:g}]" if k == 0 else f"[{lo:g}, {hi:g})")
    return labels


def s_conflict_counts(per_layer: Tensor, s: float) -> list[int]:
    """Per layer: how many task pairs have cosine < ``s`` (rows of ``layer_cosines``)."""
    return [int(v) for v in (per_layer < s).sum(dim=1).tolist()]


def layer_cosines(grads: Tensor, sizes: Sequence[int]) -> Tensor:
    """Per-layer pair cosines: (L, C(T,2)) from (T, P) gradients split into layers of ``sizes``."""
    out = []
    for block in torch.split(grads.detach(), list(sizes), dim=1):
        out.append(pair_values(pairwise_cosines(block)))
    return torch.stack(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval (in %) of a proportion k/n; (0, 100) when n = 0."""
    if n == 0:
        return 0.0, 100.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half) * 100, min(1.0, centre + half) * 100


def _r(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


class ConflictRecorder:
    """Collects conflict statistics from the (T, P) gradient matrices of sampled steps."""

    def __init__(
        self,
        tasks: Sequence[str],
        layer_names: Sequence[str],
        layer_sizes: Sequence[int],
        every: int,
        edges: Sequence[float] = RECON_EDGES,
        s_values: Sequence[float] = (),
    ) -> None:
        self.tasks = list(tasks)
        self.layer_names = list(layer_names)
        self.layer_sizes = [int(s) for s in layer_sizes]
        self.every = every
        self.edges = tuple(edges)
        self.steps: list[int] = []
        self.p_pct: list[float] = []
        self.pair_cos: list[list[float]] = []
        self.layer_mean_cos: list[list[float]] = []
        self.layer_conflicting: list[list[int]] = []  # per sample and layer: pairs with cos < 0
        self.counts = [0] * (len(self.edges) - 1)
        self.s_values = [float(v) for v in s_values]
        self.s_conflict = {v: [0] * len(self.layer_names) for v in self.s_values}

    def due(self, step: int) -> bool:
        return self.every > 0 and len(self.tasks) > 1 and step % self.every == 0

    def record(self, step: int, grads: Tensor) -> None:
        cos = pairwise_cosines(grads)
        pairs = pair_values(cos)
        self.steps.append(step)
        self.p_pct.append(conflict_incidence(cos))
        self.pair_cos.append([_r(v) for v in pairs.tolist()])
        for k, c in enumerate(histogram(pairs, self.edges)):
            self.counts[k] += c
        per_layer = layer_cosines(grads, self.layer_sizes)
        for v in self.s_values:
            self.s_conflict[v] = [a + b for a, b in zip(self.s_conflict[v], s_conflict_counts(per_layer, v))]
        self.layer_mean_cos.append([_r(v) for v in per_layer.mean(dim=1).tolist()])
        self.layer_conflicting.append([int(v) for v in (per_layer < 0).sum(dim=1).tolist()])

    def summary(self) -> records.Conflict | None:
        """The sampled statistics as the result file records them (None when nothing was sampled)."""
        if not self.steps:
            return None
        n = len(self.steps)
        mean = lambda rows, k: _r(sum(r[k] for r in rows) / n)  # noqa: E731
        n_pairs = len(self.tasks) * (len(self.tasks) - 1) // 2
        # p% per sample and layer from the counts (the same double as the share of pairs x 100)
        layer_p_pct = [[_r(k / n_pairs * 100) for k in row] for row in self.layer_conflicting]
        flat_cos = [v for row in self.pair_cos for v in row]
        lo, hi = wilson_interval(sum(1 for v in flat_cos if v < 0), len(flat_cos))
        return records.Conflict.model_validate({
            "every": self.every,
            "n_samples": n,
            "pairs": [[a, b] for i, a in enumerate(self.tasks) for b in self.tasks[i + 1 :]],
            "p_pct": _r(sum(self.p_pct) / n),
            "p_pct_ci95": [_r(lo), _r(hi)],
            "mean_cos": _r(sum(flat_cos) / len(flat_cos)),
            "histogram": {"edges": list(self.edges), "labels": bin_labels(self.edges), "counts": self.counts},
            "series": {"step": self.steps, "p_pct": self.p_pct, "pair_cos": self.pair_cos},
            "layers": {
                "names": self.layer_names,
                "params": self.layer_sizes,
                "mean_cos": [mean(self.layer_mean_cos, k) for k in range(len(self.layer_names))],
                "p_pct": [mean(layer_p_pct, k) for k in range(len(self.layer_names))],
                "s_conflict": {f"{v:g}": counts for v, counts in self.s_conflict.items()},
            },
            "layer_series": {
                "mean_cos": pack(self.layer_mean_cos, "float32"),
                "conflicting_pairs": pack(self.layer_conflicting, count_dtype(n_pairs)),
            },
        })  # fmt: skip

    def reference_summary(self, description: str) -> records.ReferenceConflict | None:
        """The headline statistics of a recorder on the reference parameter set."""
        full = self.summary()
        if full is None or full.layers is None:
            return None
        return records.ReferenceConflict(
            set=description,
            params=sum(self.layer_sizes),
            n_samples=full.n_samples,
            p_pct=full.p_pct,
            p_pct_ci95=full.p_pct_ci95,
            mean_cos=full.mean_cos,
            histogram=full.histogram,
            layers=records.Layers(
                names=full.layers.names, params=full.layers.params, mean_cos=full.layers.mean_cos, p_pct=full.layers.p_pct
            ),
        )


REFERENCE_SET = (
    "the shared trunk of the unmodified model: a layer a mitigation made task-specific contributes "
    "each task's gradient on its own copy; masked (sparse-training) coordinates included"
)


class ReferenceConflict:
    """Conflict statistics on the reference parameter set (:data:`REFERENCE_SET`), sampled at
    the same steps as the recorder of the updated parameters, so p% compares across
    mitigations of one cell. ``per_task`` (each task's reference parameters) is None when the
    reference set is the shared parameters themselves: then the unmasked per-task gradients the
    step computes anyway are recorded (no extra cost); otherwise T extra backward passes run on
    sampled steps (timed with the conflict statistics, not the step)."""

    def __init__(self, recorder: ConflictRecorder, per_task: Sequence[Sequence[Tensor]] | None) -> None:
        self.recorder, self.per_task = recorder, per_task

    def gradients(self, losses: Sequence[Tensor]) -> Tensor:
        """(T, P_ref) per-task gradients on the reference set (the graph is kept)."""
        assert self.per_task is not None
        rows = []
        for loss, params in zip(losses, self.per_task):
            found = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, found)]))
        return torch.stack(rows)
