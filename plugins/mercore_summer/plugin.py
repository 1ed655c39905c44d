"""SUMMER's components: the ``transformer`` encoder, the ``hcmf`` fusion, the ``linear``, ``relu_linear`` and ``mlp`` heads, the
``ikd`` distiller, and (from :mod:`mercore_summer.moe`) the SDMoE routers, experts and block. The ``multimodal``
model that assembles them is the engine's (:mod:`mercore.nn.multimodal`, registered by ``mercore_core``).
"""

from mercore.hookspecs import hookimpl

from mercore_summer.encoders import TransformerEncoder
from mercore_summer.fusion import HCMF
from mercore_summer.heads import LinearHead, MLPHead, ReluLinearHead
from mercore_summer.ikd import IKDistiller
from mercore_summer.moe import register_moe


@hookimpl
def register_components(register):
    register("encoder", "transformer", TransformerEncoder)
    register("fusion", "hcmf", HCMF)
    register("head", "linear", LinearHead)
    register("head", "relu_linear", ReluLinearHead)
    register("head", "mlp", MLPHead)
    register("distiller", "ikd", IKDistiller)
    register_moe(register)
