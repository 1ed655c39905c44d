"""The dataset components are registered through the plugin hook, with validated configs."""

from __future__ import annotations

import attrs
import pytest

from mercore.config import validate_node
from mercore.plugins import load_plugins

NAMES = ["jsonl", "iemocap_pickle", "meld_pickle", "meld_csv", "synthetic"]


@pytest.fixture(scope="module")
def plugin_set():
    return load_plugins()


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_modalities_option(plugin_set, name):
    spec = plugin_set.registry.get("dataset", name)
    assert spec.plugin == "data" and spec.doc
    assert "modalities" in {f.name for f in attrs.fields(spec.config_cls)}


def test_no_plugin_failed(plugin_set):
    assert not [p for p in plugin_set.errors if p.name == "data"]


def test_recipe_node_builds_and_loads(plugin_set):
    node, problems = validate_node(
        "dataset", {"type": "synthetic", "num_dialogues": {"train": 4, "dev": 2, "test": 2}, "modalities": ["text"]},
        plugin_set.registry)
    assert not problems
    corpus = node.build(unused_context=1).load()  # unknown context kwargs are ignored
    assert corpus.modalities == ["text"]


def test_required_options_are_reported(plugin_set):
    for name, key in (("jsonl", "root"), ("iemocap_pickle", "path"), ("meld_pickle", "path"), ("meld_csv", "features")):
        _, problems = validate_node("dataset", {"type": name}, plugin_set.registry)
        assert any(f"missing required key {key!r}" in p for p in problems), problems
    _, problems = validate_node("dataset", {"type": "meld_pickle", "path": "x.pkl", "dev_ratio": 1.5}, plugin_set.registry)
    assert any("dev_ratio" in p for p in problems)
