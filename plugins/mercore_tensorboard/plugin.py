"""The ``tensorboard`` logger (kind ``logger``), a plugin like any third-party one; its ``tensorboard`` dependency
is the optional extra ``mercore[tensorboard]`` and is imported only when a recipe builds the logger."""

from mercore.hookspecs import hookimpl

from mercore_tensorboard.logger import TensorBoardLogger


@hookimpl
def register_components(register):
    register("logger", "tensorboard", TensorBoardLogger)
