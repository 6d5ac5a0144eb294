"""The static leaderboard: pages rendered with jinja2 (autoescaped) from result files.

Reads result files only (through :mod:`mtlbench.site.data`); needs no torch. Pages use relative
links, inline CSS, inline SVG and one small inline script allowed by its hash in each page's
Content-Security-Policy, so the site works from ``file://`` or any static host and loads
nothing remote.

A page type is a :class:`~mtlbench.site.pages.PageType` plugin (``pages(data)`` yields its
pages) plus one template, found by the plugin registry in the modules of ``mtlbench/site/``.
A page with a ``title`` is listed on the index under "More pages".
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

import mtlbench
from mtlbench.core.errors import ResultError
from mtlbench.core.parallel import fork_map
from mtlbench.core.registry import Registry, discover
from mtlbench.site.data import SiteData, load_site_data
from mtlbench.site.format import fmt, sort_value, thousands
from mtlbench.site.pages import Page, PageType, index_page
from mtlbench.site.plots import PlotCache

TEMPLATES = Path(__file__).parent / "templates"
MANIFEST = ".mtlbench-site.json"  # the files the last build wrote (stale ones are removed)
PLOT_CACHE = ".plot-cache"  # SVGs of earlier builds, reused while their inputs are unchanged


def page_types() -> Registry[PageType]:
    """The site's page types, in the order their modules of mtlbench/site/ and classes are declared."""
    return discover("page type", PageType, packages=["mtlbench.site"])


@dataclass
class SiteReport:
    out: Path
    pages: list[Path]
    n_runs: int
    n_failed: int
    problems: list[str]
    timings: dict[str, float]  # seconds per build step: reading, each page type, index and downloads
    plots_drawn: int = 0
    plots_reused: int = 0  # taken from the plot cache of an earlier build


def pm(mean: Any, std: Any, digits: int = 2) -> str:
    """``mean ± std`` at ``digits`` decimals (a mean that rounds to zero shows no minus sign)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {std:.{digits}f}"


def script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    script = (TEMPLATES / "table.js").read_text(encoding="utf-8")
    env.filters["fmt"] = fmt
    env.filters["v"] = sort_value
    env.filters["thousands"] = thousands
    env.filters["num"] = lambda v: "–" if v is None or v != v else f"{v:.4g}"  # 4 significant digits; NaN as a dash
    env.globals.update(pm=pm, script=script, script_hash=script_hash(script), version=mtlbench.__version__)
    return env


def build_site(result_dirs: list[Path], out: Path, published: Path | None = None, workers: int = 1) -> SiteReport:
    """Render every page of every page type, the index and the downloads into ``out``; with
    ``published`` (a folder of published tables) also the reproduction page. ``workers`` > 1
    reads the result files and renders the run pages that changed in that many processes (where
    the platform can fork)."""
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = now - clock
        clock = now

    out = Path(out)
    data = load_site_data(result_dirs, cache=out / PARSE_CACHE, workers=workers)
    lap("read and aggregate results")
    data.plots = PlotCache(out / PLOT_CACHE)
    data.published = published
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    common = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sources": [str(d) for d in result_dirs]}
    written: list[Path] = []
    listed: list[Page] = []
    manifest = read_manifest(out, json.dumps(common["sources"]))
    on_disk = files_under(out)
    kept: dict[str, str] = {}
    for name, page_type in page_types().items():
        pages = list(page_type().pages(data))
        for page, path in zip(pages, render_all(env, pages, out, common, manifest, workers, on_disk)):
            if path is None:
                continue
            written.append(path)
            if page.key and page.path in manifest:
                kept[page.path] = manifest[page.path]
            if page.title:
                listed.append(page)
        lap(name.replace("-", " "))
    written.extend(write_downloads(data, out))
    index = render(env, index_page(data, listed), out, common)
    assert index is not None
    written.insert(0, index)
    written.append(write_file(out / PAGE_KEYS, json.dumps({"code": manifest.get("code"), "pages": kept})))
    remove_stale(out, written)
    data.plots.prune()
    lap("index and downloads")
    return SiteReport(
        out,
        [p for p in written if p.suffix == ".html"],
        len(data.runs),
        len(data.failed),
        data.loaded.problems,
        timings,
        data.plots.misses,
        data.plots.hits,
    )


PAGE_KEYS = ".mtlbench-pages.json"  # page -> key of the incremental pages the last build wrote
PARSE_CACHE = ".mtlbench-results.pickle"  # what was read from each result file (by path, size, mtime)


def site_code_key() -> str:
    """Digest of the site's code and templates: a change to them re-renders every page."""
    digest = hashlib.sha256(mtlbench.__version__.encode())
    for path in sorted([*Path(__file__).parent.glob("*.py"), *TEMPLATES.rglob("*")]):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def render(
    env: jinja2.Environment,
    page: Page,
    out: Path,
    common: dict[str, Any],
    manifest: dict[str, str] | None = None,
    on_disk: set[str] | None = None,
) -> Path | None:
    """Write ``page``; an incremental page whose key the manifest holds for an existing file is
    kept as it is. None when its result file can no longer be read (the page is left out)."""
    if page.text is not None:
        return write_file(out / page.path, page.text)
    target = out / page.path
    if manifest is not None and unchanged(page, manifest, on_disk or set()):
        return target
    context = page.context
    if page.lazy is not None:
        try:
            context = page.lazy()
        except ResultError:
            return None
    root = "../" * page.path.count("/")
    html = env.get_template(page.template).render(root=root, **common, **context)
    if page.key and manifest is not None:
        manifest[page.path] = page.key
    return write_file(target, html)


