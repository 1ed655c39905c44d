"""Experts and the SDMoE block: ffn vs a per-token loop, bi-GRU padding, losses, stats, registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mercore.config import validate_node
from mercore.nn import MoEOutput, Routing
from mercore.registry import Registry
from mercore_summer.moe import (
    BiGRUExperts,
    FFNExperts,
    TopKRouter,
    balance_loss,
    register_moe,
    router_z_loss,
)

D, E = 8, 4


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The plugin-loaded registry once the lead has wired ``register_moe``; until then our own."""
    from mercore.plugins import load_plugins

    loaded = load_plugins().registry
    if "sdmoe" in loaded.names("moe"):
        return loaded
    own = Registry()
    register_moe(own.registrar("summer"))
    return own


def build_moe(registry, dim=D, name="text.moe", **data):
    node, problems = validate_node("moe", {"type": "sdmoe", **data}, registry)
    assert not problems, problems
    return node.build(dim=dim, name=name)


def batch(b=3, t=6, d=D, lengths=(6, 3, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return x, mask


def routing_for(n, k=2, num_experts=E, seed=0, pad_some=True) -> Routing:
    """A hand-made routing over n tokens with some -1 slots."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(num_experts, generator=g)[:k] for _ in range(n)])
    if pad_some:
        idx[::3, 1:] = -1
    gate = torch.rand(n, k, generator=g).masked_fill(idx < 0, 0.0)
    probs = torch.softmax(torch.randn(n, num_experts, generator=g), -1)
    return Routing(expert_idx=idx, gate=gate, probs=probs, logits=probs.log())


# -- ffn experts ---------------------------------------------------------------------------------------------


def per_token_reference(experts: FFNExperts, x, mask, routing: Routing):
    act = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[experts.config.activation]
    tokens = x[mask]
    rows = []
    for n in range(tokens.shape[0]):
        y = torch.zeros(tokens.shape[1], dtype=x.dtype)
        for slot in range(routing.expert_idx.shape[1]):
            e = int(routing.expert_idx[n, slot])
            if e < 0:
                continue
            h = tokens[n] @ experts.w1[e]
            if experts.b1 is not None:
                h = h + experts.b1[e]
            h = act(h)
            if experts.w3 is not None:
                h = h * (tokens[n] @ experts.w3[e])
            out = h @ experts.w2[e]
            if experts.b2 is not None:
                out = out + experts.b2[e]
            y = y + routing.gate[n, slot] * out
        rows.append(y)
    full = torch.zeros_like(x)
    full[mask] = torch.stack(rows)
    return full


@pytest.mark.parametrize("kernel", ["fused", "naive"])
@pytest.mark.parametrize(
    "options",
    [{}, {"glu": True, "activation": "silu"}, {"bias": False, "activation": "relu", "hidden": 5}],
    ids=["gelu", "swiglu", "relu-nobias"],
)
def test_ffn_experts_match_a_per_token_loop(kernel, options):
    torch.manual_seed(0)
    experts = FFNExperts(FFNExperts.Config(kernel=kernel, **options), dim=D, num_experts=E)
    x, mask = batch()
    routing = routing_for(int(mask.sum()))
    y = experts(x, mask, routing)
    assert y.shape == x.shape
    assert (y[~mask] == 0).all()
    assert torch.allclose(y, per_token_reference(experts, x, mask, routing), atol=1e-5)


def test_ffn_fused_and_naive_gradients_agree():
    torch.manual_seed(0)
    fused = FFNExperts(FFNExperts.Config(kernel="fused", glu=True), dim=D, num_experts=E)
    naive = FFNExperts(FFNExperts.Config(kernel="naive", glu=True), dim=D, num_experts=E)
    naive.load_state_dict(fused.state_dict())
    x, mask = batch()
    base = routing_for(int(mask.sum()))
    grads = []
    for experts in (fused, naive):
        gate = base.gate.clone().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        experts(xx, mask, base._replace(gate=gate)).square().sum().backward()
        grads.append([xx.grad, gate.grad, experts.w1.grad, experts.w2.grad, experts.w3.grad, experts.b1.grad])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


# -- bigru experts -------------------------------------------------------------------------------------------


def test_bigru_experts_ignore_padding():
    torch.manual_seed(0)
    experts = BiGRUExperts(BiGRUExperts.Config(), dim=D, num_experts=E)
    assert experts.hidden == D // 2
    x, mask = batch(t=6, lengths=(6, 3, 1))
    routing = routing_for(int(mask.sum()))
    y = experts(x, mask, routing)
    # Longer padding filled with garbage: real positions unchanged, padding zero.
    x_long = torch.cat([x, 100 * torch.randn(3, 4, D)], dim=1)
    x_long[~torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)] = 50.0
    mask_long = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    y_long = experts(x_long, mask_long, routing)
    assert torch.allclose(y_long[:, :6][mask], y[mask], atol=1e-6)
    assert (y_long[~mask_long] == 0).all() and (y[~mask] == 0).all()


def test_bigru_experts_equal_each_dialogue_alone_combined_by_the_gate():
    torch.manual_seed(0)
    experts = BiGRUExperts(BiGRUExperts.Config(hidden=3), dim=D, num_experts=E)
    x, mask = batch(lengths=(6, 3, 0))  # includes an empty dialogue
    routing = routing_for(int(mask.sum()))
    y = experts(x, mask, routing)
    gate = routing.dense_gate(E)
    rows, n = [], 0
    for b in range(3):
        length = int(mask[b].sum())
        if length == 0:
            continue
        seq = x[b : b + 1, :length]
        outs = torch.stack([experts.proj[e](experts.grus[e](seq)[0][0]) for e in range(E)], 1)  # (L, E, D)
        rows.append((outs * gate[n : n + length].unsqueeze(-1)).sum(1))
        n += length
    assert torch.allclose(y[mask], torch.cat(rows), atol=1e-5)


def test_bigru_non_prefix_mask_runs_over_the_real_utterances_only():
    torch.manual_seed(0)
    experts = BiGRUExperts(BiGRUExperts.Config(), dim=D, num_experts=2)
    x = torch.randn(1, 5, D)
    mask = torch.tensor([[True, False, True, False, True]])
    routing = routing_for(3, k=2, num_experts=2, pad_some=False)
    y = experts(x, mask, routing)
    y_compact = experts(x[:, [0, 2, 4]], torch.ones(1, 3, dtype=torch.bool), routing)
    assert torch.allclose(y[mask], y_compact[0], atol=1e-6)


# -- losses --------------------------------------------------------------------------------------------------


def test_balance_loss_on_a_hand_example():
    # 4 tokens, 2 experts, top-1: expert 0 gets 3 tokens, expert 1 one -> f = (3/4, 1/4).
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]], requires_grad=True)
    idx = torch.tensor([[0], [0], [0], [1]])
    r = Routing(expert_idx=idx, gate=torch.ones(4, 1), probs=probs, logits=probs.detach().log())
    # P = (0.6, 0.4); loss = 2 * (3/4 * 0.6 + 1/4 * 0.4) = 1.1
    loss = balance_loss(r, 2)
    assert loss.item() == pytest.approx(1.1)
    loss.backward()
    assert torch.allclose(probs.grad, torch.tensor([[0.375, 0.125]]).expand(4, 2))  # 2 * f_e / N
    # -1 slots do not count; a variable k: f = (2/3, 1/3) over the 3 used slots
    idx2 = torch.tensor([[0, -1], [0, 1]])
    r2 = Routing(idx2, torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.zeros(2, 2))
    assert balance_loss(r2, 2).item() == pytest.approx(2 * (2 / 3 * 0.5 + 1 / 3 * 0.5))
    # gate-mass fractions: f = (1.5/2, 0.5/2)
    assert balance_loss(r2, 2, "gate").item() == pytest.approx(2 * (0.75 * 0.5 + 0.25 * 0.5))


def test_z_loss_on_a_hand_example():
    logits = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    lse = torch.log(torch.tensor(2.0))
    want = ((lse**2 + (1 + lse) ** 2) / 2).item()
    assert router_z_loss(logits).item() == pytest.approx(want)


def test_aux_losses_absent_at_weight_zero_and_weighted_otherwise(registry):
    torch.manual_seed(0)
    x, mask = batch()
    moe = build_moe(registry, router={"type": "topk", "k": 1}, experts="ffn", dropout=0.0)
    out = moe(x, mask)
    assert out.aux_losses == {}
    moe_w = build_moe(registry, router={"type": "topk", "k": 1}, experts="ffn", balance_weight=0.5, z_loss_weight=0.1)
    moe_w.load_state_dict(moe.state_dict())
    out_w = moe_w(x, mask)
    assert set(out_w.aux_losses) == {"text.moe.balance", "text.moe.z_loss"}
    r = out_w.routing
    assert out_w.aux_losses["text.moe.balance"].item() == pytest.approx(0.5 * balance_loss(r, E).item())
    assert out_w.aux_losses["text.moe.z_loss"].item() == pytest.approx(0.1 * router_z_loss(r.logits).item())
    out_w.aux_losses["text.moe.balance"].backward()
    assert moe_w.router.gate.weight.grad.abs().sum() > 0


# -- the block -----------------------------------------------------------------------------------------------


def test_defaults_are_the_papers_choices(registry):
    moe = build_moe(registry)
    assert moe.config.num_experts == 4
    assert moe.config.router.name == "sigma_gumbel" and moe.config.experts.name == "bigru"
    assert moe.config.balance_weight == 0 and moe.config.z_loss_weight == 0
    assert len(moe.experts.grus) == 4


@pytest.mark.parametrize(
    "router,experts",
    [
        ("sigma_gumbel", "bigru"),
        ({"type": "sigma_gumbel", "hard": True}, "ffn"),
        ("topk", "bigru"),
        ("noisy_topk", "ffn"),
        ({"type": "top_p", "p": 0.6}, {"type": "ffn", "kernel": "naive"}),
    ],
)
def test_block_shapes_padding_stats_and_gradients(registry, router, experts):
    torch.manual_seed(0)
    moe = build_moe(registry, router=router, experts=experts, balance_weight=0.01).train()
    x, mask = batch()
    x.requires_grad_(True)
    out = moe(x, mask)
    assert isinstance(out, MoEOutput)
    assert out.y.shape == x.shape
    assert torch.equal(out.y[~mask], x[~mask])  # residual input at padding
    assert out.routing.gate.shape[0] == int(mask.sum())
    loads = [out.stats[f"text.moe.load.{e}"] for e in range(E)]
    assert sum(loads) == pytest.approx(1.0) and all(isinstance(v, float) for v in out.stats.values())
    assert 1.0 <= out.stats["text.moe.experts_per_token"] <= E
    assert 0.0 <= out.stats["text.moe.entropy"] <= torch.log(torch.tensor(float(E))).item() + 1e-6
    (out.y.square().sum() + sum(out.aux_losses.values())).backward()
    assert moe.router.gate.weight.grad.abs().sum() > 0
    assert x.grad[mask].abs().sum() > 0
    moe.eval()
    a, b = moe(x, mask), moe(x, mask)
    assert torch.equal(a.y, b.y)  # deterministic at evaluation


def test_block_without_residual_outputs_zero_at_padding_and_router_sees_only_real_tokens(registry):
    torch.manual_seed(0)
    moe = build_moe(registry, router="topk", experts="ffn", residual=False, norm=False, dropout=0.0)
    x, mask = batch()
    seen = []
    moe.router.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    y = moe(x, mask).y
    assert (y[~mask] == 0).all()
    assert torch.equal(seen[0], x[mask])


def test_block_with_no_real_tokens(registry):
    moe = build_moe(registry, balance_weight=0.1)
    x = torch.randn(2, 3, D)
    out = moe(x, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out.y, x) and out.stats == {}
    assert out.aux_losses["text.moe.balance"].item() == 0.0


def test_registered_components_and_config_errors(registry):
    assert {"sigma_gumbel", "topk", "noisy_topk", "top_p"} <= set(registry.names("router"))
    assert {"bigru", "ffn"} <= set(registry.names("experts"))
    assert "sdmoe" in registry.names("moe")
    _, problems = validate_node("moe", {"type": "sdmoe", "router": {"type": "sigma_gumbel", "stat_axis": "token"}}, registry)
    assert problems and "stat_axis" in problems[0] and "tokens" in problems[0]
    _, problems = validate_node("moe", {"type": "sdmoe", "experts": {"type": "ffn", "kernal": "naive"}}, registry)
    assert problems and "kernel" in problems[0]
    router = registry.get("router", "topk")
    assert isinstance(router.factory(router.config_cls(), dim=D, num_experts=E, extra="ignored"), TopKRouter)
