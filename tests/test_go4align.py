"""GO4Align against the authors' GO4ALIGN class on recorded loss sequences
(tests/data/go4align_outputs.json), its exact grouping against brute force, and its errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from mtlbench.api import StepInfo
from mtlbench.grid.plugins import discover
from tests.conftest import REPO

RECORDS = json.loads((Path(__file__).parent / "data" / "go4align_outputs.json").read_text())
GO4Align = discover(REPO).methods["go4align"]
group_means = __import__("baselines.go4align", fromlist=["group_means"]).group_means
INFO = StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=torch.Generator().manual_seed(0))


def _sse(x: torch.Tensor, w: torch.Tensor) -> float:
    return float(((x.double() - w.double()) ** 2).sum())


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{r['case']}-K{r['num_groups']}-eta{r['robust_step_size']:g}")
def test_matches_the_reference_records(record):
    """Indicators and loss equal the reference's at every step (float32, as both run); weights
    equal where the reference's k-means reached the optimal grouping, and where it did not, ours
    has the smaller within-group sum of squares (the declared difference); where the reference
    never terminates (tied weights), ours returns the optimal grouping."""
    method = GO4Align(record["T"], num_groups=record["num_groups"], robust_step_size=record["robust_step_size"])
    local_optima = 0
    for step in record["steps"]:
        losses = torch.tensor(step["losses"], dtype=torch.float32, requires_grad=True)
        before = method.probs.clone()
        w = method.weights(losses.detach(), INFO)
        loss = method.loss(losses, INFO)
        (grad,) = torch.autograd.grad(loss, losses)
        assert torch.equal(grad, w)  # the weights are the loss's gradient weights
        p = before * torch.exp(-record["robust_step_size"] * losses.detach())
        x = losses.detach().sum() / losses.detach() * (p / p.sum())
        if "error" in step:
            assert step["error"] == "does not terminate" and torch.isfinite(w).all()
            assert torch.allclose(w, group_means(x, record["num_groups"]))
            continue
        assert torch.allclose(method.probs.double(), torch.tensor(step["adv_probs"], dtype=torch.float64), rtol=1e-5, atol=1e-12)
        theirs = torch.tensor(step["weights"], dtype=torch.float64)
        if record["num_groups"] == 1 or _sse(x, theirs) <= _sse(x, w) * (1 + 1e-4) + 1e-10:
            assert torch.allclose(w.double(), theirs, rtol=2e-5, atol=1e-12), (w, theirs)
            assert float(loss.detach()) == pytest.approx(step["loss"], rel=2e-5)
        else:
            local_optima += 1
            assert _sse(x, w) < _sse(x, theirs)
    assert local_optima <= len(record["steps"])


def test_the_reference_records_cover_what_the_declared_differences_name():
    """The records hold steps where the reference never terminates (ties) and the option sets
    used: one and several groups, the default and a large step size, T from 2 to 40."""
    assert any("error" in s for r in RECORDS for s in r["steps"])
    assert {r["num_groups"] for r in RECORDS} == {1, 2, 3} and {r["robust_step_size"] for r in RECORDS} == {1e-4, 0.5}
    assert {r["T"] for r in RECORDS} >= {2, 3, 5, 11, 40}


def _brute_force(x: list[float], k: int) -> float:
    """The smallest within-group sum of squares over every partition into at most k groups."""
    best = float("inf")
    for labels in itertools.product(range(k), repeat=len(x)):
        total = 0.0
        for g in set(labels):
            members = [v for v, lab in zip(x, labels) if lab == g]
            m = sum(members) / len(members)
            total += sum((v - m) ** 2 for v in members)
        best = min(best, total)
    return best


def test_grouping_is_the_optimal_one_and_ties_share_a_group():
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        t = 2 + trial % 5
        x = torch.exp(torch.randn(t, generator=gen, dtype=torch.float64) * 2)
        if trial % 4 == 0:
            x[1] = x[0]  # a tie
        for k in range(1, t + 1):
            w = group_means(x, k)
            assert _sse(x, w) == pytest.approx(_brute_force(x.tolist(), k), rel=1e-9, abs=1e-12)
            assert len(set(w.tolist())) <= k
            if trial % 4 == 0:
                assert w[0] == w[1]
            perm = torch.randperm(t, generator=gen)
            assert torch.equal(group_means(x[perm], k), w[perm])  # permuting the tasks permutes the weights


def test_analytic_cases():
    """One group per task: w_t L_t = p_t sum(L) (each task's share of the weighted loss is its
    indicator's); one group: every task the mean; eta = 0 keeps the indicators uniform."""
    losses = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    per_task = GO4Align(3, num_groups=3, robust_step_size=0.0).double()
    w = per_task.weights(losses, INFO)
    assert torch.allclose(w * losses, torch.full((3,), losses.sum().item() / 3, dtype=torch.float64))
    one = GO4Align(3, robust_step_size=0.0).double().weights(losses, INFO)
    assert torch.allclose(one, torch.full((3,), float((losses.sum() / losses / 3).mean()), dtype=torch.float64))
    m = GO4Align(2, num_groups=2, robust_step_size=1.0).double()
    m.loss(torch.tensor([1.0, 3.0], dtype=torch.float64), INFO)
    e = torch.exp(-torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert torch.allclose(m.probs, e / e.sum())  # the higher-risk task's indicator falls
    m.weights(torch.tensor([1.0, 1.0], dtype=torch.float64), INFO)
    assert torch.allclose(m.probs, e / e.sum())  # weights() does not move them


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"go4align: task loss\(es\) \[1\] = \[0\.0\].*finite and > 0"):
        GO4Align(2).weights(torch.tensor([1.0, 0.0]), INFO)
    with pytest.raises(ValueError, match=r"task loss\(es\) \[0\]"):
        GO4Align(2).weights(torch.tensor([float("inf"), 1.0]), INFO)
    with pytest.raises(ValueError, match=r"num_groups=3 must be between 1 and the number of tasks \(2\)"):
        GO4Align(2, num_groups=3)
    with pytest.raises(ValueError, match="robust_step_size"):
        GO4Align(2, robust_step_size=-1.0)
