"""Published tables: every stored Δm is recomputed from the stored values (within the rounding of
the printed digits), the rows whose printed Δm does not follow from their printed values are
listed, bad files get clear errors, and the reproduction view lines up published and ours."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mtlbench.core.result import MetricDecl
from mtlbench.core.errors import ConfigError
from mtlbench.report.published import check_table, dm_tolerance, load_published, read_table, recompute_dm, reproduction_table
from tests.conftest import REPO

TABLES = load_published(REPO / "leaderboard" / "published")
CHECKS = [c for t in TABLES for c in check_table(t)]

# Rows whose printed Δm does not follow from their printed values under the paper's own formula.
INCONSISTENT = {
    ("shi2023-recon-table5-nyuv2", m) for m in (
        "Cross-Stitch", "Joint-train", "Joint-train w/ Recon", "MGDA", "MGDA w/ Recon", "Graddrop", "Graddrop w/ Recon",
        "PCGrad", "PCGrad w/ Recon", "CAGrad", "CAGrad w/ Recon")
} | {
    ("navon2022-nash-mtl-table2-nyuv2", "IMTL-G"),
    ("liu2023-famo-table1-nyuv2", "IMTL-G"),  # FAMO repeats Nash-MTL's inconsistent -0.76
    ("zhang2024-st-table7-nyuv2", "IMTL-G"),
    ("zhang2024-st-table12-cityscapes", "PCGrad"),
}


def test_the_stored_tables():
    assert {t.id for t in TABLES} == {
        "shi2023-recon-table1-multifashion", "shi2023-recon-table2-celeba", "shi2023-recon-table3-cityscapes",
        "shi2023-recon-table5-nyuv2", "navon2022-nash-mtl-table2-nyuv2", "navon2022-nash-mtl-table3-cityscapes",
        "zhang2024-st-table7-nyuv2", "zhang2024-st-table12-cityscapes", "zhang2024-st-table3-celeba",
        "liu2021-cagrad-table1-nyuv2", "liu2021-cagrad-table2-cityscapes", "liu2023-famo-table1-nyuv2",
        "liu2023-famo-table3-cityscapes", "liu2023-famo-table2-qm9", "navon2022-nash-mtl-table6-qm9",
        "lin2023-libmtl-nyuv2-reruns",
    }
    recomputed = [c for c in CHECKS if c.recomputed is not None]
    # 87 rows of the first nine tables; CAGrad 6 + 6, FAMO 12 + 12 + 11, Nash-MTL QM9 10 (LibMTL's prints no Δm)
    assert len(recomputed) == 87 + 57 and len(CHECKS) == 87 + 57 + 8 + 14  # + Recon CelebA and ST CelebA (Δm only)


def test_famo_s_cityscapes_ls_row_is_flagged_as_a_copy_of_its_si_row():
    famo = next(t for t in TABLES if t.id == "liu2023-famo-table3-cityscapes")
    ls, si = (next(r for r in famo.rows if r.method == m) for m in ("LS", "SI"))
    assert ls.values == si.values and ls.dm == si.dm and "copy of the SI row" in ls.note
    nash = next(t for t in TABLES if t.id == "navon2022-nash-mtl-table3-cityscapes")
    assert next(r for r in nash.rows if r.method == "LS").values != ls.values


def test_values_are_kept_as_printed():
    nash = next(t for t in TABLES if t.id == "navon2022-nash-mtl-table6-qm9")
    stl = nash.baseline_row
    assert list(stl.values.values())[:3] == ["0.067", "0.181", "60.57"]
    libmtl = next(t for t in TABLES if t.id == "lin2023-libmtl-nyuv2-reruns")
    ew = next(r for r in libmtl.rows if r.method == "EW (as cited)")
    assert ew.values["normal.within_22.5"] == "47.50"  # the trailing zero as printed
    assert libmtl.baseline == "" and all(r.dm is None for r in libmtl.rows)


@pytest.mark.parametrize("check", [c for c in CHECKS if c.recomputed is not None], ids=lambda c: f"{c.table}:{c.method}")
def test_printed_delta_m_follows_from_the_printed_values(check):
    expected_consistent = (check.table, check.method) not in INCONSISTENT
    assert check.dm_check == ("recompute" if expected_consistent else "inconsistent")
    if expected_consistent:
        assert abs(check.recomputed - check.published) <= check.tolerance
    else:  # the flag is honest: outside what rounding explains
        assert abs(check.recomputed - check.published) > check.tolerance


def test_rows_that_cannot_be_recomputed_say_why():
    for c in CHECKS:
        if c.recomputed is None:
            assert c.dm_check == "not_recomputable" and c.note


def test_delta_m_is_undefined_against_a_zero_baseline():
    from mtlbench.report.aggregate import delta_m

    info = {"a.f1": MetricDecl(task="a", higher_is_better=True), "b.f1": MetricDecl(task="b", higher_is_better=True)}
    assert math.isnan(delta_m({"a.f1": 0.4, "b.f1": 0.5}, {"a.f1": 0.0, "b.f1": 0.5}, info, "task"))


def test_recon_convention_and_sign_by_hand():
    table = next(t for t in TABLES if t.id == "shi2023-recon-table1-multifashion")
    row = next(r for r in table.rows if r.method == "Joint-train")
    # per-task convention, printed as an improvement: ((97.42-98.37)/98.37 + (88.82-89.63)/89.63) / 2 * 100
    assert recompute_dm(table, row) == pytest.approx(50 * ((97.42 - 98.37) / 98.37 + (88.82 - 89.63) / 89.63))
    # rounding: ±0.005 on each value, ±0.005 on the printed Δm
    h = 0.005
    bound = 50 * ((h + 97.42 / 98.37 * h) / 98.37 + (h + 88.82 / 89.63 * h) / 89.63) + 0.005
    assert dm_tolerance(table, row) == pytest.approx(bound)


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "t.toml"
    reproduce = "" if body.startswith("reproduce") else 'reproduce = { task = "toy", suite = "s", backbone = "b" }\n'
    path.write_text('paper = "P"\ntable = "T1"\ndataset = "D"\nbackbone = "B"\nconvention = "flat"\n'
                    'dm_sign = "drop"\nbaseline = "STL"\n' + reproduce +
                    'metrics = [{ key = "a.acc", task = "a", higher_is_better = true, scale = 100 }]\n' + body)
    return path


@pytest.mark.parametrize("body, message", [
    ('rows = [{ method = "STL", values = [98.3] }]', r"t\.toml: rows\[0\]: value 98\.3: write numbers as printed, in quotes"),
    ('rows = [{ method = "STL", values = ["1", "2"] }]', r"t\.toml: rows\[0\]: needs method .* 1 strings, one per metric"),
    ('rows = [{ method = "EW", values = ["1"] }]', r"t\.toml: baseline: 'STL' is not one of the rows \(EW\)"),
    ('rows = [{ method = "STL", values = ["1"], dm_check = "inconsistent" }]', r"rows\[0\]\.note: dm_check = 'inconsistent' needs a note"),
    ('rows = [{ method = "STL", values = ["1"], colour = "red" }]', r"rows\[0\]: unknown key 'colour'"),
    ('reproduce = { task = "toy" }\nrows = [{ method = "STL", values = ["1"] }]',
     r"t\.toml: reproduce: required: \{ task = .*suite = .*backbone = .*the preset whose runs"),
])
def test_bad_table_files_are_named(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        read_table(write(tmp_path, body))


def test_reproduction_view_puts_published_and_ours_side_by_side(tmp_path):
    table = read_table(write(tmp_path, 'reproduce = { task = "toy", suite = "s", backbone = "b" }\nrows = [\n'
                             '{ method = "STL", ours = "stl", values = ["80.0"] },\n'
                             '{ method = "EW", ours = "ew", values = ["84.0"], dm = "-5.00" },\n'
                             '{ method = "Other", values = ["70.0"], dm = "12.50" },\n]\n'))
    summary = pd.DataFrame([
        {"suite": "s", "task": "toy", "task_version": "1", "backbone": "b", "method": m, "mitigation": "none",
         "is_baseline": m == "stl", "unmitigated": True, "n_seeds": 3, "test:a.acc": v, "test:a.acc:std": 0.01}
        for m, v in (("stl", 0.75), ("ew", 0.78))
    ] + [{"suite": "other", "task": "toy", "task_version": "1", "backbone": "b", "method": "ew", "mitigation": "none",
          "n_seeds": 1, "test:a.acc": 0.1, "test:a.acc:std": float("nan")},
         # the same suite on another backbone: its baseline must not pair with this table's rows
         {"suite": "s", "task": "toy", "task_version": "1", "backbone": "c", "method": "stl", "mitigation": "none",
          "is_baseline": True, "unmitigated": True, "n_seeds": 3, "test:a.acc": 0.5, "test:a.acc:std": 0.01}])
    view = reproduction_table([table], summary, {("toy", "1"): {"a.acc": MetricDecl(task="a", higher_is_better=True)}})
    ew = view[view["method"] == "EW"].set_index("metric")
    assert ew.loc["a.acc", "published"] == 84.0 and ew.loc["a.acc", "ours"] == pytest.approx(78.0)
    assert ew.loc["a.acc", "difference"] == pytest.approx(-6.0)
    assert ew.loc["Δm % (flat, ↓)", "ours"] == pytest.approx(-100 * (0.78 - 0.75) / 0.75)
    assert ew.loc["Δm % (flat, ↓)", "published"] == -5.0 and ew["n_seeds"].iloc[0] == 3
    other = view[view["method"] == "Other"]
    assert other["ours"].isna().all() and (other["ours_method"] == "").all()
