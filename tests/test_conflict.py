"""Conflict statistics from constructed gradients with known cosines."""

from __future__ import annotations

import math

import pytest
import torch

from mtlbench.core.packed import unpack
from mtlbench.train.conflict import (
    HISTOGRAMS, RECON_EDGES, ConflictRecorder, bin_labels, conflict_incidence, histogram, layer_cosines,
    pair_values, pairwise_cosines,
)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_known_angles_give_known_cosines_and_incidence():
    g = torch.tensor([unit(0), unit(100), unit(45)], dtype=torch.float64) * torch.tensor([[1.0], [3.0], [0.5]], dtype=torch.float64)  # norms do not matter
    cos = pairwise_cosines(g)
    pairs = pair_values(cos)  # (0,1), (0,2), (1,2)
    expected = [math.cos(math.radians(100)), math.cos(math.radians(45)), math.cos(math.radians(55))]
    assert pairs.tolist() == pytest.approx(expected, abs=1e-12)
    assert conflict_incidence(cos) == pytest.approx(100 / 3)
    # cos(100°) = -0.174 falls in Recon's last bin; the other two are non-conflicting
    assert histogram(pairs, RECON_EDGES) == [2, 0, 0, 0, 1]


def test_histogram_bin_edges():
    values = torch.tensor([1.0, 0.5, 0.0, -0.005, -0.01, -0.015, -0.02, -0.03, -0.5, -1.0], dtype=torch.float64)
    # [0,1] | [-0.01,0) | [-0.02,-0.01) | [-0.03,-0.02) | [-1,-0.03)
    assert histogram(values, RECON_EDGES) == [3, 2, 2, 1, 2]
    assert histogram(torch.tensor([-0.03], dtype=torch.float64), RECON_EDGES) == [0, 0, 0, 1, 0]
    assert histogram(torch.tensor([-0.0300001], dtype=torch.float64), RECON_EDGES) == [0, 0, 0, 0, 1]
    assert histogram(torch.tensor([-1.0], dtype=torch.float64), RECON_EDGES) == [0, 0, 0, 0, 1]
    assert bin_labels(RECON_EDGES)[0] == "[0, 1]" and bin_labels(RECON_EDGES)[1] == "[-0.01, 0)"
    assert sum(histogram(torch.linspace(-1, 1, 201, dtype=torch.float64), HISTOGRAMS["0.02"])) == 201


def test_zero_gradient_conflicts_with_nothing():
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    cos = pairwise_cosines(g)
    assert pair_values(cos).tolist() == [0.0, -1.0, 0.0]
    assert conflict_incidence(cos) == pytest.approx(100 / 3)


def test_all_pairs_conflicting_with_many_tasks():
    t = 5  # regular simplex directions: every pair has cosine -1/(T-1)
    g = torch.eye(t) - 1.0 / t
    cos = pairwise_cosines(g)
    assert pair_values(cos).tolist() == pytest.approx([-1 / (t - 1)] * (t * (t - 1) // 2))
    assert conflict_incidence(cos) == 100.0


def test_per_layer_cosines():
    # layer A (3 params): opposite; layer B (2 params): identical; whole vector: mixed
    g = torch.tensor([[1.0, 2.0, 0.0, 1.0, 1.0], [-1.0, -2.0, 0.0, 2.0, 2.0]])
    per_layer = layer_cosines(g, [3, 2])
    assert per_layer[:, 0].tolist() == pytest.approx([-1.0, 1.0])
    overall = pair_values(pairwise_cosines(g)).item()
    assert overall == pytest.approx((-5 + 4) / (math.sqrt(7) * math.sqrt(13)))


def test_recorder_averages_over_sampled_steps():
    rec = ConflictRecorder(["a", "b"], ["l1", "l2"], [1, 1], every=5)
    assert [s for s in range(12) if rec.due(s)] == [0, 5, 10]
    rec.record(0, torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))   # overall cos 0: no conflict; l1 conflicts
    rec.record(5, torch.tensor([[1.0, 1.0], [-1.0, -2.0]]))  # conflict everywhere
    s = rec.summary().model_dump()
    assert s["n_samples"] == 2 and s["pairs"] == [["a", "b"]]
    assert s["p_pct"] == 50.0
    assert s["series"]["p_pct"] == [0.0, 100.0]
    assert s["layers"]["names"] == ["l1", "l2"]
    assert s["layers"]["p_pct"] == [100.0, 50.0]
    assert s["histogram"]["counts"] == [1, 0, 0, 0, 1]
    series = s["layer_series"]
    assert unpack(series["mean_cos"], digits=6) == [[-1.0, 1.0], [-1.0, -1.0]]
    assert unpack(series["conflicting_pairs"]) == [[1, 0], [1, 1]] and series["conflicting_pairs"]["dtype"] == "uint8"


def test_recorder_is_silent_for_one_task_or_every_zero():
    assert not ConflictRecorder(["a"], [], [], every=1).due(0)
    assert not ConflictRecorder(["a", "b"], [], [], every=0).due(0)
    assert ConflictRecorder(["a", "b"], [], [], every=1).summary() is None
