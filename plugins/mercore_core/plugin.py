"""mercore's built-in losses, optimizers and schedulers, registered like any third-party plugin."""

from mercore.hookspecs import hookimpl

from mercore_core.losses import CrossEntropyLoss
from mercore_core.optim import AdamConfig, AdamWConfig, WarmupCosineConfig, adam, adamw, constant, warmup_cosine


@hookimpl
def register_components(register):
    register("loss", "cross_entropy", CrossEntropyLoss)
    register("optimizer", "adamw", adamw, config=AdamWConfig)
    register("optimizer", "adam", adam, config=AdamConfig)
    register("scheduler", "warmup_cosine", warmup_cosine, config=WarmupCosineConfig)
    register("scheduler", "constant", constant)
