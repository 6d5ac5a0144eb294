"""The presets' protocol table (leaderboard/published/protocols.toml): every preset a published
table reproduces has every protocol field with the paper's setting, its source and ours; the
settings it claims for the preset are the ones benchmark.toml gives it; the docs show it as it is."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mtlbench.core.errors import ConfigError
from mtlbench.grid.config import load_benchmark
from mtlbench.report.protocols import FIELDS, PROTOCOLS_FILE, load_protocols, protocol_markdown
from mtlbench.report.published import load_published
from tests.conftest import REPO

PUBLISHED = REPO / "leaderboard" / "published"
PROTOCOLS = load_protocols(PUBLISHED / PROTOCOLS_FILE)


def test_every_reproduced_preset_has_a_protocol_with_every_field_sourced():
    named = {(t.reproduce["suite"], t.reproduce["task"]) for t in load_published(PUBLISHED)}
    listed = {(p.suite, p.task) for p in PROTOCOLS}
    assert named == listed
    for p in PROTOCOLS:
        assert set(p.fields) == set(FIELDS), (p.suite, p.task)
        for name, e in p.fields.items():
            assert e.paper.strip() and e.source.strip() and e.ours.strip(), (p.suite, p.task, name)


def test_claimed_settings_are_the_presets():
    bench = load_benchmark(REPO / "benchmark.toml")
    for p in PROTOCOLS:
        cell = next(c for c in bench.cells([p.suite]) if c.task == p.task)
        actual = {**dataclasses.asdict(cell.protocol), **cell.task_options}
        for key, claimed in p.check.items():
            assert key in actual, (p.suite, p.task, key)
            value = actual[key]
            assert value == pytest.approx(claimed) if isinstance(claimed, float) else value == claimed, (p.suite, p.task, key, value)


def test_dense_presets_name_their_pooling_and_the_field_says_it():
    for p in PROTOCOLS:
        if p.task in ("nyuv2", "cityscapes"):
            pooling = p.check["eval_pooling"]
            assert f"eval_pooling = {pooling}" in p.fields["evaluation"].ours, (p.suite, p.task)


def test_docs_show_the_table_as_it_is():
    text = (REPO / "docs" / "published-tables.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- protocols:[^>]*-->\n(.*)<!-- /protocols -->", text, re.S)
    assert found, "docs/published-tables.md: the generated protocol section is missing"
    assert found.group(1) == protocol_markdown(PROTOCOLS), "regenerate with mtlbench.report.protocols.protocol_markdown"


def test_a_missing_field_or_source_is_a_clear_error(tmp_path):
    text = (PUBLISHED / PROTOCOLS_FILE).read_text(encoding="utf-8")
    bad = tmp_path / PROTOCOLS_FILE
    bad.write_text(re.sub(r"^selection = .*\n", "", text, count=1, flags=re.M), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"protocols.toml: preset nash-nyuv2/nyuv2.fields: missing selection"):
        load_protocols(bad)
    bad.write_text(text.replace('source = "trainer.py l.250 (set_defaults n_epochs=200)"', 'source = " "', 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"nash-nyuv2/nyuv2.fields.epochs.source: required"):
        load_protocols(bad)
