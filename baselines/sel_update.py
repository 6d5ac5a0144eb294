"""Selective Task Group Updates: tasks are grouped by an affinity tracked during training, and
each training step updates the groups one after another (one optimiser step per group, each
on a fresh forward pass of the same batch), so tasks that help each other share an update and
tasks that conflict do not.

Paper: Jeong & Yoon, Selective Task Group Updates for Multi-Task Optimization, ICLR 2025.
Reference matched: the authors' wooseong97/sel-update-mtl @ 53a8ba2 (``utils/train_utils.py``:
``train_phase_affinity`` and ``form_task_affinity``; ``losses/loss_schemes.py``:
``MTLoss_affinity``), with its configurations' settings:

- every task starts in its own group; for the first ``warmup_steps`` = 100 steps (``prepos``)
  the groups stay as they are, afterwards they are re-formed before every step by affinity
  propagation (scikit-learn's ``AffinityPropagation``, ``preference`` None = the median
  similarity, ``convergence_iter`` 50, raised by 100 and retried up to 10 times while it finds
  no cluster; if it never does, the groups stay) on the affinity map A, each column divided by
  its diagonal entry, symmetrised;
- the groups are updated in a random order; a single group is updated twice;
- a group's loss is the sum of its tasks' losses (loss weights 1, ``group_norm`` off);
- before each group's update, the task losses L at the current weights are compared with those
  before the previous update of the step, L': for each task s of the group and every task t,
  a = (1 - L_t / L'_t) / |group| enters A[s, t] as an exponential moving average with weight
  ``decay`` = 0.001 (NYUD-v2 and PASCAL-Context; Taskonomy: 1e-4); within the group, a
  diagonal entry only takes a >= 0, and two tasks whose a disagree in sign take
  -max(a_s, a_t).

What the reference measures: the losses are recorded *before* each group's update and compared
with those before the previous one, so the loss change written under group k's tasks is the
one group k - 1's update caused (the first group of a step records nothing). This file computes
the same, so that it matches the reference; the paper's text describes the change a group's own
update causes.

Checked against records of the reference code itself (tests/test_sel_update.py: its
``train_phase_affinity`` over a model with T = 4 and T = 3 heads, SGD and Adam, the groups
re-formed from the eighth step, decays 0.3 and 0.05, 16 steps): the affinity map, the groups
and the parameters after every step are equal on one thread. Differences, declared: the order of
the groups is drawn from the method's seeded generator (``order``), the reference's from
Python's ``random``; the clustering's tie-breaking noise (scikit-learn adds ~1e-7 relative
noise to the similarities; which exemplars win a near-tie depends on it) comes from a NumPy
generator seeded from the method's generator (``clustering_seed``), the reference's from
NumPy's global one, unseeded; an affinity map with a zero diagonal entry (its normalisation divides by
zero) keeps the current groups, where the reference's clustering raises.

Cost per step: one forward and backward pass and one optimiser step per group (between 1 and T,
at least 2), plus one clustering of a T x T matrix.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mtlbench.api import SequentialGroups, StepInfo


class SelectiveGroupUpdates(SequentialGroups):
    name = "sel-update"
    version = "1"
    affinity: Tensor
    labels: Tensor
    description = "Selective Task Group Updates: groups from a tracked task affinity, updated one after another"
    citation = "Jeong & Yoon, Selective Task Group Updates for Multi-Task Optimization, ICLR 2025"
    reference = "wooseong97/sel-update-mtl train_utils.py (decay 0.001, prepos 100, affinity propagation)"

    def __init__(
        self, n_tasks: int, decay: float = 0.001, warmup_steps: int = 100, preference: float | None = None,
        convergence_iter: int = 50,
    ) -> None:  # fmt: skip
        super().__init__(n_tasks)
        if not 0 < decay <= 1 or warmup_steps < 0 or convergence_iter < 1:
            raise ValueError(
                f"sel-update: need 0 < decay <= 1, warmup_steps >= 0, convergence_iter >= 1; "
                f"got {decay}, {warmup_steps}, {convergence_iter}"
            )
        self.decay, self.warmup_steps, self.preference, self.convergence_iter = decay, warmup_steps, preference, convergence_iter
        self.register_buffer("affinity", torch.zeros(n_tasks, n_tasks))  # float32, as the reference's map
        self.register_buffer("labels", torch.arange(n_tasks))  # each task's group
        self.previous: list[float] = []

    def groups(self) -> list[list[int]]:
        """The current groups (task indices), in the order of their labels."""
        labels = self.labels.tolist()
        return [[t for t in range(self.n_tasks) if labels[t] == g] for g in range(max(labels) + 1)]

    def order(self, n: int, info: StepInfo) -> list[int]:
        """The order of the step's ``n`` groups: a permutation from the method's generator."""
        return torch.randperm(n, generator=info.generator).tolist()

    def plan(self, info: StepInfo) -> list[list[int]]:
        if info.step > self.warmup_steps:
            self.regroup(self.clustering_seed(info))
        groups = self.groups()
        plan = [groups[i] for i in self.order(len(groups), info)]
        self.previous = []
        return plan * 2 if len(plan) == 1 else plan

    def observe(self, group: list[int], losses: Tensor, info: StepInfo) -> None:
        now = [float(v) for v in losses]
        before = self.previous
        if before:
            size = len(group)
            for s in group:
                for t in range(self.n_tasks):
                    if before[t] <= 0:
                        continue
                    a_t = (1 - now[t] / before[t]) / size
                    if t not in group:
                        self._update(a_t, s, t)
                        continue
                    if before[s] <= 0:
                        continue
                    a_s = (1 - now[s] / before[s]) / size
                    if t == s:
                        if a_t >= 0:
                            self._update(a_t, s, t)
                    elif a_t * a_s >= 0:
                        self._update(a_t, s, t)
                    else:
                        self._update(-max(a_t, a_s), s, t)
        self.previous = now

    def _update(self, value: float, s: int, t: int) -> None:
        self.affinity[s, t] = (1 - self.decay) * self.affinity[s, t] + self.decay * value

    def clustering_seed(self, info: StepInfo) -> int:
        """The seed of the clustering's tie-breaking noise, from the method's generator."""
        return int(torch.randint(0, 2**31 - 1, (), generator=info.generator))

    def regroup(self, seed: int) -> None:
        """Affinity propagation on the normalised, symmetrised affinity map; its tie-breaking
        noise from a NumPy generator seeded with ``seed``."""
        import numpy as np
        from sklearn.cluster import AffinityPropagation
        from sklearn.exceptions import ConvergenceWarning

        x = self.affinity.clone()
        for i in range(self.n_tasks):
            x[:, i] /= x[i, i]
        x = (x + x.T) / 2
        if not torch.isfinite(x).all():
            return  # a zero diagonal entry: no normalised map to cluster (the reference raises)
        iterations, noise = self.convergence_iter, np.random.RandomState(seed)
        for _ in range(10):
            cluster = AffinityPropagation(
                preference=self.preference, affinity="precomputed", convergence_iter=iterations, random_state=noise
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                # two tasks always have "mutually equal similarities" (a symmetric 2 x 2 map): then
                # scikit-learn groups them iff their similarity reaches the preference, as documented
                warnings.filterwarnings("ignore", message="All samples have mutually equal similarities")
                cluster.fit_predict(x.cpu().numpy())
            if len(cluster.cluster_centers_indices_):
                self.labels = torch.as_tensor(cluster.labels_, dtype=torch.long, device=self.labels.device)
                return
            iterations += 100
