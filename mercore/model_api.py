"""The model API, kept importable for plugins written against it: :class:`ModelOutput` and friends.

Everything here is defined in :mod:`mercore.nn`, which holds every contract between the engine and plugins.
"""

from mercore.nn import FusionOutput, ModelOutput, MoEOutput, Routing

__all__ = ["FusionOutput", "ModelOutput", "MoEOutput", "Routing"]
