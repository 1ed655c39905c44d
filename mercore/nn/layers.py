"""Attention layers shared by components of every plugin: multi-head attention that returns its weights,
pre-norm Transformer layers (self- or cross-attention) and sinusoidal position encodings.

Every module here works on padded dialogue batches: ``x (B, T, D)`` with a bool ``mask (B, T)`` (True = real
utterance). Attention never reads a padded key, so the outputs at real positions do not depend on what the
padded positions hold.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from einops import rearrange
from torch import nn

#: A hook on attention logits ``(B, h, Tq, Tk)`` (padded keys already at the dtype's minimum) -> logits.
LogitHook = Callable[[torch.Tensor], torch.Tensor]


def sinusoidal_positions(length: int, dim: int, *, device=None, dtype=None) -> torch.Tensor:
    """``(length, dim)`` sinusoidal position encodings (Vaswani et al. 2017), as SDT's ``PositionalEncoding``:
    ``pe[p, 2i] = sin(p / 10000^(2i/dim))``, ``pe[p, 2i+1] = cos(...)``; an odd ``dim`` drops the last cosine."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.to(dtype) if dtype is not None else pe


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention that returns its weights.

    Shapes: ``query (B, Tq, D)``, ``context (B, Tk, D)``, ``key_mask (B, Tk)`` bool -> ``(out (B, Tq, D),
    attn (B, h, Tq, Tk))``; ``attn`` is the softmax before dropout, exactly 0 at padded keys.

    ``logit_hook`` (teacher guidance) receives the scaled logits with padded keys at the dtype's minimum and
    returns modified logits; padded keys are masked again afterwards, so a hook cannot open them.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, *, name: str = "attention"):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"{name}: hidden size {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor,
                logit_hook: LogitHook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.heads
        q = rearrange(self.to_q(query), "b i (h d) -> b h i d", h=h)
        k = rearrange(self.to_k(context), "b j (h d) -> b h j d", h=h)
        v = rearrange(self.to_v(context), "b j (h d) -> b h j d", h=h)
        logits = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale  # (B, h, Tq, Tk)
        closed = ~key_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
        neg = torch.finfo(logits.dtype).min  # not -inf: a row without real keys stays finite (uniform)
        logits = logits.masked_fill(closed, neg)
        if logit_hook is not None:
            logits = logit_hook(logits).masked_fill(closed, neg)
        attn = logits.softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", self.dropout(attn), v)
        return self.to_out(rearrange(out, "b h i d -> b i (h d)")), attn


#: Where a :class:`TransformerLayer` normalizes the inputs of its attention: ``pre`` (the query and a
#: cross-attention's context, each by its LayerNorm), ``query`` (the query only; self-attention's keys are that
#: normed query, a cross-attention's context is read raw) or ``none``.
AttentionNorm = Literal["pre", "query", "none"]


class FeedForward(nn.Module):
    """``Linear(D, mult*D) -> GELU -> Dropout -> Linear(mult*D, D)``; ``(B, T, D) -> (B, T, D)``.

    ``gelu``: ``exact`` (erf) or ``tanh`` (the tanh approximation, SDT's ``gelu``).
    """

    def __init__(self, dim: int, mult: float = 4.0, dropout: float = 0.0, *, gelu: Literal["exact", "tanh"] = "exact"):
        super().__init__()
        inner = max(1, int(round(dim * mult)))
        act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.net = nn.Sequential(nn.Linear(dim, inner), act, nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerLayer(nn.Module):
    """A pre-norm Transformer layer, self- or cross-attention (Xiong et al. 2020's pre-LN ordering).

    ``x = x + drop(attn(LN(x), LN_kv(context)))``; ``x = x + drop(ff(LN(x)))``. Self-attention when
    ``context`` is None (keys are the normed ``x``); cross-attention (``cross=True``) otherwise: ``x`` is the
    query, ``context`` the keys/values, normed by its own LayerNorm.

    Shapes: ``x (B, T, D)``, ``mask (B, T)`` (the keys' mask; query and context share the utterance axis in a
    dialogue), ``context (B, T, D)`` -> ``(y (B, T, D), attn (B, h, T, T))``.

    The defaults are the pre-LN layer above. SDT's layer differs in three places, each an option:
    ``attention_norm`` (:data:`AttentionNorm`; SDT: ``none`` in its first layer, ``query`` after),
    ``norm_eps`` (SDT: 1e-6) and ``gelu`` (SDT: ``tanh``); its feed-forward is pre-normed as here.
    """

    def __init__(self, dim: int, heads: int, ff_mult: float = 4.0, dropout: float = 0.1, *, cross: bool = False,
                 name: str = "layer", attention_norm: AttentionNorm = "pre", norm_eps: float = 1e-5,
                 gelu: Literal["exact", "tanh"] = "exact"):
        super().__init__()
        if attention_norm not in ("pre", "query", "none"):
            raise ValueError(f"{name}: attention_norm must be pre, query or none, got {attention_norm!r}")
        self.cross = cross
        # No LayerNorm module where none is applied, so the state dict holds only the norms in use.
        self.norm_q = nn.LayerNorm(dim, eps=norm_eps) if attention_norm != "none" else None
        self.norm_kv = nn.LayerNorm(dim, eps=norm_eps) if cross and attention_norm == "pre" else None
        self.attn = MultiHeadAttention(dim, heads, dropout, name=name)
        self.norm_ff = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, ff_mult, dropout, gelu=gelu)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None,
                logit_hook: LogitHook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm_q(x) if self.norm_q is not None else x
        if context is None:
            kv = q
        else:
            if not self.cross:
                raise ValueError("this layer was built for self-attention (cross=False) but got a context")
            kv = self.norm_kv(context) if self.norm_kv is not None else context
        a, attn = self.attn(q, kv, mask, logit_hook)
        x = x + self.dropout(a)
        x = x + self.dropout(self.ff(self.norm_ff(x)))
        return x, attn


__all__ = ["AttentionNorm", "FeedForward", "LogitHook", "MultiHeadAttention", "TransformerLayer", "sinusoidal_positions"]
