"""The static site built from real result files: pages, tables, plots, downloads, escaping,
rebuilds, and no torch."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlbench.site import plots
from mtlbench.cli import main
from scipy import stats

from mtlbench.report.ranking import rank_table
from mtlbench.site.build import build_site, script_hash
from tests.conftest import REPO
from tests.real_results import copy_results, real_results

GROUP_PAGE = "site--multimnist--vit1.html"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return real_results(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def site(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    return out


def test_every_page_type_is_written_and_linked(site, results):
    runs = sorted(results.rglob("*.json"))
    assert len(runs) == 12  # 6 methods x 2 seeds, the `broken` ones failed
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert {"index.html", GROUP_PAGE} <= pages
    assert {f"methods/{m}.html" for m in ("stl", "ew", "pcgrad", "fixed", "broken")} <= pages
    run_pages = {p for p in pages if p.startswith("runs/")}
    assert len(run_pages) == len(runs)
    index = (site / "index.html").read_text()
    for target in [GROUP_PAGE, "methods/fixed.html", "methods/broken.html", "summary.csv", "summary.json", "runs.csv"]:
        assert f'href="{target}"' in index
    group = (site / GROUP_PAGE).read_text()
    linked = set(re.findall(r'href="\.\./(runs/[^"]+)"', (site / "methods/ew.html").read_text()))
    linked |= {m for m in re.findall(r'href="(runs/[^"]+)"', group)}
    linked |= set(re.findall(r'href="(runs/[^"]+)"', index))  # failed runs
    assert linked == run_pages
    failed = (site / "runs/site--multimnist--vit1--broken--none--seed0.html").read_text()
    assert "non-finite update" in failed and "Traceback" in failed


def test_group_table_has_the_declared_and_other_delta_m_significance_and_cost(site, results):
    page = (site / GROUP_PAGE).read_text()
    table = pd.read_csv(site / "summary.csv")
    assert set(table["dm_convention"]) == {"flat"}
    assert "Δm flat % " in page and "Δm per-task %" in page and "vs ew" in page
    for col in ("left accuracy <span class=\"dir\">↑</span>", "p% conflict", "step ms", "peak MB", "params"):
        assert col in page
    ew = table[table["method"] == "ew"].iloc[0]
    assert ew["vs_ew"] == "reference"
    pcgrad = table[table["method"] == "pcgrad"].iloc[0]
    runs = pd.read_csv(site / "runs.csv").sort_values("seed")
    a = runs[runs["method"] == "pcgrad"]["dm_flat"].to_numpy()
    b = runs[runs["method"] == "ew"]["dm_flat"].to_numpy()
    assert pcgrad["n_seeds"] == 2 and pcgrad["dm"] == pytest.approx(a.mean())
    assert pcgrad["vs_ew_n"] == 2 and pcgrad["vs_ew_diff"] == pytest.approx((a - b).mean())
    assert pcgrad["vs_ew_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)  # paired by seed
    tested = table["vs_ew_p"].dropna().sort_values().to_numpy()  # no mitigations here: the family is vs ew
    k = int(np.flatnonzero(tested == pcgrad["vs_ew_p"])[0])
    assert pcgrad["vs_ew_p_holm"] == pytest.approx(min(1.0, max((len(tested) - i) * tested[i] for i in range(k + 1))))
    assert sorted(table["rank"]) == sorted(table["dm"].rank(method="min", na_option="bottom").astype(int))
    rows = re.findall(r"<tr class=\"[a-z]*\" data-task", page)
    assert len(rows) == len(table) == 5


def test_downloads_agree(site):
    csv = pd.read_csv(site / "summary.csv")
    doc = json.loads((site / "summary.json").read_text())
    assert doc["schema"] == "mtlbench.summary/1" and len(doc["rows"]) == len(csv)
    by_method = {r["method"]: r for r in doc["rows"]}
    for _, row in csv.iterrows():
        j = by_method[row["method"]]
        assert j["rank"] == row["rank"]
        assert (j["dm"] is None and math.isnan(row["dm"])) or j["dm"] == pytest.approx(row["dm"])


def test_group_page_has_every_plot_with_the_fixed_weight_front(site, results):
    page = (site / GROUP_PAGE).read_text()
    svgs = re.findall(r"<svg class=\"plot\".*?</svg>", page, flags=re.S)
    titles = re.findall(r"<h2>([^<]+)</h2>\s*<figure>", page)
    assert titles == ["Trade-off between the two tasks", "Δm against conflict incidence", "Per-layer conflict", "Training curves"]
    assert len(svgs) == 4
    pareto, _, heatmap, _ = svgs
    assert "fixed-weight sweep" in pareto and "fixed-0.25" in pareto and "single-task models" in pareto
    assert "patch_embed.proj" in heatmap and "blocks.0.attn.qkv" in heatmap  # the trunk's layers
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "several inline SVGs on one page must not share ids"
    run = (site / "runs/site--multimnist--vit1--pcgrad--none--seed1.html").read_text()
    # the page carries its result file as it is (the page's script draws charts, conflict tables,
    # heatmaps and the rest from it; tests/test_browser.py checks the drawing); "<" only escaped
    block = re.search(r'<script type="application/json" id="run-result">(.*?)</script>', run, flags=re.S).group(1)
    assert "<" not in block and json.loads(block) == json.loads((results / "site/multimnist/vit1/pcgrad__none__seed1.json").read_text())
    r = json.loads(block)
    m = r["metric_info"]["left.acc"]
    assert (f'<td class="l">{m["label"]} <span class="dir">↑</span></td><td>{r["metrics"]["val"]["left.acc"]:.4f}</td>'
            f'<td>{r["metrics"]["test"]["left.acc"]:.4f}</td>') in run  # the metrics: rendered here, from the aggregated row


def test_pareto_without_fixed_runs_and_results_without_plugin_descriptions(results, tmp_path):
    def strip(data):
        data.pop("method_info", None)
        data.pop("task_info", None)

    old = copy_results(results, tmp_path / "old", strip, keep=lambda r: r["method_name"] != "fixed")
    report = build_site([old], tmp_path / "site")
    assert report.n_runs == 6 and not report.problems
    page = (tmp_path / "site" / GROUP_PAGE).read_text()
    assert "No fixed-weight runs" in page and "Trade-off between the two tasks" in page
    assert "do not carry its description" in (tmp_path / "site/methods/ew.html").read_text()


def test_strings_from_result_files_are_escaped_everywhere(results, tmp_path):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>$\\frac{1}{2}$'

    def inject(data):
        data["method"] = data["cell"]["method"] = evil
        data["provenance"]["device_name"] = evil
        data["metric_info"]["left.acc"]["label"] = evil
        data["conflict"]["layers"]["names"][0] = evil

    copy_results(results, tmp_path / "r", inject, keep=lambda r: r["method"] == "pcgrad")
    copy_results(results, tmp_path / "r", keep=lambda r: r["method"] == "stl")
    build_site([tmp_path / "r"], tmp_path / "site")
    pages = list((tmp_path / "site").rglob("*.html"))
    assert len(pages) == 1 + 1 + 2 + 4  # index, group, 2 methods, 4 runs
    for page in pages:
        html = page.read_text()
        assert "<script>alert" not in html and "<img src=x" not in html, page
        assert html.count("<script>") == 1  # the site's own table script
    group = next(p for p in pages if p.name == GROUP_PAGE).read_text()
    assert "&lt;script&gt;alert(" in group
    assert "&lt;script&gt;alert(" in re.search(r"<svg class=\"plot\".*?</svg>", group, flags=re.S).group(0)


def test_pages_load_nothing_remote_and_allow_only_their_own_script(site):
    script = (REPO / "mtlbench" / "site" / "templates" / "table.js").read_text()
    for page in site.rglob("*.html"):
        html = page.read_text()
        # links (a paper's address) may point anywhere; nothing may be fetched from elsewhere
        assert not re.search(r'(src|action)="(https?:)?//|<link |@import|url\((?!#)', html), page
        assert f"script-src '{script_hash(script)}'" in html
        assert "default-src 'none'" in html


def test_rebuild_removes_pages_of_removed_runs_only(results, tmp_path):
    src = copy_results(results, tmp_path / "r")
    out = tmp_path / "site"
    out.mkdir()
    (out / "notes.html").write_text("mine")
    build_site([src], out)
    gone = out / "runs/site--multimnist--vit1--ew--none--seed1.html"
    assert gone.exists()
    (src / "site/multimnist/vit1/ew__none__seed1.json").unlink()
    build_site([src], out)
    assert not gone.exists() and (out / "runs/site--multimnist--vit1--ew--none--seed0.html").exists()
    assert (out / "notes.html").read_text() == "mine"
    assert not list(out.rglob(".*.tmp"))


def test_rebuild_takes_unchanged_plots_from_the_cache(results, tmp_path):
    first = build_site([results], tmp_path / "site")
    cached = sorted(p.name for p in (tmp_path / "site" / ".plot-cache").glob("*.svg"))
    page = (tmp_path / "site" / GROUP_PAGE).read_text()
    again = build_site([results], tmp_path / "site")
    assert (first.plots_drawn, first.plots_reused, again.plots_drawn, again.plots_reused) == (4, 0, 0, 4)
    assert sorted(p.name for p in (tmp_path / "site" / ".plot-cache").glob("*.svg")) == cached
    strip = lambda html: re.sub(r"generated [^ ]+ ", "", html)  # noqa: E731
    assert strip((tmp_path / "site" / GROUP_PAGE).read_text()) == strip(page)


def test_rebuild_keeps_unchanged_run_pages_and_renders_changed_ones(results, tmp_path):
    """Run pages are incremental: a rebuild from the same files keeps them byte for byte (their
    result files are not read again); a changed result file, or a changed baseline that moves
    its Δm, renders the page again, and a fresh folder gets the same pages."""
    src = copy_results(results, tmp_path / "r")
    out = tmp_path / "site"
    build_site([src], out)
    page = out / "runs/site--multimnist--vit1--pcgrad--none--seed0.html"
    other = out / "runs/site--multimnist--vit1--ew--none--seed0.html"
    before, before_other = page.read_text(), other.read_text()
    build_site([src], out)
    assert page.read_text() == before and other.read_text() == before_other  # kept (even the generated time)
    path = src / "site/multimnist/vit1/pcgrad__none__seed0.json"
    data = json.loads(path.read_text())
    data["provenance"]["device_name"] = "edited"
    path.write_text(json.dumps(data))
    build_site([src], out)
    assert "edited" in page.read_text() and other.read_text() == before_other
    fresh = tmp_path / "fresh"
    build_site([src], fresh)
    strip = lambda html: re.sub(r"generated [^ ]+ ", "", html)  # noqa: E731
    assert strip((fresh / page.relative_to(out)).read_text()) == strip(page.read_text())


def test_rebuild_reads_only_changed_result_files(results, tmp_path, monkeypatch):
    """The build keeps what it read from each result file (by path, size and mtime): a rebuild
    from unchanged files parses none of them, and a changed file is read again."""
    import mtlbench.report.aggregate as aggregate

    src = copy_results(results, tmp_path / "r")
    out = tmp_path / "site"
    build_site([src], out)
    reads: list[str] = []
    real = aggregate.read_result
    monkeypatch.setattr(aggregate, "read_result", lambda p: (reads.append(p.name), real(p))[1])
    build_site([src], out)
    assert reads == []
    path = src / "site/multimnist/vit1/ew__none__seed0.json"
    data = json.loads(path.read_text())
    data["metrics"]["test"]["left.acc"] = 0.123456
    path.write_text(json.dumps(data))
    build_site([src], out)
    assert reads == ["ew__none__seed0.json"]
    runs = pd.read_csv(out / "runs.csv")
    mine = runs[(runs["method"] == "ew") & (runs["seed"] == 0)]
    assert mine["test:left.acc"].tolist() == [0.123456]


def test_a_site_read_and_rendered_by_two_forked_workers_equals_the_one_process_build(results, tmp_path, monkeypatch):
    import mtlbench.report.aggregate as aggregate
    import mtlbench.site.build as build

    monkeypatch.setattr(aggregate, "MIN_PARALLEL", 2)  # the real thresholds need hundreds of files
    monkeypatch.setattr(build, "MIN_PARALLEL", 2)
    one, two = build_site([results], tmp_path / "one"), build_site([results], tmp_path / "two", workers=2)
    assert (one.n_runs, one.n_failed, one.problems) == (two.n_runs, two.n_failed, two.problems) == (10, 2, [])
    strip = lambda html: re.sub(r"generated [^ ]+ ", "", html)  # noqa: E731
    names = sorted(p.relative_to(tmp_path / "one").as_posix() for p in one.pages)
    assert names == sorted(p.relative_to(tmp_path / "two").as_posix() for p in two.pages)
    for name in names:
        assert strip((tmp_path / "one" / name).read_text()) == strip((tmp_path / "two" / name).read_text()), name
    assert json.loads((tmp_path / "two" / build.PAGE_KEYS).read_text())["pages"]  # the workers' pages are recorded
    again = build_site([results], tmp_path / "two", workers=2)  # and kept by the next build
    assert [p.stat().st_mtime_ns for p in again.pages if "/runs/" in p.as_posix()] == [
        p.stat().st_mtime_ns for p in two.pages if "/runs/" in p.as_posix()
    ]


@pytest.mark.parametrize(
    "xs, ys, std",
    [
        ([0.5], [0.5], math.nan),  # one point: an axis of zero range
        ([1e-9, 2e-9, 3e-9], [1e9, 1e9, 1e9], 0.0),  # extreme scales, equal values
        ([-5.0, 0.0, 7.5], [0.1, 0.1, 0.2], 1e-3),
    ],
)
def test_scatter_plots_draw_every_point_inside_their_frame_on_hard_inputs(xs, ys, std):
    points = [plots.Point(f"m{i}", "gradient", "none", x, y, std, std) for i, (x, y) in enumerate(zip(xs, ys))]
    for svg in (
        plots.pareto_plot(points, points[:1], points[0], "a <b>", "c", True, False),
        plots.dm_conflict_plot(points, "flat"),
    ):
        assert svg.startswith('<svg class="plot"') and "<b>" not in svg and ' id="' not in svg
        width, height = (float(v) for v in re.search(r'viewBox="0 0 (\S+) (\S+)"', svg).groups())
        centres = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([-\d.]+)" cy="([-\d.]+)" r="4.5"', svg)]
        assert len(centres) == len(points) and all(0 <= x <= width and 0 <= y <= height for x, y in centres)
        assert "nan" not in svg.lower() and "inf" not in svg.lower().replace("info", "")


def test_heatmap_colours_follow_the_value_and_mark_missing_cells():
    svg = plots.layer_heatmap(["ew", "pcgrad"], ["conv1", "fc"], [[0.0, math.nan], [50.0, 100.0]])
    fills = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="16.0" fill="(#[0-9a-f]+)"><title>([^<]+)</title>', svg)
    assert fills == [
        (plots.REDS[0], "ew · conv1: 0.0"),
        (plots.MISSING, "ew · fc: no data"),
        (plots.REDS[4], "pcgrad · conv1: 50.0"),
        (plots.REDS[-1], "pcgrad · fc: 100.0"),
    ]


def test_plot_cache_returns_what_it_drew(tmp_path):
    points = [plots.Point(f"m{i}", "gradient", "none", 0.8 + i / 100, 0.9 - i / 90, 0.01, math.nan) for i in range(5)]
    jobs = [(plots.pareto_plot, (points, points[:k], None, "a", "b", True, False), {}) for k in range(3)]
    jobs.append((plots.curves_plot, ({"loss": {"ew": ([1, 2], [0.5, 0.4])}, "val": {}}, "epoch"), {}))
    serial = plots.PlotCache(None).draw_many(jobs)
    cache = plots.PlotCache(tmp_path / "cache")
    assert cache.draw_many(jobs) == serial and cache.misses == 4
    again = plots.PlotCache(tmp_path / "cache")
    assert again.draw_many(jobs) == serial and again.hits == 4  # read back from the cache


def test_empty_folder_and_malformed_results(results, tmp_path):
    (tmp_path / "r").mkdir()
    report = build_site([tmp_path / "r"], tmp_path / "site")
    assert report.n_runs == 0
    assert "No finished runs were found" in (tmp_path / "site" / "index.html").read_text()

    def damage(data):
        if data["method"] == "ew" and data["seed"] == 0:
            data["metrics"]["test"]["left.acc"] = "high"
        if data["method"] == "ew" and data["seed"] == 1:
            data.update(status="failed", metrics={})  # no reason, no traceback
            data.pop("reason")
            data.pop("traceback", None)

    src = copy_results(results, tmp_path / "bad", damage)
    report = build_site([src], tmp_path / "site2")
    assert report.n_runs == 8 and report.n_failed == 3
    assert len(report.problems) == 1 and "metrics.test.left.acc = 'high' is not a number" in report.problems[0]
    index = (tmp_path / "site2" / "index.html").read_text()
    assert "Unreadable result files (1)" in index and "ew__none__seed0.json" in index
    assert "no reason recorded" in (tmp_path / "site2/runs/site--multimnist--vit1--ew--none--seed1.html").read_text()


def test_building_the_site_never_imports_torch(results, tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'timm', 'torchvision', 'datasets'):\n"
        "            raise ImportError(f'{name} must not be imported to build the site')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from mtlbench.cli import main\n"
        f"code = main(['leaderboard', '--results', {str(results)!r}, '--out', {str(tmp_path / 'site')!r}])\n"
        "assert code == 0, code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')]\n"
        "print('built')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "built" in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "site" / GROUP_PAGE).exists()


# --------------------------------------------------------------------------- ranking


def test_rank_follows_the_declared_convention():
    # two rows whose flat and per-task Δm disagree in order; the task declares which one ranks
    table = pd.DataFrame({
        "suite": "s", "task": "t", "backbone": "b", "method": ["a", "ew"], "method_name": ["a", "ew"],
        "is_reference": [False, True], "unmitigated": True,
        "mitigation": "none", "mitigation_name": "none", "dm_flat": [1.0, 2.0], "dm_flat_std": 0.1, "dm_task": [3.0, -1.0], "dm_task_std": 0.2,
    })
    runs = pd.DataFrame({
        "suite": "s", "task": "t", "backbone": "b", "method": ["a", "a", "ew", "ew"], "mitigation": "none",
        "seed": [0, 1, 0, 1], "dm_flat": [0.9, 1.1, 1.9, 2.1], "dm_task": [2.9, 3.1, -1.1, -0.9],
    })
    flat = rank_table(table, runs, {"t": "flat"}).set_index("method")
    per_task = rank_table(table, runs, {"t": "task"}).set_index("method")
    assert flat.loc["a", "rank"] == 1 and per_task.loc["a", "rank"] == 2
    assert per_task.loc["a", "dm"] == 3.0 and per_task.loc["a", "dm_other"] == 1.0
    assert flat.loc["a", "vs_ew"] == "better" and per_task.loc["a", "vs_ew"] == "worse"
    assert flat.loc["ew", "vs_ew"] == "reference"
    with pytest.raises(ValueError, match="unknown Δm convention"):
        rank_table(table, runs, {"t": "mean"})


def test_the_parse_cache_is_keyed_on_what_the_caller_keeps():
    """The parse cache stores each file's ``visit`` value: a change to the module that defines
    ``visit`` (site/data.py's payload grew when mitigations' declarations were added) must drop it."""
    from mtlbench.report.aggregate import _parse_cache_version

    def visit(path, result):
        return result.task

    assert _parse_cache_version(visit) != _parse_cache_version() == _parse_cache_version(None)


def test_delta_m_without_baseline_runs_says_how_to_get_them(results, tmp_path):
    """A site built from new runs alone (no ``stl``) shows Δm as missing and says which runs
    are missing and the two ways to bring them: run them, or read the accepted results too."""
    plain = copy_results(results, tmp_path / "new", keep=lambda r: r["method_name"] != "stl")
    build_site([plain], tmp_path / "site")
    page = (tmp_path / "site" / GROUP_PAGE).read_text()
    assert "Δm cannot be computed" in page and "mtlbench run --suite site --only method=stl" in page
    assert "mtlbench leaderboard --results results --results leaderboard/results" in page
    index = (tmp_path / "site" / "index.html").read_text()
    assert "no <code>stl</code> runs: Δm needs them" in index and f'href="{GROUP_PAGE}"' in index


def test_step_time_compares_across_hosts_as_a_ratio_to_the_host_reference(results, tmp_path):
    """The same runs as if a 2.5x slower machine had made them: raw milliseconds differ 2.5x,
    the step time over the host's own EW step does not; a page mixing two machines says so."""
    from mtlbench.report.aggregate import load_results

    def slower(data):
        data["provenance"]["hostname"] = "slow-host"
        for key in ("step_time_ms", "reference_step_ms"):
            if data["cost"].get(key) is not None:
                data["cost"][key] *= 2.5

    ok = lambda r: r["status"] == "ok"  # noqa: E731
    fast = load_results([copy_results(results, tmp_path / "fast", keep=ok)]).runs.set_index(["method", "seed"]).sort_index()
    slow = load_results([copy_results(results, tmp_path / "slow", slower, keep=ok)]).runs.set_index(["method", "seed"]).sort_index()
    assert len(fast) >= 8 and fast["step_x_ref"].notna().all() and list(fast.index) == list(slow.index)
    assert np.allclose(slow["step_time_ms"], 2.5 * fast["step_time_ms"])
    assert np.allclose(slow["step_x_ref"], fast["step_x_ref"])  # comparable across hosts
    ew = fast.loc["ew", "step_x_ref"]
    # EW over the host's EW step: about 1, but two timings on a shared machine (3.6 seen with
    # other processes on both cores); the bound catches a unit slip (x1000), not timing noise
    assert ((ew > 0.1) & (ew < 10.0)).all()

    mixed = copy_results(results, tmp_path / "mixed", lambda d: slower(d) if d["seed"] == 1 else None, keep=ok)
    build_site([mixed], tmp_path / "site")
    page = (tmp_path / "site" / GROUP_PAGE).read_text()
    assert "step ms (2 hosts)" in page and "step × EW" in page
