"""Finding and loading plugins: one entry-point group, each plugin loaded in isolation.

Environment variables:
    MERCORE_STRICT_PLUGINS=1   a plugin that fails to load is a fatal error instead of a warning.
    MERCORE_PLUGINS=a,b        load only the entry points named a and b (empty string: load none).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from importlib import metadata
from types import ModuleType
from typing import Any

import attrs
import pluggy

from mercore import hookspecs
from mercore.errors import RegistryError
from mercore.registry import Registry

ENTRY_POINT_GROUP = "mercore"
STRICT_ENV = "MERCORE_STRICT_PLUGINS"
ONLY_ENV = "MERCORE_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; the rest of mercore goes on without it."""


@attrs.define
class PluginInfo:
    """One plugin as ``mercore plugins`` shows it."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = attrs.Factory(list)
    components: dict[str, int] = attrs.Factory(dict)
    error: str | None = None


@attrs.define
class PluginSet:
    """The result of loading: the filled registry, the plugin manager, and what each plugin did."""

    registry: Registry
    manager: pluggy.PluginManager
    plugins: list[PluginInfo]

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")


def _only() -> set[str] | None:
    raw = os.environ.get(ONLY_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def load_plugins(extra: list[tuple[str, ModuleType | Any]] | None = None) -> PluginSet:
    """Load every ``mercore`` entry point (and ``extra`` ``(name, module)`` pairs) into a fresh registry.

    Each entry point is imported and registered on its own: one that raises is recorded in its
    :class:`PluginInfo` and warned about (or re-raised under ``MERCORE_STRICT_PLUGINS=1``).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    infos: list[PluginInfo] = []
    only = _only()

    candidates: list[tuple[str, str, Any, metadata.Distribution | None]] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and ep.name not in only:
            continue
        candidates.append((ep.name, ep.value, ep, getattr(ep, "dist", None)))
    for name, module in extra or []:
        candidates.append((name, getattr(module, "__name__", repr(module)), module, None))

    seen: set[str] = set()
    for name, target, ep_or_module, dist in candidates:
        if name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(name)
        info = PluginInfo(name=name, module=target,
                          distribution=dist.metadata["Name"] if dist is not None else None,
                          version=dist.version if dist is not None else None)
        infos.append(info)
        module = None
        try:
            module = ep_or_module.load() if isinstance(ep_or_module, metadata.EntryPoint) else ep_or_module
            manager.register(module, name=name)
            manager.check_pending()  # a misspelled hook name is an error, not silently ignored
            info.hooks = sorted(h.name for h in manager.get_hookcallers(module) or [])
            counts: dict[str, int] = {}
            register = registry.registrar(name)

            def counting_register(kind, cname, factory, config=None, doc=None, _r=register, _c=counts):
                spec = _r(kind, cname, factory, config=config, doc=doc)
                _c[kind] = _c.get(kind, 0) + 1
                return spec

            # Call this plugin's implementation alone, so each component is stamped with its provider.
            for impl in manager.hook.register_components.get_hookimpls():
                if impl.plugin is module:
                    impl.function(register=counting_register)
            info.components = counts
        except Exception as exc:
            if module is not None and manager.is_registered(module):
                manager.unregister(module)
            info.error = f"{type(exc).__name__}: {exc}"
            if _strict():
                raise RegistryError(f"plugin {name!r} ({target}) failed to load: {info.error}") from exc
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            warnings.warn(f"mercore plugin {name!r} ({target}) failed to load and is skipped: {detail}",
                          PluginLoadWarning, stacklevel=2)
    return PluginSet(registry=registry, manager=manager, plugins=infos)


_cached: PluginSet | None = None


def get_plugins(reload: bool = False) -> PluginSet:
    """The process-wide :class:`PluginSet`, loaded on first use."""
    global _cached
    if _cached is None or reload:
        _cached = load_plugins()
    return _cached


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry with every installed plugin's components."""
    return get_plugins(reload).registry


def _debug_sys_path() -> list[str]:  # pragma: no cover - used in error reports only
    return list(sys.path)