MIN_PARALLEL = 200  # pages to render before extra processes pay for themselves (~2 ms a page)


def unchanged(page: Page, manifest: dict[str, str], on_disk: set[str]) -> bool:
    """An incremental page the previous build wrote under the same key, still on disk."""
    return bool(page.key) and manifest.get(page.path) == page.key and page.path in on_disk


def files_under(out: Path) -> set[str]:
    """The files under ``out`` (relative, "/"-separated), listed once per build: a site holds a
    page per run, and a stat per page cost more than rendering a small page."""
    found: set[str] = set()
    for folder, _, names in os.walk(out):
        rel = os.path.relpath(folder, out).replace(os.sep, "/")
        found.update(n if rel == "." else f"{rel}/{n}" for n in names)
    return found


def render_all(
    env: jinja2.Environment,
    pages: list[Page],
    out: Path,
    common: dict[str, Any],
    manifest: dict[str, str],
    workers: int,
    on_disk: set[str],
) -> list[Path | None]:
    """:func:`render` for each page; the lazy pages that must be (re)rendered go to ``workers``
    forked processes when there are at least MIN_PARALLEL of them (:func:`fork_map`: the
    children inherit the loaded data, only page numbers and paths cross)."""
    todo = [i for i, p in enumerate(pages) if p.lazy is not None and not unchanged(p, manifest, on_disk)]
    done = dict(zip(todo, fork_map(lambda i: render(env, pages[i], out, common), todo, workers, MIN_PARALLEL)))
    paths = []
    for i, page in enumerate(pages):
        if i not in done:
            paths.append(render(env, page, out, common, manifest, on_disk))
            continue
        if done[i] is not None and page.key:
            manifest[page.path] = page.key
        paths.append(done[i])
    return paths


def read_manifest(out: Path, sources: str) -> dict[str, str]:
    """The incremental pages of the previous build into ``out`` (page -> key), {} when the site's
    code or the result folders (``sources``) changed since, or there is none; its "code" entry is
    this build's key of code and sources."""
    code = hashlib.sha256((site_code_key() + sources).encode()).hexdigest()[:16]
    try:
        saved = json.loads((out / PAGE_KEYS).read_text())
    except (OSError, ValueError):
        saved = {}
    pages = saved.get("pages", {}) if isinstance(saved, dict) and saved.get("code") == code else {}
    return {**(pages if isinstance(pages, dict) else {}), "code": code}


def write_file(path: Path, text: str) -> Path:
    """Write via a temporary file and rename: a reader never sees half a page. No fsync: the
    site is rebuilt from the result files, and thousands of fsyncs would dominate the build."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_downloads(data: SiteData, out: Path) -> list[Path]:
    """The aggregated table as ``summary.csv`` and ``summary.json``, the runs as ``runs.csv``."""
    if data.table.empty:
        return []
    table = data.table.drop(columns=[c for c in ("path",) if c in data.table])
    records = json.loads(table.to_json(orient="records"))  # NaN -> null
    return [
        write_file(out / "summary.csv", table.to_csv(index=False)),
        write_file(out / "summary.json", json.dumps({"schema": "mtlbench.summary/1", "rows": records}, indent=1) + "\n"),
        write_file(out / "runs.csv", data.runs.to_csv(index=False)),
    ]


def remove_stale(out: Path, written: list[Path]) -> None:
    """Delete the files the previous build wrote that this one did not (a removed run's page);
    never anything else in ``out``."""
    manifest = out / MANIFEST
    now = sorted(p.relative_to(out).as_posix() for p in written)
    try:
        before = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        before = []
    keep, root = set(now), out.resolve()
    for rel in before:
        if not isinstance(rel, str) or rel in keep:
            continue
        path = (out / rel).resolve()
        if root in path.parents and path.suffix in (".html", ".csv", ".json"):
            path.unlink(missing_ok=True)
    write_file(manifest, json.dumps({"files": now}, indent=0) + "\n")
