"""BayesAgg-MTL: gradient aggregation weighted by each task's uncertainty. A Gaussian posterior
over every task's last layer (given the shared representation) makes each task's gradient of
the representation a random variable; per sample and feature, the update is the
precision-weighted average of the tasks' mean gradients, so a task whose gradient is uncertain
in a direction counts less there.

Paper: Achituve, Diamant, Netzer, Chechik & Fetaya, Bayesian Uncertainty for Gradient
Aggregation in Multi-Task Learning, ICML 2024. Reference matched: the authors'
ssi-research/BayesAgg_MTL @ c36321d (``BayesAgg_MTL/BayesAggMTL.py``, driven as its trainers
drive it), for classification tasks with a categorical likelihood (``multiclass``):

- for ``warmup_epochs`` = 1 epoch (``--ls-epochs``) the model trains on the sum of the losses;
- at the first step of every later epoch, each task's posterior given the whole previous epoch's
  representations and labels (collected during that epoch, as the trainers do): a Laplace
  approximation at the current last layer W = [weight | bias] with the generalised Gauss-Newton
  Hessian and a N(0, ``gamma`` I) prior; every step, the posterior given the batch, with that
  full-data posterior as its prior;
- the moments of each task's gradient of the representation under its posterior, from
  ``mc_samples`` = 1024 samples of the last layer (``--num-mc-samples``); the variances are
  clamped at 1e-8 and raised to ``sqrt_power`` (``--sqrt-power-cls``);
- the representation's gradient: sum_t (Lambda_t mu_t) / sum_t Lambda_t / N, Lambda_t = 1 / the
  variance, per sample and feature; each head gets the plain gradient of its own loss.

Defaults: gamma 0.005 and sqrt_power 0.1 (the reference's UTKFace settings, its only
categorical task group); mc_samples 1024 and one warm-up epoch (its parser's defaults).

Checked against records of the reference code itself (tests/test_bayes_agg.py: its
``BayesAggMTL.backward`` over several steps and an epoch boundary, T = 2 and T = 3 tasks, a
representation narrower than the number of tasks, 3 and 4 classes): the representation's
gradient and the heads' gradients, with the reference's Monte-Carlo draws replayed.

Differences, declared: the generalised Gauss-Newton matrix is summed in its Kronecker form (the
reference forms every sample's Jacobian; the same sum in another order), the posterior samples
are one matrix product (the reference's distribution object multiplies the Cholesky factor with
each draw separately, broadcasting it to one copy per sample: 6.8 GB at 1024 samples of a
1,290-parameter head) and the sampled gradients are contracted over the classes in one product
(float32 rounding: see the test's tolerance); the full-data posterior's precision is recovered from its covariance's Cholesky
factor as the reference's distribution object does; random draws come from the method's seeded
generator; the reference's trainers also clip the heads' gradients to norm 50, which is not part
of the method and is not done here. Only categorical likelihoods are implemented (the
reference's Bernoulli and Gaussian task groups are not): a task must declare
``likelihoods = {...: "categorical"}`` and give each sub-task one linear head.

Cost per step, per task with C classes on D features: two Cholesky factorisations and one
inverse of a C(D + 1)-square matrix, and mc_samples samples of the last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlbench.api import LastLayerBayes, StepInfo
from mtlbench.plugin.solvers import NoSolutionError

GGN_CHUNK = 512  # samples per term of the Gauss-Newton sum


def safe_cholesky(a: Tensor) -> Tensor:
    """Cholesky factor of a symmetric positive semi-definite matrix, adding a growing jitter to
    the diagonal (1e-7 for float32, 1e-9 for float64, times 10 up to 25 times) while it fails."""
    factor, info = torch.linalg.cholesky_ex(a)
    if not info.any():
        return factor
    if torch.isnan(a).any():
        raise NoSolutionError("bayes-agg: a posterior precision matrix holds NaN")
    jitter = 1e-7 if a.dtype == torch.float32 else 1e-9
    a, previous = a.clone(), 0.0
    for i in range(25):
        new = jitter * 10**i
        a.diagonal().add_((info > 0) * (new - previous))
        previous = new
        factor, info = torch.linalg.cholesky_ex(a)
        if not info.any():
            return factor
    raise NoSolutionError(f"bayes-agg: a posterior precision matrix is not positive definite after a jitter of {previous:.1e}")


def categorical_posterior(
    features: Tensor, labels: Tensor, layer: Tensor, prior_mean: Tensor, prior_precision: Tensor
) -> tuple[Tensor, Tensor]:
    """Laplace approximation at ``layer`` (C, D + 1) of the posterior of a softmax last layer
    given (N, D) features and labels: (mean (C(D + 1),), Cholesky factor of its covariance)."""
    h = features.detach()
    w = layer[:, :-1].clone().requires_grad_()
    b = layer[:, -1].clone().requires_grad_()
    logits = F.linear(h, weight=w, bias=b)
    loss = F.cross_entropy(logits, labels, reduction="none").sum(dim=0)
    grad_w, grad_b = torch.autograd.grad(loss, [w, b])
    grad = torch.cat((grad_w, grad_b[:, None]), dim=1).flatten()
    ps = torch.softmax(logits.detach(), dim=-1)
    h_out = torch.diag_embed(ps) - torch.einsum("mk,mc->mck", ps, ps)
    phi = torch.cat((h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)), dim=1)
    c, d1 = layer.shape
    # the generalised Gauss-Newton matrix sum_m J_m^T H_m J_m, with J_m = I_C (x) phi_m, summed
    # over chunks of samples (a whole epoch's outer products phi_m phi_m^T would not fit at once)
    ggn = torch.zeros(c, d1, c, d1, dtype=h.dtype, device=h.device)
    for start in range(0, h.shape[0], GGN_CHUNK):
        part = slice(start, start + GGN_CHUNK)
        ggn += torch.einsum("mck,mp,mq->cpkq", h_out[part], phi[part], phi[part])
    ggn = ggn.reshape(c * d1, c * d1)
    a = (grad + prior_precision @ (layer.flatten() - prior_mean))[:, None]
    precision = ggn + prior_precision
    factor = safe_cholesky(precision)
    step = torch.cholesky_solve(a, factor).squeeze(-1)
    covariance = torch.cholesky_solve(torch.eye(c * d1, dtype=h.dtype, device=h.device), factor)
    return (layer.flatten() - step).detach(), safe_cholesky(covariance)


class BayesAgg(LastLayerBayes):
    name = "bayes-agg"
    version = "1"
    epoch_features: Tensor
    epoch_labels: Tensor
    full_features: Tensor
    full_labels: Tensor
    seen_epoch: Tensor
    description = "BayesAgg-MTL: representation gradients averaged by their precision under a Bayesian last layer"
    citation = (
        "Achituve, Diamant, Netzer, Chechik & Fetaya, Bayesian Uncertainty for Gradient Aggregation in Multi-Task Learning, "
        "ICML 2024"
    )
    reference = (
        "ssi-research/BayesAgg_MTL BayesAggMTL.py (multiclass: gamma 0.005, sqrt_power 0.1, 1024 samples, 1 warm-up epoch)"
    )

    def __init__(
        self, n_tasks: int, gamma: float = 0.005, sqrt_power: float = 0.1, mc_samples: int = 1024, warmup_epochs: int = 1
    ) -> None:
        super().__init__(n_tasks)
        if gamma <= 0 or sqrt_power < 0 or mc_samples < 2 or warmup_epochs < 1:
            raise ValueError(
                f"bayes-agg: need gamma > 0, sqrt_power >= 0, mc_samples >= 2 and warmup_epochs >= 1 (the first posterior "
                f"conditions on a whole epoch's representations); got {gamma}, {sqrt_power}, {mc_samples}, {warmup_epochs}"
            )
        self.gamma, self.sqrt_power, self.mc_samples, self.warmup_epochs = gamma, sqrt_power, mc_samples, warmup_epochs
        for name in ("epoch_features", "epoch_labels", "full_features", "full_labels"):
            self.register_buffer(name, torch.empty(0))
        self.register_buffer("seen_epoch", torch.tensor(-1))
        for i in range(n_tasks):  # the full-data posterior of each task: the batch posteriors' prior
            self.register_buffer(f"prior_mean_{i}", torch.empty(0))
            self.register_buffer(f"prior_precision_{i}", torch.empty(0))
        self._refresh = False

    def prior(self, task: int) -> tuple[Tensor, Tensor]:
        """Task ``task``'s full-data posterior (mean, precision): its batch posteriors' prior."""
        mean: Tensor = getattr(self, f"prior_mean_{task}")
        precision: Tensor = getattr(self, f"prior_precision_{task}")
        return mean, precision

    def noise(self, shape: tuple[int, ...], info: StepInfo) -> Tensor:
        """Standard normal draws for the posterior samples, from the method's generator."""
        return torch.empty(shape).normal_(generator=info.generator)

    def collect(self, features: Tensor, targets: list[Tensor], info: StepInfo) -> None:
        if info.epoch != int(self.seen_epoch):  # a new epoch: the finished one conditions its posteriors
            self.full_features, self.full_labels = self.epoch_features, self.epoch_labels
            self.epoch_features, self.epoch_labels = torch.empty(0), torch.empty(0)
            self.seen_epoch.fill_(info.epoch)
            self._refresh = True
        labels = torch.stack([t.reshape(-1) for t in targets], dim=1)
        if self.epoch_features.numel() == 0:
            self.epoch_features, self.epoch_labels = features.detach().clone(), labels.clone()
        else:
            self.epoch_features = torch.cat((self.epoch_features, features.detach()))
            self.epoch_labels = torch.cat((self.epoch_labels, labels))

    def representation_update(
        self, features: Tensor, layers: list[tuple[Tensor, Tensor]], targets: list[Tensor], likelihoods: list[str], info: StepInfo
    ) -> Tensor | None:
        if info.epoch < self.warmup_epochs:
            return None
        unsupported = sorted(set(likelihoods) - {"categorical"})
        if unsupported:
            raise ValueError(f"bayes-agg: likelihoods {unsupported} are not implemented; only categorical tasks are")
        stacked = [torch.cat((w, b[:, None]), dim=1).detach() for w, b in layers]
        if self._refresh or self.prior(0)[0].numel() == 0:
            if self.full_features.numel() == 0:
                raise RuntimeError("bayes-agg: no representations of a previous epoch to condition on")
            for i, layer in enumerate(stacked):
                n = layer.numel()
                prior_mean = torch.zeros(n, dtype=layer.dtype, device=layer.device)
                prior_precision = (1 / self.gamma) * torch.ones(n, dtype=layer.dtype, device=layer.device).diag()
                mean, scale = categorical_posterior(
                    self.full_features, self.full_labels[:, i], layer, prior_mean, prior_precision
                )
                setattr(self, f"prior_mean_{i}", mean)
                setattr(self, f"prior_precision_{i}", torch.cholesky_inverse(scale))  # as the distribution object's precision
            self._refresh = False
        h = features.detach()
        means, variances = [], []
        for i, (layer, labels) in enumerate(zip(stacked, targets)):
            mean, scale = categorical_posterior(h, labels, layer, *self.prior(i))
            eps = self.noise((self.mc_samples, mean.numel()), info).to(mean)
            samples = (mean + eps @ scale.T).view(self.mc_samples, *layer.shape)  # mean + L eps, one product
            w, b = samples[:, :, :-1], samples[:, :, -1]
            logits = torch.einsum("bd,sod->sbo", h, w) + b[:, None, :]
            d_out = torch.softmax(logits, dim=-1) - F.one_hot(labels, num_classes=layer.shape[0]).to(logits)
            d_h = torch.einsum("sod,sbo->sbd", w, d_out)  # each sample's gradient of the loss w.r.t. h
            e_g = d_h.mean(0)
            var = torch.clamp((d_h**2).mean(0) - e_g**2, min=1e-8) ** self.sqrt_power
            means.append(e_g)
            variances.append(var.detach())
        mu, precision = torch.stack(means, dim=1), 1 / torch.stack(variances, dim=1)
        return (1 / precision.sum(dim=1)) * (precision * mu).sum(1) / h.shape[0]
