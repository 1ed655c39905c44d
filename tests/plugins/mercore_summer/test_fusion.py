"""Fusions (hcmf, concat, sdt_gated): shapes, modality subsets, padding, teacher guidance, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from mercore.config import validate_node
from mercore.errors import ConfigError
from mercore.plugins import get_registry
from mercore.nn import FusionOutput, GuidableFusion
from mercore_summer.fusion import AttentionGuide

B, T, H, C = 2, 5, 16, 4
LENGTHS = (5, 3)
ALL = ["text", "audio", "visual"]


def build(data: dict, modalities: list[str]):
    node, problems = validate_node("fusion", data, get_registry())
    assert not problems, problems
    return node.build(modalities=modalities, hidden=H, num_classes=C)


def views_and_mask(modalities, seed=0, pad_value=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]
    views = {}
    for m in modalities:
        v = torch.randn(B, T, H, generator=g)
        fill = torch.zeros_like(v) if pad_value is None else torch.full_like(v, pad_value)
        views[m] = torch.where(mask[..., None], v, fill)
    return views, mask


def sharp_teacher(heads=2):
    """A teacher that attends each utterance to itself only: far from a fresh student's spread attention."""
    return torch.eye(T).expand(B, heads, T, T).clone()


SUBSETS = [list(s) for r in (2, 3) for s in itertools.combinations(ALL, r)]
FUSIONS = [{"type": "hcmf", "heads": 2}, {"type": "concat"}, {"type": "sdt_gated", "heads": 2},
           {"type": "sdt_gated", "heads": 4, "layers": 2, "unimodal_gate": "identity"}]


def fusion_for(cfg, mods):
    cfg = dict(cfg)
    if cfg["type"] == "hcmf" and "text" not in mods:
        cfg["anchor"] = mods[0]
    return build(cfg, mods)


