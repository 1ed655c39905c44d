"""The ``multimodal`` model assembler: SUMMER's student and teacher and the baselines built from it."""

from __future__ import annotations

import pytest
import torch

from mercore.config import validate_node
from mercore.data.types import PAD_LABEL, DialogueBatch
from mercore.errors import ConfigError
from mercore.model_api import ModelOutput
from mercore.plugins import get_registry

B, T, C, H = 3, 6, 4, 16
DIMS = {"text": 12, "audio": 10, "visual": 6}
LENGTHS = (6, 4, 2)
ENC = {"type": "transformer", "heads": 2, "dropout": 0.0}
HCMF = {"type": "hcmf", "heads": 2, "dropout": 0.0}


def make_batch(seed: int = 0, pad_value: float = 0.0, pad_label: int = PAD_LABEL) -> DialogueBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]
    feats = {m: torch.where(mask[..., None], torch.randn(B, T, d, generator=g), torch.tensor(pad_value))
             for m, d in DIMS.items()}
    speakers = torch.randint(0, 2, (B, T), generator=g) * mask
    labels = torch.randint(0, C, (B, T), generator=g).masked_fill(~mask, pad_label)
    return DialogueBatch(features=feats, mask=mask, speakers=speakers, labels=labels,
                         dialogue_ids=[f"d{i}" for i in range(B)])


def model_node(**cfg):
    node, problems = validate_node("model", {"type": "multimodal", "hidden": H, **cfg}, get_registry())
    assert not problems, problems
    return node


