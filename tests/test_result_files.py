"""Result files sized for their readers (schema mtlbench.result/3): compact text, the per-layer
conflict series as packed columnar arrays that the schema checks, and `mtlbench migrate`, which
carries /2 files forward without changing a table."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from mtlbench.cli import main
from mtlbench.core.cell import RESULT_SCHEMA
from mtlbench.core.errors import ResultError
from mtlbench.core.files import iter_result_files
from mtlbench.core.packed import PackedError, decode, pack, unpack
from mtlbench.core.result import parse_result
from mtlbench.report.migrate import migrate_paths
from mtlbench.report.validate import known_from_project, validate_paths
from mtlbench.run.store import ResultStore
from mtlbench.site.data import load_site_data
from tests.conftest import REPO
from tests.real_results import real_results

V2 = REPO / "tests" / "data" / "results-v2"  # real /2 files: the default suite's vit-t4 runs, as committed before /3
V2_TABLES = REPO / "tests" / "data" / "results-v2-tables"  # their tables, written by the /2 code (see its README)


# --------------------------------------------------------------------------- packed arrays


def test_float32_blocks_give_back_values_recorded_at_six_digits():
    rows = [[-0.0686185, 0.298834, 0.0, 1.0], [-1.0, 1e-07, 123457.0, math.nan]]
    block = pack(rows, "float32")
    assert block["shape"] == [2, 4] and block["dtype"] == "float32"
    back = unpack(block, digits=6)
    assert back[0] == rows[0] and back[1][:3] == rows[1][:3] and math.isnan(back[1][3])


def test_count_blocks_hold_their_range_and_refuse_what_does_not_fit():
    assert unpack(pack([[0, 255], [3, 1]], "uint8")) == [[0, 255], [3, 1]]
    assert unpack(pack([[65535]], "uint16")) == [[65535]]
    assert unpack(pack([], "uint8")) == [] and pack([[], []], "float32")["shape"] == [2, 0]
    with pytest.raises(PackedError, match="does not fit uint8"):
        pack([[256]], "uint8")
    with pytest.raises(PackedError, match="rectangular"):
        pack([[1, 2], [3]], "uint8")
    with pytest.raises(PackedError, match="dtype 'int64' is not one of"):
        pack([[1]], "int64")


def test_decode_says_what_is_wrong_with_a_block():
    block = pack([[1, 2, 3]], "uint16")
    with pytest.raises(PackedError, match=r"4 base64 characters, expected 8 \(1 × 3 = 3 uint16 values"):
        decode("uint16", [1, 3], block["base64"][:4])
    with pytest.raises(PackedError, match="not valid base64"):
        decode("uint16", [1, 3], "!" + block["base64"][1:])


# --------------------------------------------------------------------------- the schema


@pytest.fixture(scope="module")
def ok_result(tmp_path_factory) -> dict:
    """A real multi-task result of this code (a pcgrad run of the session's tiny suite)."""
    results = real_results(tmp_path_factory)[1]
    path = next(p for p in iter_result_files([results]) if p.name.startswith("pcgrad__none__seed0"))
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith("}\n") and ": " not in text[:200], "written compactly, one line"
    return json.loads(text)


def test_a_real_result_carries_its_layer_series_packed(ok_result):
    c = ok_result["conflict"]
    series = c["layer_series"]
    assert set(series) == {"mean_cos", "conflicting_pairs"}
    assert series["mean_cos"]["shape"] == [c["n_samples"], len(c["layers"]["names"])]
    assert series["conflicting_pairs"]["dtype"] == "uint8"  # one pair: counts 0 or 1
    cos, pairs = unpack(series["mean_cos"], digits=6), unpack(series["conflicting_pairs"])
    # with one task pair, the pair conflicts on a layer exactly when the layer's cosine is negative
    assert all((k == 1) == (v < 0) for row_c, row_k in zip(cos, pairs) for v, k in zip(row_c, row_k))
    # the per-layer means are the means of the series
    for j, mean in enumerate(c["layers"]["p_pct"]):
        assert mean == pytest.approx(100 * sum(row[j] for row in pairs) / len(pairs), abs=1e-4)
    result, problems = parse_result(ok_result)
    assert result is not None and problems == []


def _broken(ok_result: dict, change) -> list[str]:
    data = json.loads(json.dumps(ok_result))
    change(data["conflict"]["layer_series"])
    strict = [str(p) for p in parse_result(data)[1]]
    lenient = [str(p) for p in parse_result(data, lenient=True)[1]]
    return strict, lenient


def test_the_schema_rejects_malformed_packed_arrays_clearly(ok_result):
    shape = ok_result["conflict"]["layer_series"]["mean_cos"]["shape"]
    n = shape[0] * shape[1]
    # truncated data: caught by every reader, from the text's length alone
    strict, lenient = _broken(ok_result, lambda s: s["mean_cos"].update(base64=s["mean_cos"]["base64"][:-8]))
    want = f"expected {4 * ((4 * n + 2) // 3)} ({shape[0]} × {shape[1]} = {n} float32 values"
    assert strict == lenient and len(strict) == 1
    assert strict[0].startswith("conflict.layer_series.mean_cos: ") and want in strict[0], strict
    # an unknown dtype, a float block of counts, shapes that disagree
    strict, _ = _broken(ok_result, lambda s: s["conflicting_pairs"].update(dtype="int8"))
    assert strict[0].startswith("conflict.layer_series.conflicting_pairs.dtype") and "'float32', 'uint8' or 'uint16'" in strict[0]
    strict, _ = _broken(ok_result, lambda s: s.update(conflicting_pairs=s["mean_cos"]))
    assert "conflicting_pairs has dtype float32, expected uint8 or uint16" in strict[0]
    strict, _ = _broken(ok_result, lambda s: s["conflicting_pairs"].update(shape=[shape[1], shape[0]]))
    assert "one shape [n_samples, layers]" in strict[0]
    # right length, wrong alphabet; a cosine of 2: only validate decodes the values
    strict, lenient = _broken(ok_result, lambda s: s["mean_cos"].update(base64="*" + s["mean_cos"]["base64"][1:]))
    assert "not valid base64" in strict[0] and lenient == []
    values = unpack(ok_result["conflict"]["layer_series"]["mean_cos"])
    values[0][0] = 2.0
    strict, lenient = _broken(ok_result, lambda s: s.update(mean_cos=pack(values, "float32")))
    assert "mean_cos holds 1 value(s) outside [-1, 1] (e.g. 2)" in strict[0] and lenient == []
    # a series of another number of samples than the run sampled
    other = pack(unpack(ok_result["conflict"]["layer_series"]["mean_cos"])[:-1], "float32")
    strict, _ = _broken(ok_result, lambda s: s.update(mean_cos=other, conflicting_pairs={**other, "dtype": "uint8",
                        "base64": pack([[0] * shape[1]] * (shape[0] - 1), "uint8")["base64"]}))  # fmt: skip
    assert strict == [f"conflict.layer_series.mean_cos.shape: {[shape[0] - 1, shape[1]]}, expected [n_samples, layers] = {shape}"]


# --------------------------------------------------------------------------- migration


def _tables(folder: Path) -> tuple[str, str]:
    """The site's downloadable tables of a folder (summary.csv and runs.csv, without paths)."""
    data = load_site_data([folder])
    return (data.table.drop(columns=["path"], errors="ignore").to_csv(index=False),
            data.runs.drop(columns=["path", "page"], errors="ignore").to_csv(index=False))  # fmt: skip


def test_migration_gives_the_tables_of_the_old_files_byte_for_byte(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(V2, folder)
    before = {p.relative_to(folder): json.loads(p.read_text()) for p in iter_result_files([folder])}
    assert {d["schema"] for d in before.values()} == {"mtlbench.result/2"}
    with pytest.raises(ResultError, match="mtlbench migrate"):
        load_site_data([folder])
    assert main(["migrate", str(folder)]) == 0
    summary, runs = _tables(folder)
    assert summary == (V2_TABLES / "summary.csv").read_text()
    assert runs == (V2_TABLES / "runs.csv").read_text()
    size = 0
    for rel, old in before.items():
        text = (folder / rel).read_text()
        new = json.loads(text)
        size += len(text)
        assert new["schema"] == RESULT_SCHEMA and text.count("\n") == 1
        # everything but the schema and the packed series is the same JSON value
        strip = lambda d: {**d, "schema": None, "conflict": {**(d.get("conflict") or {}), "layer_series": None}}  # noqa: E731
        assert strip(new) == strip(old)
        if old.get("conflict"):
            series, n_pairs = old["conflict"]["layer_series"], len(old["conflict"]["pairs"])
            assert unpack(new["conflict"]["layer_series"]["mean_cos"], digits=6) == series["mean_cos"]
            counts = unpack(new["conflict"]["layer_series"]["conflicting_pairs"])
            assert [[100 * k / n_pairs for k in row] for row in counts] == series["p_pct"]
    assert size < 0.55 * sum(p.stat().st_size for p in iter_result_files([V2]))
    # `validate` against this project's plugins accepts them (a later version bump of one of these
    # plugins makes its fixture files stale, which says nothing about the migration)
    report = validate_paths([folder], known_from_project(REPO))
    stale = ("task_version", "method_version", "mitigation_version")
    assert [str(p) for p in report.problems if not p.warning and p.field not in stale] == []
    again = migrate_paths([folder])
    assert again.migrated == [] and again.current == len(before) and again.problems == []


def test_migration_leaves_a_file_it_cannot_carry_exactly_and_says_why(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(V2, folder)
    path = next(p for p in iter_result_files([folder]) if p.name == "pcgrad__none__seed0.json")
    data = json.loads(path.read_text())
    data["conflict"]["layer_series"]["p_pct"][0][0] = 37.5  # one task pair: p% is 0 or 100
    path.write_text(json.dumps(data, indent=1))
    assert main(["migrate", str(folder), "--dry-run"]) == 1
    err = capsys.readouterr()
    assert "conflict.layer_series.p_pct: 37.5 is not 100 × k / 1 for a whole number of pairs k; left as it is" in err.err
    assert "would migrate 11 file(s)" in err.out
    assert all(json.loads(p.read_text())["schema"] == "mtlbench.result/2" for p in iter_result_files([folder]))
    assert main(["migrate", str(folder)]) == 1
    assert json.loads(path.read_text())["schema"] == "mtlbench.result/2"
    assert sum(json.loads(p.read_text())["schema"] == RESULT_SCHEMA for p in iter_result_files([folder])) == 11


def test_the_runner_never_reruns_results_a_migration_keeps(tmp_path):
    from mtlbench.core.cell import Cell

    folder = tmp_path / "results"
    shutil.copytree(V2, folder)
    path = next(p for p in iter_result_files([folder]) if p.name == "ew__none__seed0.json")
    cell = Cell(**json.loads(path.read_text())["cell"])
    with pytest.raises(ResultError, match=r"schema mtlbench.result/2, which this mtlbench migrates: run `mtlbench migrate"):
        ResultStore(folder).state(cell)
