"""Encoders (transformer, bigru, linear) and heads: shapes, padding, attention weights, errors."""

from __future__ import annotations

import pytest
import torch

from mercore.config import validate_node
from mercore.nn import AttentionEncoder, Encoder
from mercore.plugins import get_registry

B, T, D_IN, H, S = 3, 6, 10, 16, 2
LENGTHS = (6, 4, 1)


def build(kind: str, data: dict, **context):
    node, problems = validate_node(kind, data, get_registry())
    assert not problems, problems
    return node.build(**context)


def inputs(seed: int = 0, pad_value: float | None = None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]  # (B, T)
    x = torch.randn(B, T, D_IN, generator=g)
    speakers = torch.randint(0, S, (B, T), generator=g)
    if pad_value is not None:  # what sits at padded positions must not matter
        x = torch.where(mask[..., None], x, torch.full_like(x, pad_value))
        speakers = torch.where(mask, speakers, torch.ones_like(speakers))
    else:
        x = x * mask[..., None]
        speakers = speakers * mask
    return x, speakers, mask


ENCODERS = [
    {"type": "transformer", "heads": 2, "layers": 2},
    {"type": "transformer", "heads": 4, "position": "learned", "max_len": 8},
    {"type": "bigru"},
    {"type": "bigru", "layers": 2, "position": "none", "speaker_embedding": False},
    {"type": "linear"},
    {"type": "transformer", "heads": 2, "input_norm": "layernorm"},
]


@pytest.mark.parametrize("cfg", ENCODERS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_encoder_shapes_and_zero_padding(cfg):
    enc = build("encoder", cfg, input_dim=D_IN, hidden=H, num_speakers=S, name="text", extra_is_ignored=1)
    x, spk, mask = inputs()
    h = enc(x, spk, mask)
    assert h.shape == (B, T, H)
    assert torch.all(h[~mask] == 0)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("cfg", ENCODERS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_encoder_padding_does_not_leak(cfg):
    torch.manual_seed(0)
    enc = build("encoder", cfg, input_dim=D_IN, hidden=H, num_speakers=S, name="text").eval()
    x, spk, mask = inputs()
    x2, spk2, _ = inputs(pad_value=7.5)
    with torch.no_grad():
        a, b = enc(x, spk, mask), enc(x2, spk2, mask)
    torch.testing.assert_close(a[mask], b[mask])


def test_transformer_exposes_last_attention():
    enc = build("encoder", {"type": "transformer", "heads": 4, "layers": 2, "dropout": 0.0},
                input_dim=D_IN, hidden=H, num_speakers=S, name="text")
    x, spk, mask = inputs()
    h, attn = enc.forward_with_attention(x, spk, mask)
    assert h.shape == (B, T, H) and attn.shape == (B, 4, T, T)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, 4, T))
    closed = ~mask[:, None, None, :].expand_as(attn)
    assert torch.all(attn[closed] == 0)  # no weight on padded keys
    torch.testing.assert_close(h, enc(x, spk, mask))
    assert isinstance(enc, AttentionEncoder)


def test_baseline_encoders_declare_no_attention():
    for name in ("bigru", "linear"):
        enc = build("encoder", {"type": name}, input_dim=D_IN, hidden=H, num_speakers=S, name="audio")
        x, spk, mask = inputs()
        assert enc(x, spk, mask).shape == (B, T, H)
        assert isinstance(enc, Encoder) and not isinstance(enc, AttentionEncoder)


def test_bigru_sees_context_in_both_directions_and_handles_holes():
    torch.manual_seed(0)
    enc = build("encoder", {"type": "bigru", "dropout": 0.0, "position": "none"},
                input_dim=D_IN, hidden=H, num_speakers=S, name="text").eval()
    x, spk, mask = inputs()
    with torch.no_grad():
        base = enc(x, spk, mask)
        x_last = x.clone()
        x_last[0, 5] += 1.0  # the last utterance of dialogue 0 changes the first one's output (backward GRU)
        assert not torch.allclose(enc(x, spk, mask)[0, 0], enc(x_last, spk, mask)[0, 0])
        # A mask with a hole: same as the dialogue with that utterance removed.
        hole = mask.clone()
        hole[0, 2] = False
        out = enc(x, spk, hole)
        keep = [0, 1, 3, 4, 5]
        ref = enc(x[:1, keep], spk[:1, keep], torch.ones(1, 5, dtype=torch.bool))
    torch.testing.assert_close(out[0, keep], ref[0])
    assert torch.all(out[0, 2] == 0)
    assert base.shape == (B, T, H)


def test_linear_encoder_has_no_context():
    enc = build("encoder", {"type": "linear", "dropout": 0.0}, input_dim=D_IN, hidden=H, num_speakers=S, name="t")
    x, spk, mask = inputs()
    x2 = x.clone()
    x2[0, 3] += 1.0
    torch.testing.assert_close(enc(x, spk, mask)[0, :3], enc(x2, spk, mask)[0, :3])


def test_encoder_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible by heads=3"):
        build("encoder", {"type": "transformer", "heads": 3}, input_dim=D_IN, hidden=H, num_speakers=S, name="text")
    with pytest.raises(ValueError, match="must be even"):
        build("encoder", {"type": "bigru"}, input_dim=D_IN, hidden=15, num_speakers=S, name="text")
    enc = build("encoder", {"type": "linear", "position": "learned", "max_len": 4},
                input_dim=D_IN, hidden=H, num_speakers=S, name="text")
    x, spk, mask = inputs()
    with pytest.raises(ValueError, match="longer than max_len=4"):
        enc(x, spk, mask)
    _, problems = validate_node("encoder", {"type": "transformer", "position": "absolute"}, get_registry())
    assert problems and "position" in problems[0]


@pytest.mark.parametrize("cfg", [{"type": "linear"}, {"type": "mlp"}, {"type": "mlp", "activation": "gelu", "inner": 8}])
def test_heads(cfg):
    head = build("head", cfg, hidden=H, num_classes=5)
    assert head(torch.randn(B, T, H)).shape == (B, T, 5)


def test_speaker_index_outside_the_table_is_named():
    enc = build("encoder", {"type": "linear"}, input_dim=D_IN, hidden=H, num_speakers=2, name="text")
    x, spk, mask = inputs()
    spk[0, 0] = 5
    with pytest.raises(ValueError, match="speaker index 5 is outside the speaker table of 2"):
        enc(x, spk, mask)


@pytest.mark.parametrize("enc_type", ["transformer", "bigru"])
def test_input_norm_makes_the_encoder_blind_to_feature_scale(enc_type):
    """With ``input_norm: layernorm`` unit-norm sentence embeddings and the same vectors scaled up give the same
    output (the projection no longer starts tiny next to the speaker and position embeddings); without it they
    differ."""
    x, spk, mask = inputs()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # unit-norm rows like MiniLM's
    outs = {}
    for norm in ("layernorm", "none"):
        torch.manual_seed(0)
        cfg = {"type": enc_type, "input_norm": norm} | ({"heads": 2} if enc_type == "transformer" else {})
        enc = build("encoder", cfg, input_dim=D_IN, hidden=H, num_speakers=S, name="text").eval()
        with torch.no_grad():
            outs[norm] = (enc(x, spk, mask), enc(x * 20.0, spk, mask))
    torch.testing.assert_close(outs["layernorm"][0], outs["layernorm"][1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(outs["none"][0], outs["none"][1], atol=1e-2)