def build(seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return model_node(**cfg).build(modality_dims=dict(DIMS), num_classes=C, num_speakers=2,
                                   label_names=[f"c{i}" for i in range(C)])


def summer(**extra):
    return build(modalities=["text", "audio", "visual"], encoder=ENC, fusion=HCMF,
                 moe={"type": "sdmoe", "num_experts": 2, "balance_weight": 0.01}, **extra)


def teacher_output(sharp: bool = True) -> ModelOutput:
    """A text teacher's output; ``sharp``: its attention replaced by each utterance attending to itself only, far
    from an untrained student's spread attention (an untrained teacher rarely differs by more than 0.5)."""
    teacher = build(seed=5, modalities=["text"], encoder=ENC)
    with torch.no_grad():
        out = teacher.eval()(make_batch())
    if sharp:
        out.attentions["anchor"] = torch.eye(T).expand(B, 2, T, T).clone()
    return out


def test_summer_student_outputs():
    model = summer(head={"type": "mlp", "dropout": 0.0})
    out = model(make_batch())
    assert out.logits.shape == (B, T, C)
    assert out.features["final"].shape == (B, T, H)
    for m in DIMS:
        assert out.features[m].shape == (B, T, H) and out.features[f"fusion.{m}"].shape == (B, T, H)
    assert out.attentions["anchor"].shape == (B, 2, T, T)
    assert torch.equal(out.attentions["anchor"], out.attentions["encoder.text"])
    assert {"fusion.anchor", "fusion.text<-audio", "fusion.text<-visual"} <= set(out.attentions)
    assert set(out.aux_losses) == {f"{m}.moe.balance" for m in DIMS}  # one per MoE layer
    assert any(k.startswith("audio.moe.load.") for k in out.stats) and out.stats["guided"] == 0.0
    assert out.unimodal_logits == {}
    assert model.hidden == H and model.num_classes == C and model.anchor == "text"
    (out.logits.sum() + sum(out.aux_losses.values())).backward()


def test_unimodal_model_without_fusion_is_the_teacher():
    model = build(modalities=["text"], encoder=ENC, moe={"type": "sdmoe", "num_experts": 2})
    out = model(make_batch())
    assert out.logits.shape == (B, T, C) and out.attentions["anchor"].shape == (B, 2, T, T)
    torch.testing.assert_close(out.features["final"], out.features["text"])
    assert model.fusion is None and model.modalities == ["text"] and model.modality_dims == {"text": 12}


def test_padding_does_not_leak_through_the_model():
    model = summer().eval()
    with torch.no_grad():
        a = model(make_batch())
        b = model(make_batch(pad_value=5.0))
    mask = make_batch().mask
    torch.testing.assert_close(a.logits[mask], b.logits[mask])


def test_missing_modality_is_named():
    with pytest.raises(ConfigError, match="'visual' but the data provides only \\['text', 'audio'\\]"):
        model_node(modalities=["text", "audio", "visual"], fusion=HCMF).build(
            modality_dims={"text": 12, "audio": 10}, num_classes=C, num_speakers=2)


@pytest.mark.parametrize("cfg, message", [
    ({"modalities": ["text", "audio"]}, "needs a fusion"),
    ({"modalities": ["text"], "fusion": HCMF}, "takes no fusion"),
    ({"modalities": ["text"], "self_distill_weight": 1.0}, "need unimodal_heads: true"),
    ({"modalities": ["text", "text"], "fusion": HCMF}, "names a modality twice"),
    ({"modalities": ["text"], "anchor": "audio"}, "anchor 'audio' is not among"),
])
def test_config_problems_are_reported(cfg, message):
    _, problems = validate_node("model", {"type": "multimodal", **cfg}, get_registry())
    assert len(problems) == 1 and message in problems[0], problems


def test_teacher_guidance_in_training_only_by_default():
    model = summer()
    t_out = teacher_output()
    batch = make_batch()
    with torch.no_grad():
        model.eval()
        plain = model(batch)
        torch.testing.assert_close(model(batch, teacher=t_out).logits, plain.logits)  # guide_at_eval: false
        # guidance off (teacher=None) equals a model built without any teacher in mind
        other = summer()
        other.eval()
        torch.testing.assert_close(other(batch).logits, plain.logits)
        torch.manual_seed(1)
        model.train()
        torch.manual_seed(1)
        no_teacher = model(batch)
        torch.manual_seed(1)
        guided = model(batch, teacher=t_out)
    assert guided.stats["guided"] == 1.0 and no_teacher.stats["guided"] == 0.0
    assert guided.stats["fusion.guided_fraction"] > 0
    assert not torch.allclose(guided.logits, no_teacher.logits)

    at_eval = summer(guide_at_eval=True).eval()
    with torch.no_grad():
        assert not torch.allclose(at_eval(batch, teacher=t_out).logits, at_eval(batch).logits)


def test_guidance_gradients_reach_the_student():
    model = summer()
    out = model(make_batch(), teacher=teacher_output())
    out.logits.logsumexp(-1).sum().backward()
    assert model.fusion.guides["text"].beta.grad.abs().sum() > 0
    assert model.encoders["text"].layers[0].attn.to_q.weight.grad.abs().sum() > 0


def test_self_distillation_terms_sdt_baseline():
    model = build(modalities=["text", "audio", "visual"], encoder={"type": "linear"},
                  fusion={"type": "sdt_gated", "heads": 2}, unimodal_heads=True, unimodal_ce_weight=0.5,
                  self_distill_weight=2.0, self_distill_temperature=2.0)
    batch = make_batch()
    out = model(batch)
    assert set(out.unimodal_logits) == set(DIMS) and out.unimodal_logits["text"].shape == (B, T, C)
    assert set(out.aux_losses) == {f"self_distill.{k}.{m}" for k in ("ce", "kl") for m in DIMS}
    assert all(torch.isfinite(v) and v >= 0 for v in out.aux_losses.values())
    # Labels come from the batch and only real utterances count: padded labels do not matter.
    model.eval()
    with torch.no_grad():
        a = model(make_batch()).aux_losses
        b = model(make_batch(pad_label=1)).aux_losses
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    # The CE term is the unimodal cross-entropy, weighted.
    u = model(batch).unimodal_logits["audio"]
    keep = batch.mask
    expected = 0.5 * torch.nn.functional.cross_entropy(u[keep], batch.labels[keep])
    torch.testing.assert_close(a["self_distill.ce.audio"], expected)


@pytest.mark.parametrize("cfg", [
    {"modalities": ["text", "audio"], "encoder": {"type": "bigru"}, "fusion": {"type": "concat"}, "head": "linear"},
    {"modalities": ["audio", "visual"], "encoder": ENC, "fusion": {**HCMF, "anchor": "visual"}},
    {"modalities": ["text"], "encoder": {"type": "bigru"}},
])
def test_baseline_models(cfg):
    model = build(**cfg)
    out = model(make_batch())
    assert out.logits.shape == (B, T, C) and out.features["final"].shape == (B, T, H)
    if cfg["encoder"]["type"] == "bigru":
        assert "anchor" not in out.attentions


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = summer(head={"type": "mlp", "dropout": 0.0})
    batch = make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ce = torch.nn.CrossEntropyLoss(ignore_index=PAD_LABEL)
    losses = []
    for _ in range(40):
        out = model(batch)
        loss = ce(out.logits.reshape(-1, C), batch.labels.reshape(-1)) + sum(out.aux_losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
