"""``baseline_sdt_{iemocap,meld}`` compute SDT's model and loss (butterfliesss/SDT, model.py and train.py).

The reference below is written from the description of SDT's code in the recipe headers (not a copy of it):
plain tensor operations on the mercore model's own weights, one step at a time, so that a difference in any
norm, activation, gate, head or loss term shows up as a value difference. Dropout is off (evaluation), where
SDT's per-Transformer embedding and mercore's shared one are the same function. In float64 (the sinusoidal positions are
computed in float32, by mercore as by SDT's buffer), so that even the tanh-approximated GELU against the exact
one is a visible difference.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mercore.data.types import PAD_LABEL, DialogueBatch
from mercore.errors import ConfigError
from mercore.nn.layers import TransformerLayer
from mercore.plugins import get_registry
from mercore.config import validate_node
from mercore.recipe import load_recipe
from mercore.train import Components, forward_batch

from support import ROOT

B, T, H, HEADS = 3, 5, 16, 8
MODS = ("text", "audio", "visual")
DIMS = {"text": 7, "audio": 6, "visual": 4}
LENGTHS = (5, 3, 1)


def batch(num_classes: int, seed: int = 0) -> DialogueBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]
    feats = {m: (torch.randn(B, T, d, generator=g) * mask[..., None]).double() for m, d in DIMS.items()}
    speakers = torch.randint(0, 2, (B, T), generator=g) * mask
    labels = torch.randint(0, num_classes, (B, T), generator=g).masked_fill(~mask, PAD_LABEL)
    return DialogueBatch(features=feats, mask=mask, speakers=speakers, labels=labels,
                         dialogue_ids=[f"d{i}" for i in range(B)])


def sdt_components(recipe: str, num_classes: int) -> tuple[Components, object]:
    loaded = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", [f"model.hidden={H}"])
    r = loaded.recipe
    torch.manual_seed(0)
    model = r.model.build(modality_dims=dict(DIMS), num_classes=num_classes, num_speakers=2,
                          label_names=[str(i) for i in range(num_classes)])
    loss_fn = r.loss.build(num_classes=num_classes, train_label_counts=torch.ones(num_classes, dtype=torch.long))
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, so a missing or extra norm is visible
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    model.double(), loss_fn.double()
    return Components(corpus=None, model=model, loss_fn=loss_fn, distiller=None, modalities=list(MODS)), r


def sinusoid(t: int, d: int) -> torch.Tensor:
    pe = torch.zeros(t, d, dtype=torch.float64)
    for p in range(t):
        for i in range(0, d, 2):
            pe[p, i] = math.sin(p / 10000 ** (i / d))
            pe[p, i + 1] = math.cos(p / 10000 ** (i / d))
    return pe.float().double()  # SDT's buffer is float32


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def sdt_transformer(layer, query: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDT's one-layer TransformerEncoder on already embedded inputs: no norm before the attention (layer 0),
    padded keys at -1e10, residual on the query, then the pre-LN (eps 1e-6) tanh-GELU feed-forward + residual."""
    a = layer.attn
    dh = H // HEADS

    def split(x):  # (B, T, H) -> (B, heads, T, dh)
        return x.view(B, T, HEADS, dh).transpose(1, 2)

    q = split(F.linear(query, a.to_q.weight, a.to_q.bias)) / math.sqrt(dh)
    k = split(F.linear(kv, a.to_k.weight, a.to_k.bias))
    v = split(F.linear(kv, a.to_v.weight, a.to_v.bias))
    scores = (q @ k.transpose(2, 3)).masked_fill(~mask[:, None, None, :], -1e10)
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
    out = F.linear(ctx, a.to_out.weight, a.to_out.bias) + query
    ln = layer.norm_ff
    assert ln.eps == 1e-6
    normed = F.layer_norm(out, (H,), ln.weight, ln.bias, 1e-6)
    w1, w2 = layer.ff.net[0], layer.ff.net[3]
    return F.linear(gelu_tanh(F.linear(normed, w1.weight, w1.bias)), w2.weight, w2.bias) + out


