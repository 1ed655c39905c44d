"""SUMMER's Sparse Dynamic Mixture of Experts as components: routers, experts and the MoE block.

``register_moe(register)`` registers them; ``mercore_summer.plugin`` calls it from its hook. What they
exchange (:class:`~mercore.nn.Routing`, :class:`~mercore.nn.MoEOutput`) and their protocols are the engine's,
in :mod:`mercore.nn.moe`.

==========  ==============  =====================================================================
kind        name            class
==========  ==============  =====================================================================
router      sigma_gumbel    :class:`~.routing.SigmaGumbelRouter` (the paper's gate)
router      topk            :class:`~.routing.TopKRouter`
router      noisy_topk      :class:`~.routing.NoisyTopKRouter`
router      top_p           :class:`~.routing.TopPRouter`
experts     bigru           :class:`~.experts.BiGRUExperts` (the paper's context experts)
experts     ffn             :class:`~.experts.FFNExperts` (fused MoE kernel)
moe         sdmoe           :class:`~.block.SDMoE`
==========  ==============  =====================================================================
"""

from __future__ import annotations

from typing import Callable

from .block import SDMoE, balance_loss, expert_fractions, router_z_loss
from .experts import BiGRUExperts, FFNExperts
from .routing import NoisyTopKRouter, SigmaGumbelRouter, TopKRouter, TopPRouter, router_entropy

COMPONENTS: tuple[tuple[str, str, type], ...] = (
    ("router", "sigma_gumbel", SigmaGumbelRouter),
    ("router", "topk", TopKRouter),
    ("router", "noisy_topk", NoisyTopKRouter),
    ("router", "top_p", TopPRouter),
    ("experts", "bigru", BiGRUExperts),
    ("experts", "ffn", FFNExperts),
    ("moe", "sdmoe", SDMoE),
)


def register_moe(register: Callable[..., object]) -> None:
    """Register the MoE routers, experts and block with a plugin's ``register`` callable."""
    for kind, name, cls in COMPONENTS:
        register(kind, name, cls)


__all__ = [
    "BiGRUExperts",
    "COMPONENTS",
    "FFNExperts",
    "NoisyTopKRouter",
    "SDMoE",
    "SigmaGumbelRouter",
    "TopKRouter",
    "TopPRouter",
    "balance_loss",
    "expert_fractions",
    "register_moe",
    "router_entropy",
    "router_z_loss",
]
