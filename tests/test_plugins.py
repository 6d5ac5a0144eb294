"""The one plugin mechanism: a project's own mitigation is one file in `mitigations/`, found,
listed, checked and run like the built-in ones; plugin declarations are checked when found."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mtlbench.cli import main
from mtlbench.core.errors import PluginError
from mtlbench.grid.plugins import discover
from tests.conftest import REPO, TINY_TOML, commit_all, make_project


def _example_from_docs() -> str:
    """The complete example of docs/add-a-mitigation.md, as a user would copy it."""
    text = (REPO / "docs" / "add-a-mitigation.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_a_mitigation_is_one_file_in_the_project(tmp_path, capsys):
    toml = TINY_TOML.replace('mitigations = ["none"]', 'mitigations = ["none", { name = "freeze-first", options = { k = 3 } }]')
    config = make_project(tmp_path / "p", toml)
    (config.parent / "mitigations").mkdir()
    (config.parent / "mitigations" / "freeze_first.py").write_text(_example_from_docs())
    commit_all(config.parent)
    assert main(["list", "mitigations", "--config", str(config)]) == 0
    assert "freeze-first v1  the first k shared layers stay at their initial values" in capsys.readouterr().out
    results = tmp_path / "r"
    args = ["run", "--config", str(config), "--results", str(results), "--no-progress", "--only", "method=ew", "--only", "seed=0"]
    assert main(args) == 0
    result = json.loads((results / "tiny/multimnist/r8/ew__freeze-first__seed0.json").read_text())
    assert result["status"] == "ok" and result["mitigation_version"] == "1"
    assert result["mitigation_report"] == {"frozen": ["conv1", "bn1", "layer1.0.conv1"]}
    assert result["mitigation_info"]["description"] == "the first k shared layers stay at their initial values"


def test_a_bad_plugin_declaration_names_the_file(tmp_path):
    config = make_project(tmp_path / "p")
    bad = config.parent / "baselines" / "bad.py"
    bad.write_text('from mtlbench.api import LossWeighting\n\n\nclass Bad(LossWeighting):\n    name = "bad"\n'
                   '    version = "two"\n    roles = frozenset({"champion"})\n')
    with pytest.raises(PluginError) as e:
        discover(config.parent)
    message = str(e.value)
    assert message.startswith(f"{bad}: method Bad: ") and "version must be a string of numbers" in message
    assert "unknown role(s) ['champion']; valid: 'baseline'" in message


def test_every_plugin_declares_its_metadata():
    """Iterate the registry (as timm's tests iterate its models): every shipped plugin has a
    description, a citation, and a version; methods name the reference they match."""
    plugins = discover(REPO)
    for registry in (plugins.tasks, plugins.methods, plugins.mitigations):
        for name, cls in registry.items():
            assert cls.description and cls.version, f"{registry.kind} {name}"
            if registry.kind != "mitigation" or name != "none":
                assert cls.citation, f"{registry.kind} {name} has no citation"
    for name, cls in plugins.methods.items():
        assert cls.reference, f"method {name} names no reference implementation"
    assert plugins.methods.with_role("baseline") == ["stl"] and plugins.mitigations.with_role("unmitigated") == ["none"]


def test_a_new_method_of_a_shipped_paper_is_pointed_out(tmp_path, capsys):
    """A new method file that re-implements a shipped method's paper (cited in another format)
    is listed as of the same paper; shipped variants of one paper are too, unrelated ones not."""
    config = make_project(tmp_path / "p")
    (config.parent / "baselines" / "geo.py").write_text(
        "import torch\nfrom mtlbench.api import LossWeighting\n\n\nclass GeometricMean(LossWeighting):\n"
        '    name = "geo-mean"\n    description = "geometric mean of the losses"\n'
        '    citation = "S. Chennupati et al. (2019). MultiNet++: multi-stream feature aggregation and geometric loss strategy."\n\n'
        "    def loss(self, losses, info):\n        return losses.log().mean().exp()\n"
    )
    same = discover(config.parent).same_paper()
    assert same["geo-mean"] == ["gls"] and "geo-mean" in same["gls"]
    assert same["mgda"] == ["mgda-ub"] and "ew" not in same and "pcgrad" not in same
    assert main(["list", "methods", "--config", str(config)]) == 0
    assert re.search(r"geo-mean .*\n(.*\n)*?\s+same paper as: gls", capsys.readouterr().out)


def test_list_warns_about_a_plugin_class_without_name(tmp_path, capsys):
    config = make_project(tmp_path / "p")
    (config.parent / "baselines" / "geo.py").write_text(
        "from mtlbench.api import LossWeighting\n\n\nclass GeometricMean(LossWeighting):\n"
        "    def loss(self, losses, info):\n        return losses.log().mean()\n"
    )
    assert main(["list", "methods", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: .*geo\.py: class GeometricMean sets no `name`, so it is not registered", err), err
