"""Mixture-of-experts expert computation: one fused kernel (plain torch + einops, no compiled extension).

Shapes used throughout:

* ``N`` tokens, model width ``d``, expert hidden width ``h``, ``E`` experts, ``k`` routing slots per token.
* ``x``: ``(N, d)``; ``w1``: ``(E, d, h)``; ``w2``: ``(E, h, d)``; optional ``b1``: ``(E, h)``, ``b2``: ``(E, d)``;
  optional ``w3``: ``(E, d, h)`` turns each expert into a gated (GLU) MLP ``(act(x @ w1) * (x @ w3)) @ w2``.
* Routing, padded form (the main one): ``expert_idx`` ``(N, k)`` long and ``gate`` ``(N, k)`` float.
  ``expert_idx == -1`` means "no expert in this slot" (its gate is ignored and gets a zero gradient).
* Routing, flat form: ``A`` assignments ``token_idx``, ``expert_idx``, ``weight``, each ``(A,)``.
* Output ``(N, d)``: for every token, the sum over its assigned experts ``e`` of ``gate * expert_e(x)``.

Modules, one idea each: ``routing`` (the sort, counts, offsets), ``padded`` / ``grouped`` / ``sync_free`` (the
row layouts), ``combine`` (the un-permutation the layouts hold), ``function`` (the autograd Function),
``activations``, ``api`` (:func:`fused_moe`, :func:`fused_moe_flat`), ``reference`` (:func:`naive_moe`, the
correctness reference). The benchmark-only variants (dense, capacity, floor) live in ``benchmarks/``. Design
rationale and measurements: ``DESIGN.md`` beside this file.
"""

from __future__ import annotations

from .activations import ACTIVATIONS, Activation
from .api import Impl, fused_moe, fused_moe_flat
from .grouped import grouped_mm_available
from .reference import naive_moe
from .routing import DeviceRouting, MoERouting, padded_to_flat, sort_assignments, sort_assignments_on_device

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "DeviceRouting",
    "Impl",
    "MoERouting",
    "fused_moe",
    "fused_moe_flat",
    "grouped_mm_available",
    "naive_moe",
    "padded_to_flat",
    "sort_assignments",
    "sort_assignments_on_device",
]
