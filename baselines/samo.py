"""SAMO: sharpness-aware multi-task optimisation with a joint global/local perturbation. Each
task's gradient is taken at weights perturbed towards higher loss: its own head along its own
gradient (local), the shared parameters along a mix of the mean-loss gradient (global) and a
zeroth-order estimate of the task's own gradient (local, two forward passes instead of a
backward); a multi-task method (the base) then combines these perturbed gradients.

Paper: SAMO: A Lightweight Sharpness-Aware Approach for Multi-Task Optimization with Joint
Global-Local Perturbation, ICCV 2025. Reference matched: the authors' OptMN-Lab/SAMO @ 3b686c9,
the training step of ``experiments/*/trainer_samo.py`` with the ``*withsamo`` methods of
``methods/weight_methods.py`` (the algorithm is written out in each trainer; see
:class:`mtlbench.plugin.method.SharpnessAware` for the steps):

- ``rho`` = 0.001, ``beta`` = 0.5, ``zo_eps`` = 0.01: the settings of the reference's run scripts
  for NYUv2, CityScapes, CelebA and Office-Home (QM9's: rho 1e-5, beta 0.9); ``adaptive`` (ASAM
  norms) off, as there;
- ``zo_scale = "per_tensor"``: the zeroth-order estimate is rescaled per parameter tensor to the
  norm of the mean-loss gradient's tensor (the CelebA, CityScapes, QM9 and Office-Home
  trainers); ``"raw"`` uses it as it is (the NYUv2 trainer);
- ``base = "fairgrad"``: the base every run script uses (``fairgradwithsamo``); the reference
  also wraps linear scalarisation, PCGrad, MGDA and CAGrad; here any gradient method on one
  (T, P) matrix or loss weighting, with its default options, can be the base.

Checked against records of the reference code itself (tests/test_samo.py): the CelebA trainer
(T = 40 tasks on 33 shared parameters: T > P, rank-deficient, per-tensor scaling) and the NYUv2
trainer (T = 3, segmentation/depth/normal losses, raw scaling), each driven for several steps
of its own loop; at every step, from the recorded state, the perturbed gradients of every task
(shared and head) agree with the reference's within float32 rounding.

Differences, declared:

- The base is ours, with its own options (for ``fairgrad``: the Newton solve checked against
  the FairGrad reference). The reference's ``*withsamo`` classes multiply the combined update by
  T ("to match the sum loss") and clip it to norm 1 (``max_norm``, also in their plain
  versions); ours keeps the base's scale and clipping, so a ``samo`` row differs from its base's
  row by the perturbation alone. For the same reason the base takes its own default options:
  the reference's run scripts leave FairGrad's alpha at its parser's default, 2.0; ours is
  ``fairgrad``'s default, 1.0.
- Random directions come from the method's seeded generator (``directions``); the reference
  seeds torch's global generator from NumPy's for each task (which also re-seeds everything
  else drawn from it afterwards).
- A zero zeroth-order estimate (the two losses equal) contributes nothing under per-tensor
  scaling; the reference divides by its zero norm (NaN).
- Which parameters are "shared": the model's shared trunk, and each task's private parameters
  (its head, and with Recon its branched layers) take the head rule. The reference's MTAN
  treats its task-specific attention modules as shared.
- With a mitigation that masks updates (ST), the perturbation is unmasked and the mask applies
  to the perturbed gradients.

Cost per step: 3T + 1 forward passes of the training batch (2T without gradients) and T + 1
backward passes (measured in bench/method_cost.py).
"""

from __future__ import annotations

from mtlbench.api import Method, SharpnessAware


class SAMO(SharpnessAware):
    name = "samo"
    version = "1"
    description = "SAMO: each task's gradient at a joint global/local sharpness-aware perturbation, combined by a base method"
    citation = (
        "SAMO: A Lightweight Sharpness-Aware Approach for Multi-Task Optimization with Joint Global-Local Perturbation, ICCV 2025"
    )
    reference = "OptMN-Lab/SAMO trainer_samo.py (rho 0.001, beta 0.5, zo_eps 0.01, fairgradwithsamo)"

    def __init__(
        self,
        n_tasks: int,
        base: Method | str = "fairgrad",
        rho: float = 0.001,
        beta: float = 0.5,
        zo_eps: float = 0.01,
        adaptive: bool = False,
        zo_scale: str = "per_tensor",
    ) -> None:
        super().__init__(n_tasks, base, rho, beta, zo_eps, adaptive, zo_scale)
