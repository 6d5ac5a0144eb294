"""Every method with a LibMTL counterpart equals LibMTL's recorded output on every record of
tests/data/libmtl_method_outputs.json, run through the trainer's real per-step path (per-task
gradients by autograd, the method, clipping), within the tolerance the method declares in its
``matches`` — or differs for a reason it declares there (the reference's solver tolerance, its
random task order, a case it raises on), which the test asserts specifically."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlbench.api import ReferenceMatch, StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.plugin.solvers import NoSolutionError
from mtlbench.train.conflict import ConflictRecorder
from mtlbench.train.gradients import clip_grad_norm
from mtlbench.train.strategies import backward_update
from tests.conftest import REPO

RECORDS = json.loads((Path(__file__).parent / "data" / "libmtl_method_outputs.json").read_text())
METHODS = discover(REPO).methods
BY_REFERENCE = {m.name: (name, cls, m) for name, cls in METHODS.items() for m in cls.matches if m.source == "LibMTL"}


def _ids(r: dict[str, Any]) -> str:
    return f"{r['method']}-{r['case']}-{'-'.join(f'{k}={v}' for k, v in sorted(r['params'].items()) if k != 'rep_grad')}" + (
        "-offsets" if isinstance(r["loss_offset"], list) else "")


def _options(match: ReferenceMatch, params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for ours, theirs in match.options.items():
        key, values = theirs if isinstance(theirs, tuple) else (theirs, None)
        out[ours] = params[key] if values is None else values[params[key]]
    return out


def libmtl_orders(t: int, without_self: bool) -> list[list[int]]:
    """The task orders LibMTL draws with Python's random seeded 0: per task a shuffle of all
    tasks (PCGrad) or of the others (GradVac)."""
    random.seed(0)
    orders = []
    for i in range(t):
        idx = [j for j in range(t) if not (without_self and j == i)]
        random.shuffle(idx)
        orders.append(idx)
    return orders


def run_step(name: str, cls: type, options: dict[str, Any], record: dict[str, Any], monkeypatch) -> torch.Tensor:
    """One step of the trainer's path on the record's losses: the update written into theta.grad."""
    g = torch.tensor(record["G"], dtype=torch.float64)
    t, p = g.shape
    theta = torch.full((p,), float(record["theta_init"]), dtype=torch.float64, requires_grad=True)
    offset = torch.as_tensor(record["loss_offset"], dtype=torch.float64)
    losses = g @ theta + offset
    method = cls(n_tasks=t, **options).double()
    info = StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=torch.Generator().manual_seed(0),
                    layer_sizes=(p,))
    if name in ("pcgrad", "gradvac"):  # LibMTL's task orders, as positions in the list each method shuffles
        orders = libmtl_orders(t, without_self=name == "gradvac")
        if name == "gradvac":
            orders = [[[j for j in range(t) if j != i].index(x) for x in o] for i, o in enumerate(orders)]
        queue = iter(orders)
        monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.tensor(next(queue)))
    recorder = ConflictRecorder([f"t{i}" for i in range(t)], ["theta"], [p], every=0)
    backward_update(method, losses, info, [theta], [[] for _ in range(t)], recorder, ("loop", 1), None, None)
    clip_grad_norm([theta], method.max_norm)
    return theta.grad.detach()


@pytest.mark.parametrize("record", RECORDS, ids=_ids)
def test_method_equals_libmtl_on_the_record(record, monkeypatch):
    assert record["method"] in BY_REFERENCE, f"no method declares it matches LibMTL's {record['method']}"
    name, cls, match = BY_REFERENCE[record["method"]]
    options = _options(match, record["params"])
    known = match.known_cases.get(record["case"])
    if known is not None and known.startswith("no solution"):
        with pytest.raises(NoSolutionError):
            run_step(name, cls, options, record, monkeypatch)
        return
    update = run_step(name, cls, options, record, monkeypatch)
    assert torch.isfinite(update).all()
    if record["status"] != "ok" or known is not None:
        # LibMTL raised or differs on purpose: the method declares why (its value is pinned elsewhere)
        assert known, (name, record["case"], record.get("error"))
        return
    t = record["T"]
    expected = torch.tensor(record["update"], dtype=torch.float64) * (t if match.scale == "T" else float(match.scale))
    # compared as vectors: ||ours - theirs|| <= rtol ||theirs|| + atol
    error = float((update - expected).norm())
    assert error <= match.rtol * float(expected.norm()) + match.atol, (name, record["case"], update.tolist(), expected.tolist())


def test_every_libmtl_method_in_the_records_has_a_counterpart():
    assert {r["method"] for r in RECORDS} <= set(BY_REFERENCE)


def test_nash_mtl_solves_where_libmtl_stops_at_its_start(monkeypatch):
    record = next(r for r in RECORDS if r["method"] == "Nash_MTL" and r["case"] == "identical"
                  and r["params"]["max_norm"] == 0.0)
    name, cls, match = BY_REFERENCE["Nash_MTL"]
    update = run_step(name, cls, {"max_norm": 0.0}, record, monkeypatch)
    g = torch.tensor(record["G"][0], dtype=torch.float64)
    alpha = 1 / (2 * g @ g).sqrt()  # K alpha = 1/alpha with K = ||g||^2 (1 1; 1 1) and alpha_1 = alpha_2
    assert torch.allclose(update, 2 * alpha * g, rtol=1e-8)


def test_imtl_g_returns_the_gradient_where_libmtl_raises(monkeypatch):
    record = next(r for r in RECORDS if r["method"] == "IMTL" and r["case"] == "identical")
    assert record["status"] == "error"
    name, cls, match = BY_REFERENCE["IMTL"]
    update = run_step(name, cls, {}, record, monkeypatch)
    assert torch.allclose(update, torch.tensor(record["G"][0], dtype=torch.float64))


MULTI = json.loads((Path(__file__).parent / "data" / "libmtl_multisample_outputs.json").read_text())["records"]


@pytest.mark.parametrize("record", MULTI, ids=lambda r: f"{r['method']}-{r['case']}-seed{r['seed']}-"
                         + "-".join(f"{k}={v}" for k, v in sorted(r["params"].items())))
def test_multi_sample_method_equals_libmtl_over_two_steps(record):
    """SDMGrad and MoDo through the trainer's path on three batches per step, two steps on one
    method object (the weights carry over): the shared update, each head's gradient (summed or
    averaged over the batches as the reference) and the task weights."""
    assert record["method"] in BY_REFERENCE, f"no method declares it matches LibMTL's {record['method']}"
    name, cls, match = BY_REFERENCE[record["method"]]
    t, p = record["T"], record["P"]
    method = cls(n_tasks=t, **_options(match, record["params"])).double()
    theta = torch.zeros(p, dtype=torch.float64, requires_grad=True)
    heads = [torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in range(t)]
    recorder = ConflictRecorder([f"t{i}" for i in range(t)], ["theta"], [p], every=1)
    for step, expected in enumerate(record["steps"]):
        for x in (theta, *heads):
            x.grad = None
        g, a = (torch.tensor(record[k][step], dtype=torch.float64) for k in ("G", "a"))
        losses = [g[s] @ theta + a[s] * torch.stack(heads) for s in range(3)]
        info = StepInfo(step=step, epoch=0, steps_per_epoch=2, total_steps=2, layer_sizes=(p,))
        backward_update(method, losses, info, [theta], [[h] for h in heads], recorder, ("loop", 1), None, None)
        want = torch.tensor(expected["update"], dtype=torch.float64)
        assert float((theta.grad - want).norm()) <= match.rtol * float(want.norm()) + 1e-6, (name, step)
        head_grads = torch.stack([h.grad for h in heads])
        assert torch.allclose(head_grads, torch.tensor(expected["heads"], dtype=torch.float64), rtol=1e-12)
        state = method.w if name == "sdmgrad" else method.lambdas
        assert torch.allclose(state, torch.tensor(expected["weights"], dtype=torch.float64), atol=1e-5)
    # the conflict statistics saw the first batch's gradients
    summary = recorder.summary().model_dump()
    assert summary["n_samples"] == 2
    for step in range(2):
        g0 = torch.tensor(record["G"][step][0], dtype=torch.float64)
        cos = torch.nn.functional.cosine_similarity(g0[0], g0[1], dim=0)
        assert summary["series"]["pair_cos"][step][0] == pytest.approx(float(cos), abs=1e-4)


def test_every_multi_sample_method_has_records():
    from mtlbench.api import MultiSampleAggregator

    multi = {m.name for cls in METHODS.values() if issubclass(cls, MultiSampleAggregator) for m in cls.matches}
    assert multi == {r["method"] for r in MULTI} == {"SDMGrad", "MoDo"}