def sdt_reference(model, b: DialogueBatch, identity_gate: bool):
    """SDT's Transformer_Based_Model.forward on mercore's weights: (fused logits, {m: unimodal logits})."""
    mask = b.mask
    pe = sinusoid(T, H)
    emb = {}
    for m in MODS:
        e = model.encoders[m].embed
        emb[m] = (b.features[m] @ e.proj.weight.T + e.speaker.weight[b.speakers] + pe) * mask[..., None]
    fus = model.fusion
    reduced = {}
    for m in MODS:  # target m; SDT's order: intra first, then the other modalities in t, a, v order
        views = [sdt_transformer(fus.intra[m][0], emb[m], emb[m], mask)]
        views += [sdt_transformer(fus.inter[m][o][0], emb[m], emb[o], mask) for o in MODS if o != m]
        gates = [fus.gates[m][m]] + [fus.gates[m][o] for o in MODS if o != m]
        gated = [torch.sigmoid(x if identity_gate else x @ g.fc.weight.T) * x for x, g in zip(views, gates)]
        if identity_gate:
            assert all(g.fc is None for g in gates)
        red = fus.reduce[m]
        reduced[m] = torch.cat(gated, -1) @ red.weight.T + red.bias
    stacked = torch.stack([reduced[m] for m in MODS], dim=-2)  # (B, T, 3, H)
    fused = (torch.softmax(stacked @ fus.modality_gate.fc.weight.T, dim=-2) * stacked).sum(-2)
    head = model.head.net[-1]
    logits = fused @ head.weight.T + head.bias  # all_output_layer: Linear(H, C) and nothing else
    uni = {}
    for m in MODS:
        lin = model.unimodal_heads[m].net[-1]
        uni[m] = torch.relu(reduced[m]) @ lin.weight.T + lin.bias  # ReLU, Dropout, Linear
    return logits, uni


def sdt_loss(logits, uni, labels, mask, weight, temp):
    """train.py: g1 NLL(fused) + g2 sum_m NLL(uni_m) + g3 sum_m KL, all g = 1, SDT's masked means."""
    flat_mask = mask.reshape(-1).float()
    y = labels.reshape(-1).clamp_min(0)
    w = (weight if weight is not None else torch.ones(logits.shape[-1])).to(logits.dtype)

    def nll(z):  # MaskedNLLLoss: sum of -w_y log p_y over real utterances / sum of w_y over them
        lp = F.log_softmax(z, -1).reshape(-1, z.shape[-1])
        return -(w[y] * lp.gather(1, y[:, None])[:, 0] * flat_mask).sum() / (w[y] * flat_mask).sum()

    def kl(z):  # MaskedKLDivLoss(log_softmax(uni / T), softmax(fused / T)) / number of real utterances
        p = F.softmax(logits / temp, -1).reshape(-1, logits.shape[-1])
        lq = F.log_softmax(z / temp, -1).reshape(-1, z.shape[-1])
        return ((p * (p.log() - lq)).sum(-1) * flat_mask).sum() / flat_mask.sum()

    return nll(logits) + sum(nll(uni[m]) for m in MODS) + sum(kl(uni[m]) for m in MODS)


SDT_IEMOCAP_WEIGHTS = torch.tensor([1 / 0.086747, 1 / 0.144406, 1 / 0.227883, 1 / 0.160585, 1 / 0.127711, 1 / 0.252668])


@pytest.mark.parametrize("recipe, num_classes, identity_gate, temp, weight", [
    ("baseline_sdt_iemocap", 6, False, 1.0, SDT_IEMOCAP_WEIGHTS),
    ("baseline_sdt_meld", 7, True, 8.0, None),
])
def test_sdt_recipe_computes_sdts_model_and_loss(recipe, num_classes, identity_gate, temp, weight):
    c, _ = sdt_components(recipe, num_classes)
    b = batch(num_classes)
    c.model.eval()
    with torch.no_grad():
        out, terms = forward_batch(c, b)
        ref_logits, ref_uni = sdt_reference(c.model, b, identity_gate)
        keep = b.mask[..., None]
        torch.testing.assert_close(out.logits * keep, ref_logits * keep, rtol=1e-7, atol=1e-8)
        for m in MODS:
            torch.testing.assert_close(out.unimodal_logits[m] * keep, ref_uni[m] * keep, rtol=1e-7, atol=1e-8)
        # Four cross-entropy terms (class-weighted on IEMOCAP) and three KL terms, each of weight 1, nothing else.
        assert sorted(terms) == sorted(["task", *(f"self_distill.{k}.{m}" for k in ("ce", "kl") for m in MODS)])
        expected = sdt_loss(ref_logits, ref_uni, b.labels, b.mask, weight, temp)
        torch.testing.assert_close(sum(terms.values()), expected, rtol=1e-7, atol=1e-8)
        if weight is not None:  # the weights matter here: the unweighted loss is another number
            assert not torch.isclose(sdt_loss(ref_logits, ref_uni, b.labels, b.mask, None, temp), expected)


