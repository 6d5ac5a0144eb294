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
from mtlbench.train.trainer import backward_update
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
