"""mercore: a plugin-based framework for multimodal emotion recognition in conversations."""

from mercore.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "load", "__version__"]


def load(run_dir, checkpoint: str = "best"):
    """Rebuild a trained model from a run directory through the registry (see :func:`mercore.runs.load_run`)."""
    from mercore.runs import load_run

    return load_run(run_dir, checkpoint=checkpoint)