@pytest.mark.parametrize("recipe, lr, epochs, batch_size, temp, gate, weights", [
    ("baseline_sdt_iemocap", 1e-4, 150, 16, 1.0, "learned", "given"),
    ("baseline_sdt_meld", 5e-6, 50, 8, 8.0, "identity", "none"),
])
def test_sdt_recipe_settings_are_sdts_scripts(recipe, lr, epochs, batch_size, temp, gate, weights):
    """exec_iemocap.sh / exec_meld.sh and train.py's defaults, as the recipes' header tables state them."""
    r = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", []).recipe
    m, f = r.model.config, r.model.config.fusion.config
    assert (r.optimizer.name, r.optimizer.config.lr, r.optimizer.config.weight_decay) == ("adam", lr, 1e-5)
    assert r.scheduler.name == "constant" and r.trainer.grad_clip is None
    assert (r.trainer.epochs, r.trainer.batch_size) == (epochs, batch_size)
    assert (m.hidden, m.encoder.config.dropout, f.dropout, f.heads, f.layers, f.ff_mult) == (1024, 0.5, 0.5, 8, 1, 1.0)
    assert (f.unimodal_gate, f.attention_norm, f.norm_eps, f.gelu) == (gate, "sdt", 1e-6, "tanh")
    assert (m.head.name, m.head.config.dropout) == ("linear", 0.0)
    assert (m.unimodal_head.name, m.unimodal_head.config.dropout) == ("relu_linear", 0.5)
    assert (m.unimodal_loss, m.unimodal_ce_weight, m.self_distill_weight, m.self_distill_temperature) == (
        "task", 1.0, 1.0, temp)
    assert (r.loss.config.class_weights, r.loss.config.label_smoothing) == (weights, 0.0)
    if weights == "given":
        torch.testing.assert_close(torch.tensor(r.loss.config.weights), SDT_IEMOCAP_WEIGHTS, rtol=1e-6, atol=0)
    assert r.data.config.speaker_order == "file"


def test_relu_linear_head_is_relu_dropout_linear():
    node, problems = validate_node("head", {"type": "relu_linear", "dropout": 0.5}, get_registry())
    assert not problems
    torch.manual_seed(0)
    head = node.build(hidden=6, num_classes=3)
    x = torch.randn(2, 4, 6)
    lin = head.net[-1]
    head.eval()
    torch.testing.assert_close(head(x), torch.relu(x) @ lin.weight.T + lin.bias)
    assert [type(mod).__name__ for mod in head.net] == ["ReLU", "Dropout", "Linear"]
    head.train()
    torch.manual_seed(1)
    dropped = head(x)  # dropout acts between the ReLU and the linear layer
    assert not torch.allclose(dropped, torch.relu(x) @ lin.weight.T + lin.bias)


