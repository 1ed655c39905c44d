"""The baselines' components: the ``bigru`` and ``linear`` encoders, the ``concat`` and ``sdt_gated`` fusions.

The baselines are assembled by the engine's ``multimodal`` model (:mod:`mercore.nn.multimodal`; text-only: one modality and
no fusion; concatenation; SDT: ``linear`` encoders + ``sdt_gated`` + unimodal heads with self-distillation).
"""

from mercore.hookspecs import hookimpl

from mercore_baselines.encoders import BiGRUEncoder, LinearEncoder
from mercore_baselines.fusion import ConcatFusion, SDTGatedFusion


@hookimpl
def register_components(register):
    register("encoder", "bigru", BiGRUEncoder)
    register("encoder", "linear", LinearEncoder)
    register("fusion", "concat", ConcatFusion)
    register("fusion", "sdt_gated", SDTGatedFusion)
