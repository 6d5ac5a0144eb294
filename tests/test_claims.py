"""The claims page: each seed paper's claim judged on paired runs (a clearly positive, a clearly
negative and an inconclusive case), on hand-made runs and through the site."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mtlbench.core.cell import Cell
from mtlbench.mitigations.recon import Recon
from mtlbench.mitigations.sparse import SparseTraining
from mtlbench.report.claims import compare, declared_claims, judge
from mtlbench.report.stats import HELD, INCONCLUSIVE, NOT_HELD, holm
from mtlbench.site.build import build_site
from mtlbench.train.record import mitigation_info
from tests.real_results import copy_results, real_results

# what the result files of Recon and ST runs record of them
INFO = {"recon": mitigation_info(Recon), "st": mitigation_info(SparseTraining)}
CLAIMS = declared_claims(INFO)

SEEDS = range(5)


def _runs() -> pd.DataFrame:
    """Two methods with and without Recon and ST over 5 seeds. Recon: Δm 2 points better and
    p% 20 points lower for both (clear); ST: Δm 2 points worse for the gradient method, noise
    for the weighting one; ST's p% change is noise."""
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 3, len(SEEDS))  # shared by every cell of a seed
    rows = []
    effects = {
        ("a", "gradient"): {"none": (0.0, 0.0), "recon": (-2.0, -20.0), "st": (2.0, None)},
        ("b", "weighting"): {"none": (0.0, 0.0), "recon": (-2.0, -20.0), "st": (None, None)},
    }
    for (method, kind), by_mitigation in effects.items():
        for mitigation, (dm, dp) in by_mitigation.items():
            for s in SEEDS:
                noise_dm = rng.normal(0, 3.0) if dm is None else rng.normal(0, 0.1)
                noise_p = rng.normal(0, 15.0) if dp is None else rng.normal(0, 1.0)
                rows.append({
                    "suite": "s", "task": "t", "backbone": "bb", "method": method, "method_kind": kind,
                    "mitigation": mitigation, "mitigation_name": mitigation, "unmitigated": mitigation == "none",
                    "is_baseline": False, "seed": s, "dm_flat": 1.0 + seed_effect[s] + (dm or 0.0) + noise_dm,
                    "dm_task": 0.0, "p_pct_ref": 60.0 + 5 * seed_effect[s] + (dp or 0.0) + noise_p,
                    "step_time_ms": 10.0 * (1.5 if mitigation == "recon" else 1.0),
                    "params": 1000 + (50 if mitigation == "recon" else 0),
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_comparisons_are_paired_holm_corrected_and_judged():
    runs = _runs()
    found = compare(runs, {"t": "flat"})
    assert len(found) == 8  # 2 methods x 2 mitigations x 2 measures
    by = {(c.method, c.mitigation, c.measure): c for c in found}

    def series(m, g, col):
        return runs[(runs["method"] == m) & (runs["mitigation"] == g)].sort_values("seed")[col].to_numpy()

    raw = [stats.ttest_rel(series(c.method, c.mitigation, "dm_flat" if c.measure == "dm" else "p_pct_ref"),
                           series(c.method, "none", "dm_flat" if c.measure == "dm" else "p_pct_ref")).pvalue for c in found]
    assert [c.result.p for c in found] == pytest.approx(raw)
    assert [c.p_holm for c in found] == pytest.approx(holm(raw))  # one family per suite x task x backbone
    assert by[("a", "recon", "dm")].verdict == HELD and by[("a", "recon", "p_ref")].verdict == HELD
    assert by[("a", "st", "dm")].verdict == NOT_HELD  # clearly worse
    assert by[("b", "st", "dm")].verdict == INCONCLUSIVE  # noise of sd 3 over 5 seeds
    assert by[("a", "recon", "dm")].step_ratio == pytest.approx(1.5) and by[("a", "recon", "dm")].added_params == 50
    verdicts = {v.claim.text: v for v in judge(found, CLAIMS)}
    assert verdicts["Recon improves every method it is added to"].verdict == HELD
    assert verdicts["Recon reduces the occurrence of conflicting gradients"].verdict == HELD
    assert verdicts["Sparse training improves every method it is added to"].verdict == NOT_HELD  # fails for a
    assert verdicts["Sparse training improves every method it is added to"].counts == {
        "held": 0, "not held": 1, "inconclusive": 1}  # fmt: skip
    gradient_only = verdicts["Sparse training is compatible with gradient-manipulation methods: it improves them further"]
    assert gradient_only.verdict == NOT_HELD and sum(gradient_only.counts.values()) == 1
    assert verdicts["Sparse training reduces the occurrence of conflicting gradients"].verdict in (INCONCLUSIVE, NOT_HELD)
    assert {v.claim for v in judge(found, CLAIMS)} == set(CLAIMS) and len(CLAIMS) == 5


def test_two_variants_of_one_mitigation_are_judged_apart():
    """Recon under two labels in one suite (say a parameter budget and K layers): one helps
    every method, the other hurts one; each gets its own verdict, the page names the label."""
    runs = _runs()
    runs = runs[runs["mitigation"] != "st"]
    worse = runs[runs["mitigation"] == "recon"].copy()
    worse["mitigation"] = "recon-k25"
    worse.loc[worse["method"] == "a", "dm_flat"] += 4.0  # 2 points worse than none for a
    found = compare(pd.concat([runs, worse], ignore_index=True), {"t": "flat"})
    every = [v for v in judge(found, CLAIMS) if v.claim.text == "Recon improves every method it is added to"]
    assert {v.mitigation: v.verdict for v in every} == {"recon": HELD, "recon-k25": NOT_HELD}
    assert {v.mitigation: v.counts["held"] for v in every} == {"recon": 2, "recon-k25": 1}


def test_a_method_without_its_unmitigated_row_or_a_grid_without_mitigations_has_no_comparison():
    runs = _runs()
    assert compare(runs[runs["mitigation"] == "none"], {}) == []
    alone = compare(runs[~((runs["method"] == "b") & (runs["mitigation"] == "none"))], {})
    assert {c.method for c in alone} == {"a"}
    assert compare(runs.iloc[0:0], {}) == [] and judge([], CLAIMS) == []


def test_the_claims_page_judges_real_result_files(tmp_path_factory, tmp_path):
    """Real result files relabelled as Recon runs (2 Δm points better, as a Recon run would
    report it): the page lists every claim that has comparisons, with a verdict and the budget."""
    _, results = real_results(tmp_path_factory)

    def as_recon(data):
        for c in (data, data["cell"]):
            c["mitigation"] = c["mitigation_name"] = "recon"
        data["cell"]["mitigation_version"] = data["mitigation_version"] = "3"
        data["mitigation_info"] = INFO["recon"]  # Recon's declarations (claims), not none's role
        for split in data["metrics"].values():
            for k in split:
                split[k] = min(1.0, split[k] * 1.03)
        data["config_hash"] = Cell(**data["cell"]).config_hash

    keep = lambda r: r["method"] in ("stl", "ew", "pcgrad") and r["status"] == "ok"  # noqa: E731
    src = copy_results(results, tmp_path / "r", keep=keep)
    copy_results(results, tmp_path / "r", as_recon, keep=lambda r: r["method"] in ("ew", "pcgrad") and r["status"] == "ok")
    report = build_site([src], tmp_path / "site")
    assert not report.problems, report.problems
    page = (tmp_path / "site" / "claims.html").read_text()
    assert 'href="claims.html"' in (tmp_path / "site" / "index.html").read_text()
    assert "Recon improves every method it is added to" in page and "seeds 0, 1" in page
    verdicts = re.findall(r'<td class="l verdict ([a-z-]+)">', page)
    assert verdicts and set(verdicts) <= {"held", "not-held", "inconclusive"}
    assert "Sparse training improves every method" not in page.split("<h2>The claims</h2>")[1].split("</ul>")[1]
    empty = tmp_path / "plain"
    build_site([copy_results(results, tmp_path / "p", keep=keep)], empty)
    assert not (empty / "claims.html").exists()


def test_two_unmitigated_labels_of_one_method_compare_against_the_same_row_everywhere():
    """ew run twice without a mitigation (labels "none" and "plain", say a re-run under another
    label): the claims page, the group page's paired ΔΔm and the summary's dm_vs_none all take
    the row labelled by the mitigation's own name ("none") as the method's unmitigated row."""
    from mtlbench.report.aggregate import unmitigated_labels
    from mtlbench.report.ranking import _base_keys

    runs = _runs()
    runs = runs[runs["mitigation"] != "st"]
    other = runs[runs["mitigation"] == "none"].copy()
    other["mitigation"] = "plain"  # an unmitigated row under another label, 10 points worse
    other["dm_flat"] += 10.0
    both = pd.concat([runs, other], ignore_index=True)
    assert unmitigated_labels(both) == {"a": "none", "b": "none"}
    assert _base_keys(both)[("a", "recon")] == ("a", "none")
    found = {(c.method, c.mitigation, c.measure): c for c in compare(both, {"t": "flat"})}
    reference = {(c.method, c.mitigation, c.measure): c for c in compare(runs, {"t": "flat"})}
    assert set(found) == set(reference)  # "plain" is no mitigation: it is not compared
    for key, c in reference.items():
        assert found[key].result.diff == pytest.approx(c.result.diff)
    # the same rule without a row under the mitigation's own name: the first label in order
    assert unmitigated_labels(other) == {"a": "plain", "b": "plain"}


def test_a_project_mitigation_s_declared_claim_is_judged():
    """The claims come from what each mitigation declares (recorded in its results), so a
    project's own mitigation gets its claim judged like Recon's; a mitigation that declares no
    claim gets comparisons but no verdict."""
    runs = _runs()
    runs = runs[runs["mitigation"] != "st"].replace({"mitigation": {"recon": "mine"}, "mitigation_name": {"recon": "mine"}})
    info = {"mine": {"citation": "Doe 2026", "claims": [{"text": "Mine lowers Δm", "measure": "dm", "kinds": []}]}}
    verdicts = judge(compare(runs, {"t": "flat"}), declared_claims(info))
    assert [(v.claim.text, v.claim.source, v.mitigation, v.verdict) for v in verdicts] == [("Mine lowers Δm", "Doe 2026", "mine", HELD)]
    assert judge(compare(runs, {"t": "flat"}), declared_claims({"mine": {"claims": []}})) == []