def test_given_class_weights_are_checked_and_used():
    reg = get_registry()
    _, problems = validate_node("loss", {"type": "cross_entropy", "class_weights": "given"}, reg)
    assert len(problems) == 1 and "class_weights: given needs weights" in problems[0], problems
    _, problems = validate_node("loss", {"type": "cross_entropy", "weights": [1.0, 2.0]}, reg)
    assert len(problems) == 1 and "set class_weights: given to use them" in problems[0], problems
    _, problems = validate_node("loss", {"type": "cross_entropy", "class_weights": "given", "weights": [1.0, 0.0]}, reg)
    assert len(problems) == 1 and "weights must all be > 0" in problems[0], problems
    node, _ = validate_node("loss", {"type": "cross_entropy", "class_weights": "given", "weights": [1.0, 3.0]}, reg)
    with pytest.raises(ConfigError, match="loss.weights has 2 values but the data has 3 classes"):
        node.build(num_classes=3, train_label_counts=torch.ones(3, dtype=torch.long))
    loss = node.build(num_classes=2, train_label_counts=torch.ones(2, dtype=torch.long))
    logits = torch.randn(1, 3, 2)
    labels = torch.tensor([[0, 1, PAD_LABEL]])
    lp = F.log_softmax(logits[0, :2], -1)
    expected = -(1.0 * lp[0, 0] + 3.0 * lp[1, 1]) / 4.0  # SDT's weighted mean over the real utterances
    torch.testing.assert_close(loss(logits, labels), expected)


def test_unimodal_loss_task_scores_the_unimodal_heads_with_the_recipes_loss():
    """plain_ce (the default, unchanged) is an unweighted CE in aux_losses; task hands the unimodal logits to
    the trainer, which scores them with the recipe's (here class-weighted) loss."""
    c, _ = sdt_components("baseline_sdt_iemocap", 6)
    b = batch(6, seed=3)
    c.model.eval()
    with torch.no_grad():
        out, terms = forward_batch(c, b)
        assert set(out.task_loss_logits) == {f"self_distill.ce.{m}" for m in MODS}
        assert not any(k.startswith("self_distill.ce") for k in out.aux_losses)
        for m in MODS:
            torch.testing.assert_close(terms[f"self_distill.ce.{m}"], c.loss_fn(out.unimodal_logits[m], b.labels))
        c.model.config.unimodal_loss = "plain_ce"
        plain = c.model(b)
    assert plain.task_loss_logits == {}
    keep = b.labels != PAD_LABEL
    for m in MODS:
        expected = F.cross_entropy(plain.unimodal_logits[m][keep], b.labels[keep])
        torch.testing.assert_close(plain.aux_losses[f"self_distill.ce.{m}"], expected)
        assert not torch.isclose(expected, terms[f"self_distill.ce.{m}"])  # the class weights made a difference


@pytest.mark.parametrize("attention_norm, normed_q, normed_kv", [("pre", True, True), ("query", True, False),
                                                                  ("none", False, False)])
def test_transformer_layer_attention_norm(attention_norm, normed_q, normed_kv):
    torch.manual_seed(0)
    layer = TransformerLayer(8, 2, 1.0, 0.0, cross=True, attention_norm=attention_norm, norm_eps=1e-6, gelu="tanh")
    layer.eval()
    x, ctx = torch.randn(2, 4, 8) * 3 + 1, torch.randn(2, 4, 8) * 2 - 1
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        y, _ = layer(x, mask, context=ctx)
        q = F.layer_norm(x, (8,), eps=1e-6) if normed_q else x
        kv = F.layer_norm(ctx, (8,), eps=1e-6) if normed_kv else ctx
        a, _ = layer.attn(q, kv, mask)
        mid = x + a
        ff = layer.ff.net
        expected = mid + ff[3](gelu_tanh(ff[0](F.layer_norm(mid, (8,), eps=1e-6))))
    torch.testing.assert_close(y, expected)
    assert (layer.norm_q is None) == (not normed_q) and (layer.norm_kv is None) == (not normed_kv)


def test_sdt_attention_norm_norms_the_query_after_the_first_layer():
    node, problems = validate_node("fusion", {"type": "sdt_gated", "layers": 2, "heads": 2, "attention_norm": "sdt"},
                                   get_registry())
    assert not problems
    fusion = node.build(modalities=["text", "audio"], hidden=8, num_classes=3)
    first, second = fusion.inter["text"]["audio"]
    assert first.norm_q is None and first.norm_kv is None
    assert second.norm_q is not None and second.norm_kv is None
    default, _ = validate_node("fusion", {"type": "sdt_gated", "heads": 2}, get_registry())
    layer = default.build(modalities=["text", "audio"], hidden=8, num_classes=3).inter["text"]["audio"][0]
    assert layer.norm_q is not None and layer.norm_kv is not None and layer.norm_ff.eps == 1e-5
