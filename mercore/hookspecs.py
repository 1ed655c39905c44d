"""The hooks a mercore plugin may implement.

A plugin is any module with functions decorated by :data:`hookimpl`. First-party plugins live in
``plugins/`` and are found through the ``mercore`` entry-point group, exactly like third-party packages.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "mercore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_components(register: Callable[..., None]) -> None:
    """Register components with ``register(kind, name, factory, config=None, doc=None)``.

    ``factory`` is called as ``factory(config, **context)`` where ``config`` is an instance of the
    component's attrs config class (``config=`` or, by default, ``factory.Config``) and ``context`` holds
    what the caller knows at build time (input dims, number of classes, ...).
    """
