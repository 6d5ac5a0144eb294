"""The pipeline's folders: every module of a stage imports only its own stage and earlier ones,
and reading results, aggregating and rendering the site work without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# The stages in data-flow order (docs/architecture.md). Modules of one tier may import each
# other; nothing imports a later tier.
TIERS = [
    {"core"},                          # records, schema, registry, errors (no torch)
    {"datasets", "plugin"},            # what plugins build on: splits, metrics, the extension points
    {"backbones", "mitigations"},      # built-in plugins
    {"grid"},                          # benchmark.toml -> cells
    {"train"},                         # one cell -> a result record
    {"run"},                           # cells -> result files (runner, executors, locks, status)
    {"report"},                        # result files -> tables (no torch)
    {"site"},                          # tables -> static site (no torch)
]
TOP = {"cli", "__main__", "api", "__init__"}  # entry points and the public plugin API


def _tier(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "mtlbench" or len(parts) < 2 or parts[1] in TOP:
        return None
    for i, tier in enumerate(TIERS):
        if parts[1] in tier:
            return i
    raise AssertionError(f"{module}: in no stage folder; add it to a stage of docs/architecture.md")


def _imports(path: Path, only_mtlbench: bool = True) -> list[str]:
    """The module's absolute imports, top-level or inside functions (``from a import b`` as ``a``
    and ``a.b``); mtlbench's only, unless ``only_mtlbench`` is False."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in found if m.startswith("mtlbench.") or not only_mtlbench]


def test_no_module_imports_a_later_stage():
    wrong = []
    for path in sorted((REPO / "mtlbench").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        own = _tier(module)
        if own is None:
            continue
        for imported in _imports(path):
            other = _tier(imported)
            if other is not None and other > own:
                wrong.append(f"{module} (stage {own}) imports {imported} (stage {other})")
    assert not wrong, "\n".join(wrong)


def test_reports_and_the_site_import_without_torch(tmp_path):
    """With torch made unimportable, the report and site stages (and the core records) import."""
    blocker = tmp_path / "torch.py"
    blocker.write_text("raise ImportError('torch is blocked in this test')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import mtlbench.core.cell, mtlbench.core.files, mtlbench.core.registry, mtlbench.core.spec; "
            "import mtlbench.report.aggregate, mtlbench.report.ranking, mtlbench.report.validate, mtlbench.report.published; "
            "import mtlbench.site.build, mtlbench.site.data, mtlbench.site.pages, mtlbench.site.plots, "
            "mtlbench.site.run_pages, mtlbench.site.paper_pages; "
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


PLUGIN_PACKAGES = ("mtlbench.backbones", "mtlbench.mitigations", "baselines", "tasks")


def _module_names(folder: str) -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(REPO).with_suffix("").parts), p) for p in sorted((REPO / "mtlbench" / folder).rglob("*.py"))]


def test_report_and_site_know_no_plugin_by_name():
    """Reports and the site learn what they show about a plugin from the result files (the
    plugin's declarations recorded there), never by importing the plugin."""
    wrong = [
        f"{module} imports {imported}"
        for folder in ("report", "site")
        for module, path in _module_names(folder)
        for imported in _imports(path, only_mtlbench=False)
        if imported.startswith(PLUGIN_PACKAGES)
    ]
    assert not wrong, "\n".join(wrong)


def test_mitigations_know_no_backbone():
    """A mitigation works through the model interface (mtlbench.plugin.model): a model declares
    its own surgery parts and initialisation, so a new backbone never means editing a mitigation."""
    wrong = [
        f"{module} imports {imported}"
        for module, path in _module_names("mitigations")
        for imported in _imports(path, only_mtlbench=False)
        if imported.startswith("mtlbench.backbones")
    ]
    assert not wrong, "\n".join(wrong)
    for module, path in _module_names("mitigations"):
        text = path.read_text(encoding="utf-8")
        assert "isinstance(model, SegNet" not in text and 'endswith("segnet")' not in text, module
