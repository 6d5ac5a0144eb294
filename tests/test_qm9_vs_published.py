"""scripts/qm9_vs_published.py: the published QM9 tables' Δm per group of targets, recomputed
from their printed MAEs, and the rank agreement with runs here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mtlbench.report.published import dm_tolerance, read_table, recompute_dm
from tasks.qm9 import REPORT_GROUPS

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "leaderboard" / "published"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("qm9_vs_published", ROOT / "scripts" / "qm9_vs_published.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables(script):
    return [read_table(PUBLISHED / name) for name in script.TABLES]


GROUPS = {g: list(ts) for g, ts in REPORT_GROUPS.items()}


def test_all_targets_give_the_printed_dm(script, tables):
    paper = script.published_dm(tables, GROUPS)
    nash, famo = tables
    # every Table 6 row but STL, and FAMO from FAMO's Table 2 (Nash-MTL's table has no FAMO row)
    assert set(paper) == {r.ours for r in nash.rows if r.ours != "stl"} | {"famo"}
    for table in tables:
        for row in table.rows:
            if row.ours in paper and row.dm is not None and (table is nash or row.ours == "famo"):
                assert paper[row.ours]["all"] == pytest.approx(recompute_dm(table, row), abs=1e-9)
                assert abs(paper[row.ours]["all"] - float(row.dm)) <= dm_tolerance(table, row)


def test_a_group_by_hand(script, tables):
    # SI's thermochemistry targets in Nash-MTL's Table 6 (ZPVE, U0, U, H, G, c_v) against STL's
    si = [4.50, 55.3, 55.75, 55.82, 55.27, 0.112]
    stl = [4.53, 58.8, 64.2, 63.8, 66.2, 0.072]
    by_hand = 100 * np.mean([a / b - 1 for a, b in zip(si, stl)])
    assert script.published_dm(tables, GROUPS)["si"]["thermo"] == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(1.127, abs=1e-3)


def test_rank_agreement(script):
    rng = np.random.default_rng(0)
    paper = {m: float(i) for i, m in enumerate("abcdefg")}
    same = {m: np.array([v, v + 0.1, v - 0.1]) for m, v in paper.items()}
    text = script.rank_agreement(same, paper, rng, 2000)
    # the same order: rho 1; only 1 of 7! orders reaches it, so p is the permutation floor
    assert text.startswith("Spearman rho = +1.00 over 7 methods (permutation p = 0.00")
    assert "seed bootstrap [+1.00, +1.00]" in text
    reversed_ = {m: -v for m, v in same.items()}
    assert script.rank_agreement(reversed_, paper, rng, 2000).startswith(
        "Spearman rho = -1.00 over 7 methods (permutation p = 1.000"
    )
