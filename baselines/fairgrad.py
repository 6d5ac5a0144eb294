"""FairGrad: alpha-fair resource allocation. Find w > 0 with (K w)_i = w_i^(-1/alpha) for the
raw Gram matrix K = G G^T and update sum_i w_i g_i (alpha = 1 is proportional fairness, the
Nash-MTL equation without normalisation; alpha -> infinity approaches max-min fairness).

Paper: Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024. Reference matched:
the authors' ``FairGrad`` (github.com/OptMN-Lab/fairgrad, weight_methods.py; also LibMTL's and
torchjd's ports): raw Gram matrix, alpha = 1.0 by default (LibMTL's default; the paper tunes it
per dataset), update sum_i w_i g_i. Difference: the reference calls
``scipy.optimize.least_squares`` from w = 1/T with bounds w >= 0 and default tolerances; we solve
the same equation by Newton's method to 1e-10 (``mtlbench.plugin.solvers.power_balance_weights``).
Edge cases: a zero task gradient or linearly dependent gradients without a solution raise a
clear error.

Version 2: float64 Gram matrix.
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.api import GramWeighting, StepInfo
from mtlbench.plugin.solvers import power_balance_weights


class FairGrad(GramWeighting):
    name = "fairgrad"
    version = "2"
    properties = frozenset({"non_conflicting", "permutation_invariant", "may_raise_on_dependent"})
    description = "alpha-fair allocation: K w = w^(-1/alpha)"
    citation = "Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024"
    reference = "authors' fairgrad weight_methods.py FairGrad (alpha 1.0); Newton solve instead of least_squares"

    def __init__(self, n_tasks: int, alpha: float = 1.0) -> None:
        super().__init__(n_tasks)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        return power_balance_weights(gram, power=1.0 / self.alpha)
