"""The declared contract of every kind (mercore/kinds.py) is what the engine really does.

A recording wrapper around ``Node.build`` watches a whole run of the demo recipe (made tiny, with every kind in
play: SDMoE routers and experts, HCMF with a global MoE, unimodal heads, a distiller), ``mercore eval``,
``mercore.load`` and a ``mercore extract`` run: every factory must receive exactly the declared context, and
every built component must satisfy its kind's protocol. So ``mercore show`` cannot drift from the code.
"""

from __future__ import annotations


import attrs
import pytest
import torch

import mercore
from mercore.cli import main
from mercore.kinds import KIND_CONTRACTS, KINDS, declared_capabilities, is_type_path, resolve
from mercore.nn import ModelOutput
from mercore.registry import Node

from support import ROOT


class ContextDistiller(torch.nn.Module):
    """A distiller without a teacher, so a run can include the ``distiller`` kind without training one."""

    @attrs.define
    class Config:
        weight: float = 0.0

    def __init__(self, config: Config, *, student: torch.nn.Module, num_classes: int, **_: object):
        super().__init__()
        self.num_classes = num_classes

    def teacher_output(self, batch) -> ModelOutput:
        return ModelOutput(logits=torch.zeros(*batch.mask.shape, self.num_classes))

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput, batch) -> dict[str, torch.Tensor]:
        return {"context.distill": student_out.logits.sum() * 0.0}


TINY_DEMO = [
    "data.num_dialogues={train: 6, dev: 3, test: 3}",
    "model.hidden=16",
    "model.fusion.global_moe={type: sdmoe, num_experts: 2, router: {type: topk, k: 1}, experts: {type: ffn}}",
    "model.unimodal_heads=true",
    f"distiller={{type: '{__name__}:ContextDistiller'}}",
    "trainer.epochs=1",
    "trainer.progress=false",
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Every ``(kind, context keys, built object)`` of a tiny demo run, its eval and its reload."""
    calls: list[tuple[str, frozenset[str], object]] = []
    original = Node.build

    def recording_build(self, **context):
        built = original(self, **context)
        calls.append((self.kind, frozenset(context), built))
        return built

    run_dir = tmp_path_factory.mktemp("contracts") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Node, "build", recording_build)
        torch.set_num_threads(1)
        assert main(["run", str(ROOT / "recipes" / "demo_synthetic.yaml"), *TINY_DEMO, f"output_dir={run_dir}"]) == 0
        assert main(["eval", str(run_dir)]) == 0
        mercore.load(run_dir)
        assert main(["extract", str(_extract_recipe(run_dir.parent))]) == 0
    return calls


def _extract_recipe(folder):
    """A `mercore extract` recipe on two conversations with the weight-free toy extractor."""
    (folder / "dialogues.jsonl").write_text('{"dialogue": "a", "speakers": ["A", "B"], "texts": ["hi", "hello"]}\n'
                                            '{"dialogue": "b", "speakers": ["B"], "texts": ["bye"]}\n')
    recipe = folder / "extract.yaml"
    recipe.write_text(f"input: {folder / 'dialogues.jsonl'}\noutput: {folder / 'toy.safetensors'}\n"
                      "extractor: {type: 'toy_components:ToyExtractor'}\nprogress: false\n")
    return recipe


def test_every_factory_receives_exactly_the_declared_context(recorded):
    seen = {kind for kind, _, _ in recorded}
    assert seen == set(KINDS), f"kinds never built by the run: {set(KINDS) - seen}"
    for kind, keys, _ in recorded:
        declared = set(KIND_CONTRACTS[kind].context_names)
        assert keys == declared, f"{kind}: the engine passed {sorted(keys)} but mercore/kinds.py declares {sorted(declared)}"


def test_every_built_component_satisfies_its_kinds_protocol(recorded):
    for kind, _, built in recorded:
        protocol = KIND_CONTRACTS[kind].protocol
        if protocol is not None:
            assert isinstance(built, resolve(protocol)), f"a built {kind} ({type(built).__name__}) is not a {protocol}"


def test_contracts_name_real_types_and_cover_every_kind():
    assert tuple(KIND_CONTRACTS) == KINDS
    for c in KIND_CONTRACTS.values():
        for path in [c.protocol, *c.capabilities, c.returns if is_type_path(c.returns) else None]:
            if path is not None:
                assert isinstance(resolve(path.split(" ")[0]), type), path


def test_declared_capabilities_are_read_from_the_class(registry):
    fusion = KIND_CONTRACTS["fusion"]
    guidable = "mercore.nn.fusion.GuidableFusion"
    assert declared_capabilities(registry.get("fusion", "hcmf").factory, fusion) == {guidable: True}
    assert declared_capabilities(registry.get("fusion", "concat").factory, fusion) == {guidable: False}
    encoder = KIND_CONTRACTS["encoder"]
    assert declared_capabilities(registry.get("encoder", "transformer").factory, encoder) == {
        "mercore.nn.encoder.AttentionEncoder": True}
    assert declared_capabilities(registry.get("encoder", "bigru").factory, encoder) == {
        "mercore.nn.encoder.AttentionEncoder": False}


def test_show_prints_context_output_protocol_and_capabilities(capsys):
    assert main(["show", "router", "topk"]) == 0
    out = capsys.readouterr().out
    assert "build context: called as factory(config, **context) by a moe component (sdmoe)" in out
    assert "  dim: int  width D of the tokens it routes\n  num_experts: int  number of experts E\n" in out
    assert "returns: Routing (defined in mercore.nn.moe)" in out and "protocol: Router (defined in mercore.nn.moe)" in out
    assert "implemented by: mercore_summer.moe.routing.TopKRouter" in out
    assert main(["show", "fusion", "hcmf"]) == 0
    out = capsys.readouterr().out
    assert "returns: FusionOutput (defined in mercore.nn.fusion)" in out
    assert "  GuidableFusion (defined in mercore.nn.fusion): yes" in out
    assert main(["show", "model", "multimodal"]) == 0
    out = capsys.readouterr().out
    assert "model multimodal  (plugin core)" in out and "  label_names: list[str]" in out
