"""Routers of the SDMoE block: shapes, the sigma band mask, Gumbel at eval, top-k / top-p selection, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from mercore.nn import Routing
from mercore_summer.moe import NoisyTopKRouter, SigmaGumbelRouter, TopKRouter, TopPRouter

D, E = 8, 4


def make(cls, dim=D, num_experts=E, **options):
    return cls(cls.Config(**options), dim=dim, num_experts=num_experts)


ROUTERS = [
    (SigmaGumbelRouter, {}),
    (SigmaGumbelRouter, {"hard": True, "stat_axis": "batch"}),
    (SigmaGumbelRouter, {"stat_axis": "experts"}),
    (TopKRouter, {"k": 2}),
    (TopKRouter, {"k": 1}),
    (NoisyTopKRouter, {"k": 2}),
    (TopPRouter, {"p": 0.5}),
    (TopPRouter, {"p": 0.9, "max_k": 2}),
]


def check_routing(r: Routing, n: int, num_experts: int = E, sums_to_one: bool = True) -> None:
    k = r.expert_idx.shape[1]
    assert r.expert_idx.shape == r.gate.shape == (n, k)
    assert r.probs.shape == r.logits.shape == (n, num_experts)
    assert r.expert_idx.dtype == torch.long
    assert ((r.expert_idx >= -1) & (r.expert_idx < num_experts)).all()
    assert r.used.any(dim=1).all(), "every token uses at least one expert"
    assert (r.gate[~r.used] == 0).all()
    assert torch.allclose(r.probs.sum(-1), torch.ones(n), atol=1e-5)
    # no expert twice in a row
    for row in r.expert_idx.tolist():
        used = [e for e in row if e >= 0]
        assert len(used) == len(set(used))
    if sums_to_one:
        assert torch.allclose(r.gate.sum(-1), torch.ones(n), atol=1e-5)


@pytest.mark.parametrize("cls,options", ROUTERS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("training", [True, False])
def test_router_shapes_and_invariants(cls, options, training):
    torch.manual_seed(0)
    router = make(cls, **options).train(training)
    x = torch.randn(13, D)
    r = router(x)
    check_routing(r, 13)
    assert torch.allclose(r.dense_gate(E).sum(-1), torch.ones(13), atol=1e-5)


@pytest.mark.parametrize("cls,options", ROUTERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_router_handles_zero_tokens(cls, options):
    r = make(cls, **options)(torch.zeros(0, D))
    assert r.gate.shape[0] == r.expert_idx.shape[0] == r.probs.shape[0] == 0


# -- sigma_gumbel -----------------------------------------------------------------------------------------------


def test_sigma_mask_tokens_axis_switches_off_out_of_band_logits():
    # Expert 0's logits over 10 tokens: nine 0 and one 10 -> mean 1, std 3; the 10 is 3 std out (> 2): off.
    logits = torch.zeros(10, E)
    logits[9, 0] = 10.0
    logits[:, 1:] = torch.linspace(-0.5, 0.5, 10).unsqueeze(1)  # uniform-ish, all within 2 std
    router = make(SigmaGumbelRouter, stat_axis="tokens", eval_stats="batch").eval()
    r = router.route_logits(logits)
    keep = torch.ones(10, E, dtype=torch.bool)
    keep[9, 0] = False
    assert torch.equal(r.expert_idx >= 0, keep)
    assert torch.equal(r.expert_idx[keep], torch.arange(E).expand(10, E)[keep])
    assert r.gate[9, 0] == 0 and r.probs[9, 0] == 0
    expected = torch.softmax(logits.masked_fill(~keep, -math.inf), dim=-1)
    assert torch.allclose(r.gate, expected)
    assert torch.equal(r.logits, logits)  # raw logits, unmasked


def test_sigma_mask_low_outliers_are_switched_off_too():
    logits = torch.zeros(10, E)
    logits[3, 2] = -10.0
    r = make(SigmaGumbelRouter, eval_stats="batch").eval().route_logits(logits)
    assert r.expert_idx[3, 2] == -1 and (r.expert_idx.flatten() >= 0).sum() == 10 * E - 1


def test_sigma_mask_experts_axis():
    # 8 experts: [10, 0 x 7] -> mean 1.25, std 3.31, z(10) = 2.65 > 2: off; z(0) = 0.38: kept.
    logits = torch.tensor([[10.0] + [0.0] * 7, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    router = make(SigmaGumbelRouter, num_experts=8, stat_axis="experts").eval()
    r = router.route_logits(logits)
    assert r.expert_idx[0].tolist() == [-1, 1, 2, 3, 4, 5, 6, 7]
    assert r.expert_idx[1].tolist() == list(range(8))  # evenly spread: nothing out of band


def test_sigma_mask_experts_axis_is_a_no_op_with_four_experts():
    # The documented reason the default is not "experts": among 4 values no z-score exceeds sqrt(3) = 1.73 < c = 2.
    torch.manual_seed(0)
    logits = torch.randn(200, 4) * torch.tensor([1.0, 10.0, 100.0, 0.1])
    logits[0] = torch.tensor([100.0, 0.0, 0.0, 0.0])
    r = make(SigmaGumbelRouter, stat_axis="experts").eval().route_logits(logits)
    assert r.used.all()


def test_sigma_mask_batch_axis():
    logits = torch.zeros(6, E)
    logits[2, 1] = 20.0  # mean 20/24, std ~4, z ~ 4.7
    r = make(SigmaGumbelRouter, stat_axis="batch", eval_stats="batch").eval().route_logits(logits)
    assert (~r.used).nonzero().tolist() == [[2, 1]]


def test_sigma_all_masked_token_keeps_its_argmax():
    # Token 9 is an outlier for both experts (z = 3 in each column): both are off, so the guard keeps the argmax.
    logits = torch.zeros(10, 2)
    logits[9] = torch.tensor([10.0, 12.0])
    r = make(SigmaGumbelRouter, num_experts=2, eval_stats="batch").eval().route_logits(logits)
    assert r.expert_idx[9].tolist() == [-1, 1]
    assert r.gate[9].tolist() == [0.0, 1.0]
    assert r.used[:9].all()


def test_sigma_zero_std_switches_off_nothing():
    r = make(SigmaGumbelRouter).train().route_logits(torch.ones(1, E))  # one token: std 0 over tokens
    assert r.used.all()


def test_sigma_gumbel_eval_is_deterministic_softmax_and_training_is_noisy():
    torch.manual_seed(0)
    router = make(SigmaGumbelRouter, tau=0.5, eval_stats="batch")
    x = torch.randn(32, D)
    router.eval()
    a, b = router(x), router(x)
    assert torch.equal(a.gate, b.gate)
    logits = router.gate(x)
    masked = logits.masked_fill(~a.used, -math.inf)
    assert torch.allclose(a.gate, torch.softmax(masked / 0.5, dim=-1), atol=1e-6)
    assert torch.allclose(a.probs, a.gate, atol=1e-6)
    router.train()
    c, d = router(x), router(x)
    assert not torch.allclose(c.gate, d.gate)  # Gumbel noise
    assert torch.equal(c.used, a.used)  # same band mask: it depends on the logits only
    assert torch.allclose(c.probs, a.probs, atol=1e-6)  # probs are noise-free


def test_sigma_hard_is_one_hot_with_straight_through_gradient():
    torch.manual_seed(0)
    router = make(SigmaGumbelRouter, hard=True).train()
    x = torch.randn(16, D)
    r = router(x)
    assert ((r.gate == 0) | (r.gate == 1)).all() and torch.allclose(r.gate.sum(-1), torch.ones(16))
    # every surviving expert stays selected (zero forward weight) so it receives the straight-through gradient
    assert r.used.sum() > 16
    (r.gate * torch.randn(16, E)).sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0
    router.eval()
    r = router(x)
    assert torch.equal(r.gate.argmax(-1), router.gate(x).masked_fill(~r.used, -math.inf).argmax(-1))


def test_sigma_running_stats_make_eval_independent_of_the_batch():
    torch.manual_seed(0)
    router = make(SigmaGumbelRouter)  # stat_axis tokens, eval_stats running
    router.train()
    for _ in range(3):
        router(torch.randn(64, D))
    assert int(router.num_batches_tracked) == 3
    router.eval()
    x = torch.randn(20, D) * 3
    whole = router(x)
    for i in range(0, 20, 7):
        part = router(x[i : i + 7])
        assert torch.equal(part.expert_idx, whole.expert_idx[i : i + 7])
        assert torch.allclose(part.gate, whole.gate[i : i + 7])


# -- top-k, noisy top-k --------------------------------------------------------------------------------------


def test_topk_picks_the_k_largest():
    torch.manual_seed(0)
    router = make(TopKRouter, num_experts=6, k=3)
    logits = torch.randn(50, 6)
    r = router.route_logits(logits)
    probs = torch.softmax(logits, -1)
    for n in range(50):
        expected = sorted(range(6), key=lambda e: -probs[n, e].item())[:3]
        assert set(r.expert_idx[n].tolist()) == set(expected)
        assert torch.allclose(r.gate[n], probs[n, r.expert_idx[n]] / probs[n, expected].sum())
    raw = make(TopKRouter, num_experts=6, k=3, normalize=False).route_logits(logits)
    assert torch.allclose(raw.gate, probs.gather(1, raw.expert_idx))


def test_noisy_topk_clean_at_eval_noisy_in_training():
    torch.manual_seed(0)
    router = make(NoisyTopKRouter, k=2)
    x = torch.randn(40, D)
    router.eval()
    r = router(x)
    ref = make(TopKRouter, k=2).route_logits(router.gate(x))
    assert torch.equal(r.expert_idx, ref.expert_idx) and torch.allclose(r.gate, ref.gate)
    router.train()
    a, b = router(x), router(x)
    assert not torch.equal(a.probs, b.probs)
    (a.gate * torch.randn_like(a.gate)).sum().backward()
    assert router.noise.weight.grad.abs().sum() > 0  # the learned noise std is trained


# -- top-p ---------------------------------------------------------------------------------------------------


def top_p_by_hand(probs: list[float], p: float, max_k: int) -> list[int]:
    order = sorted(range(len(probs)), key=lambda e: -probs[e])
    taken, mass = [], 0.0
    for e in order[:max_k]:
        taken.append(e)
        mass += probs[e]
        if mass >= p:
            break
    return taken


@pytest.mark.parametrize(
    "p,max_k,expected",
    [
        (0.4, None, [2, -1, -1, -1]),  # 0.5 >= 0.4 after one expert
        (0.7, None, [2, 1, -1, -1]),  # 0.5 < 0.7 <= 0.8
        (0.9, None, [2, 1, 3, -1]),  # 0.8 < 0.9 <= 0.95
        (1.0, None, [2, 1, 3, 0]),
        (0.99, 2, [2, 1]),  # capped at max_k
    ],
)
def test_top_p_takes_the_minimal_prefix(p, max_k, expected):
    probs = torch.tensor([[0.05, 0.3, 0.5, 0.15]])
    router = make(TopPRouter, p=p, max_k=max_k)
    r = router.route_logits(probs.log())
    assert r.expert_idx[0].tolist() == expected
    taken = [e for e in expected if e >= 0]
    want = torch.zeros(len(expected))
    want[: len(taken)] = probs[0, taken] / probs[0, taken].sum()
    assert torch.allclose(r.gate[0], want)


def test_top_p_against_hand_computation_on_random_tokens():
    torch.manual_seed(1)
    logits = torch.randn(64, 6) * 2
    for p, max_k in [(0.3, None), (0.6, None), (0.8, 3)]:
        r = make(TopPRouter, num_experts=6, p=p, max_k=max_k).route_logits(logits)
        probs = torch.softmax(logits, -1)
        for n in range(64):
            want = top_p_by_hand(probs[n].tolist(), p, max_k or 6)
            got = r.expert_idx[n].tolist()
            assert got[: len(want)] == want and all(e == -1 for e in got[len(want) :])
        check_routing(r, 64, num_experts=6)


# -- gradients -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,options",
    [
        (SigmaGumbelRouter, {}),
        (TopKRouter, {"k": 2}),
        (NoisyTopKRouter, {"k": 2}),
        (TopPRouter, {"p": 0.9}),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_gradients_reach_router_weights_through_the_gate(cls, options):
    torch.manual_seed(0)
    router = make(cls, **options).train()
    x = torch.randn(24, D)
    r = router(x)
    values = torch.randn(24, E)  # stands in for the experts' outputs
    (r.dense_gate(E) * values).sum().backward()
    assert router.gate.weight.grad is not None and router.gate.weight.grad.abs().sum() > 0
