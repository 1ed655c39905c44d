"""Fixtures of the MoE kernel tests in this folder."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def _make_moe_inputs(
    n: int, d: int, h: int, e: int, k: int, *, bias: bool = False, glu: bool = False, drop: float = 0.0,
    dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
) -> dict:
    """Random leaves requiring grad (``x``, ``w1``, ``w2``, ``gate``, optional ``b1``, ``b2``, ``w3``) and top-k
    routing ``expert_idx`` ``(n, k)`` with a fraction ``drop`` of slots set to -1."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    top = torch.randn(n, e, generator=g).topk(k, dim=-1)
    expert_idx = top.indices
    if drop > 0:
        expert_idx = torch.where(torch.rand(n, k, generator=g) < drop, -1, expert_idx)
    return {
        "x": rnd(n, d),
        "w1": rnd(e, d, h, scale=d**-0.5),
        "w2": rnd(e, h, d, scale=h**-0.5),
        "expert_idx": expert_idx.to(device),
        "gate": top.values.softmax(-1).to(device=device, dtype=dtype).requires_grad_(),
        "b1": rnd(e, h, scale=0.1) if bias else None,
        "b2": rnd(e, d, scale=0.1) if bias else None,
        "w3": rnd(e, d, h, scale=d**-0.5) if glu else None,
    }


@pytest.fixture
def moe_inputs() -> Callable[..., dict]:
    """``moe_inputs(n, d, h, e, k, bias=, glu=, drop=, dtype=, device=, seed=)`` -> dict of kernel inputs."""
    return _make_moe_inputs


@pytest.fixture
def moe_outputs() -> Callable[..., dict]:
    """``moe_outputs(fn, p, activation="gelu", seed=1, **kw)`` -> the output and the gradient of every leaf of
    ``p`` (zeros where unused) for a fixed random output gradient."""

    def run(fn, p: dict, activation: str = "gelu", seed: int = 1, **kw) -> dict[str, torch.Tensor]:
        out = fn(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"],
                 b1=p["b1"], b2=p["b2"], w3=p["w3"], activation=activation, **kw)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
        names = [n for n in ("x", "w1", "w2", "gate", "b1", "b2", "w3") if p[n] is not None]
        grads = torch.autograd.grad(out, [p[n] for n in names], grad_out, allow_unused=True) \
            if out.requires_grad else (None,) * len(names)
        res = {"out": out.detach()}
        for n, gr in zip(names, grads):
            res[n] = torch.zeros_like(p[n]) if gr is None else gr
        return res

    return run


def assert_outputs_match(got: dict, ref: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        a, b = got[name].float(), ref[name].float()
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


@pytest.fixture
def assert_match() -> Callable[..., None]:
    """``assert_match(got, ref, rtol=1e-4, atol=1e-5)``: same keys, every tensor close (atol scaled by max)."""
    return assert_outputs_match
