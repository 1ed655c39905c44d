"""mercore's built-in ``multimodal`` model, losses, optimizers, schedulers and the ``jsonl`` logger, registered like any third-party plugin.

The ``multimodal`` model assembles encoders, MoE, fusion and head of any plugin; it lives in the engine
(:mod:`mercore.nn.multimodal`) because no component plugin owns it.
"""

from mercore.hookspecs import hookimpl
from mercore.nn.multimodal import MultimodalModel

from mercore_core.loggers import JsonlLogger
from mercore_core.losses import CrossEntropyLoss
from mercore_core.optim import AdamConfig, AdamWConfig, WarmupCosineConfig, adam, adamw, constant, warmup_cosine


@hookimpl
def register_components(register):
    register("model", "multimodal", MultimodalModel)
    register("loss", "cross_entropy", CrossEntropyLoss)
    register("optimizer", "adamw", adamw, config=AdamWConfig)
    register("optimizer", "adam", adam, config=AdamConfig)
    register("scheduler", "warmup_cosine", warmup_cosine, config=WarmupCosineConfig)
    register("scheduler", "constant", constant)
    register("logger", "jsonl", JsonlLogger)
