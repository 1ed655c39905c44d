"""Experts (kind ``experts``): E expert networks combined per token with a router's gate.

Every experts component is built as ``Experts(config, dim=D, num_experts=E)`` and called as
``experts(x (B, T, D), mask (B, T), routing) -> (B, T, D)``, where ``routing`` holds one row per real token in
``x[mask]`` (row-major) order. Padded positions of the output are zero.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mercore.config import option
from mercore.nn.moe import Routing


def _scatter_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` real-token rows back to ``(B, T, D)`` with zeros at padding."""
    out = tokens.new_zeros(*mask.shape, tokens.shape[-1])
    return out.masked_scatter(mask.unsqueeze(-1), tokens)


def _compact(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each dialogue's real utterances to the front, keeping their order (a no-op for a prefix mask).

    Returns ``(x_compact (B, T, D), lengths (B,))``: ``x_compact[b, :lengths[b]]`` are dialogue b's real utterances.
    """
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # real positions first, in order
    x_c = x.gather(1, order.unsqueeze(-1).expand_as(x))
    return x_c, mask.sum(dim=1)


class BiGRUExperts(nn.Module):
    """SUMMER's context experts: each expert is a bidirectional GRU over the dialogue, projected back to D.

    Shapes: ``x (B, T, D)``, ``mask (B, T)`` bool, ``routing`` over the ``N = mask.sum()`` real tokens ->
    ``(B, T, D)``.

    A GRU needs the whole sequence, so every expert that any token of the batch selected runs over every
    dialogue (real utterances only: they are packed with ``pack_padded_sequence`` after moving them to the
    front of their row, so padding never enters the recurrence, whatever the mask's layout); its per-utterance
    output ``Linear(2H, D)(GRU(x))`` is then weighted by that utterance's gate, 0 for experts it did not select:
    ``y[n] = sum_e gate[n, e] * expert_e(dialogue)[n]``. An expert selected by no token is skipped.

    The E GRUs run as a Python loop over E separate ``nn.GRU`` modules, the alternatives having been measured
    (``benchmarks/summer_epoch.py --experts``): ``torch.func.vmap`` over stacked GRU weights does not run (torch
    has no batching rule for ``aten::gru``); one GRU of E*H hidden units with block-diagonal weights is the same
    function in one call but at E times the recurrent FLOPs and not bit-identical (its sums run in another
    order), so it is not used; one CUDA stream per expert is exact and is measured on CUDA only.
    The host reads once per call (dialogue lengths for packing, and which experts any token selected).
    The hidden size per direction (``hidden``) defaults to D // 2, so both directions concatenated are D wide,
    as usual for bi-GRU context encoders (DialogueRNN/DialogueGCN style); the paper does not give it.
    """

    @attrs.define
    class Config:
        hidden: int | None = option(None, help="GRU hidden size per direction (null: dim // 2)")
        num_layers: int = option(1, help="stacked GRU layers per expert")
        dropout: float = option(0.0, help="dropout between stacked GRU layers (num_layers > 1 only)")

    def __init__(self, config: Config, *, dim: int, num_experts: int, **_: object):
        super().__init__()
        self.config = config
        self.dim = dim
        self.num_experts = num_experts
        hidden = config.hidden if config.hidden is not None else max(1, dim // 2)
        self.hidden = hidden
        self.grus = nn.ModuleList(
            nn.GRU(
                dim,
                hidden,
                num_layers=config.num_layers,
                batch_first=True,
                bidirectional=True,
                dropout=config.dropout if config.num_layers > 1 else 0.0,
            )
            for _ in range(num_experts)
        )
        self.proj = nn.ModuleList(nn.Linear(2 * hidden, dim) for _ in range(num_experts))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, routing: Routing) -> torch.Tensor:
        mask = mask.bool()
        b, t, d = x.shape
        gate = routing.dense_gate(self.num_experts)  # (N, E)
        x_c, lengths = _compact(x, mask)
        # The host must know the dialogue lengths (packing takes them on the CPU) and which experts any token
        # selected (the others are skipped): one read for both (on CUDA one device sync per layer, not three).
        host = torch.cat([routing.selection(self.num_experts).any(dim=0).long(), lengths.long()]).cpu()
        selected, lengths_host = host[: self.num_experts].tolist(), host[self.num_experts :]
        keep = torch.nonzero(lengths_host > 0).flatten()  # non-empty dialogues, on the host
        if keep.numel() == 0:
            return x.new_zeros(b, t, d)
        lengths_ne = lengths_host[keep]
        if keep.numel() < b:  # some dialogues have no real utterance: leave them out of the recurrence
            x_c = x_c[keep.to(x.device, non_blocking=True)]
        # The same packed batch serves every expert.
        packed = pack_padded_sequence(x_c, lengths_ne, batch_first=True, enforce_sorted=False)
        # Real positions in compacted layout, the first lengths[b] of each non-empty row, as row indices of the
        # flattened (B' * T) output: built on the host, so selecting them needs no device sync (a boolean mask
        # would: its result size lives on the device).
        real_c = torch.arange(t).unsqueeze(0) < lengths_ne.unsqueeze(1)  # (B', T)
        rows = torch.nonzero(real_c.flatten()).flatten().to(x.device, non_blocking=True)  # (N,)
        out = x.new_zeros(gate.shape[0], d)  # (N, D)
        for e in range(self.num_experts):
            if not selected[e]:
                continue
            h, _ = self.grus[e](packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=t)  # (B', T, 2H)
            y = self.proj[e](h.flatten(0, 1).index_select(0, rows))  # (N, D) in compacted row-major order
            out = out + gate[:, e : e + 1] * y
        # Compacted row-major order equals x[mask] row-major order (stable compaction keeps utterance order,
        # and empty dialogues hold no tokens), so the rows map straight back.
        return _scatter_tokens(out, mask)


class FFNExperts(nn.Module):
    """Feed-forward experts computed by mercore's fused MoE kernel (:func:`mercore.kernels.moe.fused_moe`).

    Shapes: ``x (B, T, D)``, ``mask (B, T)``, ``routing`` over the ``N`` real tokens -> ``(B, T, D)``.
    Parameters ``w1 (E, D, H)``, ``w2 (E, H, D)``, biases ``b1 (E, H)``, ``b2 (E, D)`` (``bias``), and with ``glu``
    a third ``w3 (E, D, H)``: expert_e(x) = ``(act(x w1_e + b1_e) * (x w3_e)) w2_e + b2_e`` (SwiGLU with ``silu``,
    Shazeer 2020). The real tokens ``x[mask]`` (``N, D``) are routed; the result is
    ``sum over used slots of gate * expert(x)``. ``kernel: fused`` (default) runs the fused grouped-matmul
    kernel, ``naive`` the reference loop over experts (same function). ``hidden`` defaults to 4 D (Transformer
    / Switch); initialisation is that of ``nn.Linear`` per expert.
    """

    @attrs.define
    class Config:
        hidden: int | None = option(None, help="expert hidden width (null: 4 * dim)")
        activation: Literal["gelu", "relu", "silu"] = option("gelu", help="expert activation")
        glu: bool = option(False, help="gated (GLU) experts with a third matrix w3")
        bias: bool = option(True, help="biases b1, b2")
        kernel: Literal["fused", "naive"] = option("fused", help="fused kernel or the reference expert loop")

    def __init__(self, config: Config, *, dim: int, num_experts: int, **_: object):
        super().__init__()
        self.config = config
        self.dim = dim
        self.num_experts = num_experts
        hidden = config.hidden if config.hidden is not None else 4 * dim
        self.hidden = hidden
        e = num_experts
        self.w1 = nn.Parameter(torch.empty(e, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(e, hidden, dim))
        self.w3 = nn.Parameter(torch.empty(e, dim, hidden)) if config.glu else None
        self.b1 = nn.Parameter(torch.empty(e, hidden)) if config.bias else None
        self.b2 = nn.Parameter(torch.empty(e, dim)) if config.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
        for w, fan_in in ((self.w1, self.dim), (self.w3, self.dim), (self.b1, self.dim), (self.w2, self.hidden), (self.b2, self.hidden)):
            if w is not None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(w, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, routing: Routing) -> torch.Tensor:
        from mercore.kernels import moe as kernels  # lazy: the kernel module is only needed here

        mask = mask.bool()
        tokens = x[mask]  # (N, D)
        fn = kernels.fused_moe if self.config.kernel == "fused" else kernels.naive_moe
        out = fn(
            tokens,
            self.w1,
            self.w2,
            routing.expert_idx,
            routing.gate.to(tokens.dtype),
            b1=self.b1,
            b2=self.b2,
            w3=self.w3,
            activation=self.config.activation,
        )
        return _scatter_tokens(out, mask)


__all__ = ["BiGRUExperts", "FFNExperts"]