@pytest.mark.parametrize("mods", SUBSETS, ids="+".join)
@pytest.mark.parametrize("cfg", FUSIONS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_shapes_for_every_modality_subset(cfg, mods):
    fusion = fusion_for(cfg, mods)
    views, mask = views_and_mask(mods)
    out = fusion(views, mask)
    assert isinstance(out, FusionOutput)
    assert isinstance(fusion, GuidableFusion) == (cfg["type"] == "hcmf")  # only HCMF declares guidance
    assert out.fused.shape == (B, T, H) and torch.isfinite(out.fused).all()
    assert torch.all(out.fused[~mask] == 0)
    for f in out.features.values():
        assert f.shape == (B, T, H)
    for a in out.attentions.values():
        assert a.shape == (B, cfg.get("heads", 0), T, T)
    if cfg["type"] != "concat":
        assert set(out.features) == set(mods)
    out.fused.sum().backward()


@pytest.mark.parametrize("cfg", FUSIONS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_padding_does_not_leak(cfg):
    torch.manual_seed(0)
    fusion = fusion_for(cfg, ALL).eval()
    a_views, mask = views_and_mask(ALL)
    b_views, _ = views_and_mask(ALL, pad_value=3.0)
    with torch.no_grad():
        a, b = fusion(a_views, mask), fusion(b_views, mask)
    torch.testing.assert_close(a.fused[mask], b.fused[mask])
    for m in a.features:
        torch.testing.assert_close(a.features[m][mask], b.features[m][mask])


def test_hcmf_attentions_and_anchor_errors():
    fusion = build({"type": "hcmf", "heads": 2}, ALL)
    views, mask = views_and_mask(ALL)
    out = fusion(views, mask)
    assert set(out.attentions) == {"anchor", "text<-audio", "text<-visual"}
    with pytest.raises(ConfigError, match="anchor 'text' is not among the model's modalities \\['audio', 'visual'\\]"):
        build({"type": "hcmf", "heads": 2}, ["audio", "visual"])
    with pytest.raises(ConfigError, match="needs 2 or more modalities"):
        build({"type": "hcmf", "heads": 2}, ["text"])
    with pytest.raises(ConfigError, match="needs 2 or more modalities"):
        build({"type": "concat"}, ["text"])
    with pytest.raises(ValueError, match="built for modalities"):
        fusion({"text": views["text"], "audio": views["audio"]}, mask)


def test_guidance_changes_output_and_gradients_flow():
    torch.manual_seed(0)
    fusion = build({"type": "hcmf", "heads": 2, "dropout": 0.0}, ALL)
    views, mask = views_and_mask(ALL)
    plain = fusion(views, mask).fused
    guided_out = fusion.forward_guided(views, mask, sharp_teacher())
    guided = guided_out.fused
    assert not torch.allclose(plain[mask], guided[mask])
    assert 0 < guided_out.stats["fusion.guided_fraction"] <= 1
    guided.pow(2).sum().backward()
    assert fusion.guides["text"].beta.grad is not None and fusion.guides["text"].beta.grad.abs().sum() > 0
    assert fusion.guides["audio"].beta.grad.abs().sum() > 0  # guide_cross on by default
    assert fusion.anchor_layer.attn.to_q.weight.grad.abs().sum() > 0
    assert fusion.anchor_layer.attn.to_k.weight.grad.abs().sum() > 0


def test_guidance_off_when_none_scale_zero_or_in_agreement():
    torch.manual_seed(0)
    fusion = build({"type": "hcmf", "heads": 2, "dropout": 0.0}, ALL).eval()
    torch.manual_seed(0)
    off = build({"type": "hcmf", "heads": 2, "dropout": 0.0, "guide_scale": 0.0}, ALL).eval()
    views, mask = views_and_mask(ALL)
    with torch.no_grad():
        plain = fusion(views, mask)
        torch.testing.assert_close(off.forward_guided(views, mask, sharp_teacher()).fused, plain.fused)
        # A teacher that agrees with the student (its own attention) changes nothing.
        same = fusion.forward_guided(views, mask, plain.attentions["anchor"])
    torch.testing.assert_close(same.fused, plain.fused)
    assert "fusion.guided_fraction" not in plain.stats


def test_guidance_with_other_head_count_and_cross_off():
    torch.manual_seed(0)
    fusion = build({"type": "hcmf", "heads": 4, "dropout": 0.0, "guide_cross": False}, ["text", "audio"])
    views, mask = views_and_mask(["text", "audio"])
    out = fusion.forward_guided(views, mask, sharp_teacher(heads=3))  # averaged over the teacher's 3 heads
    assert out.fused.shape == (B, T, H)
    out.fused.sum().backward()
    assert fusion.guides["audio"].beta.grad is None  # cross branch unguided
    with pytest.raises(ValueError, match="attention over the anchor"):
        fusion.forward_guided(views, mask, torch.ones(B, 2, T + 1, T + 1))


def test_guide_formula_moves_disagreeing_entries_to_the_teacher():
    guide = AttentionGuide(heads=1, threshold=0.5, scale=1.0, learnable=False)
    logits = torch.zeros(1, 1, 1, 4)  # uniform student: 0.25 each
    teacher = torch.tensor([[[[0.97, 0.01, 0.01, 0.01]]]])
    out = guide.hook(teacher)(logits).softmax(-1)
    # Only entry 0 disagrees by more than 0.5; at lam = 1 it takes the teacher's odds against the others.
    expected = torch.tensor([0.97, 0.25, 0.25, 0.25])
    torch.testing.assert_close(out[0, 0, 0], expected / expected.sum(), atol=1e-5, rtol=1e-5)
    assert float(guide.last_fraction) == pytest.approx(0.25)


def test_hcmf_global_moe_passes_aux_losses_and_stats():
    fusion = build({"type": "hcmf", "heads": 2, "global_moe": {"type": "sdmoe", "balance_weight": 0.01}}, ALL)
    views, mask = views_and_mask(ALL)
    out = fusion(views, mask)
    assert set(out.aux_losses) == {"fusion.global_moe.balance"}
    assert any(k.startswith("fusion.global_moe.") for k in out.stats)
    assert torch.all(out.fused[~mask] == 0)


def test_sdt_identity_gate_has_no_weights():
    learned = build({"type": "sdt_gated", "heads": 2}, ALL)
    identity = build({"type": "sdt_gated", "heads": 2, "unimodal_gate": "identity"}, ALL)
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert n(learned) - n(identity) == 9 * H * H  # 3 targets x 3 gated views, one H x H matrix each
