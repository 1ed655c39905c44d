"""``model.guide_at_eval``: the trainer's evaluation passes the teacher's attention to HCMF only when it is true
(the default, false, leaves evaluation unguided as before)."""

from __future__ import annotations

import pytest
import torch

from mercore.config import validate_node
from mercore.data.types import iterate_batches
from mercore.model_api import ModelOutput
from mercore.plugins import get_registry
from mercore.train import Components, evaluate, model_context

from toy_components import ToyDataset

MODS = ["text", "audio"]


class SharpTeacher(torch.nn.Module):
    """A distiller whose teacher attends each utterance to itself only (far from an untrained student), and
    which counts its teacher forwards."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def teacher_output(self, batch) -> ModelOutput:
        self.calls += 1
        b, t = batch.mask.shape
        return ModelOutput(logits=torch.zeros(b, t, 3), attentions={"anchor": torch.eye(t).expand(b, 2, t, t).clone()})

    def forward(self, student_out, teacher_out, batch) -> dict:
        return {}


def components(guide_at_eval: bool) -> Components:
    corpus = ToyDataset(ToyDataset.Config(num_dialogues=8, dim=6, modalities=MODS)).load()
    node, problems = validate_node("model", {
        "type": "multimodal", "modalities": MODS, "hidden": 8, "guide_at_eval": guide_at_eval,
        "encoder": {"type": "transformer", "heads": 2, "dropout": 0.0},
        "fusion": {"type": "hcmf", "heads": 2, "dropout": 0.0, "guide_scale": 4.0}}, get_registry())
    assert not problems, problems
    torch.manual_seed(0)
    model = node.build(**model_context(corpus))
    return Components(corpus=corpus, model=model, loss_fn=None, distiller=SharpTeacher(), modalities=MODS)


@pytest.mark.parametrize("guide_at_eval", [False, True])
def test_evaluation_uses_the_teachers_attention_only_with_guide_at_eval(guide_at_eval):
    c = components(guide_at_eval)
    _, rows = evaluate(c, "test", 4, torch.device("cpu"))
    assert (c.distiller.calls > 0) == guide_at_eval  # no teacher forward at all by default
    c.model.eval()
    c.model.config.guide_at_eval = True  # to compute the guided scores in both cases
    guided, plain = [], []
    with torch.no_grad():
        for batch in iterate_batches(c.corpus.split("test"), MODS, 4):
            keep = batch.mask
            guided.append(c.model(batch, teacher=c.distiller.teacher_output(batch)).logits[keep])
            plain.append(c.model(batch).logits[keep])
    guided, plain = torch.cat(guided), torch.cat(plain)
    assert not torch.allclose(guided, plain)  # the teacher's attention changes the prediction's scores
    expected = (guided if guide_at_eval else plain).argmax(-1).tolist()
    assert [r["pred"] for r in rows] == expected
