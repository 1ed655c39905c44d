"""The component registry: kinds, names, the plugin that provided each, and build-time resolution.

Every component is an attrs config class plus a factory ``factory(config, **context)``. What ``context`` holds
for each kind, what the component returns and which :mod:`mercore.nn` protocol it satisfies is declared in
:data:`mercore.kinds.KIND_CONTRACTS` (shown by ``mercore show KIND NAME``). Plugins fill the
registry through the ``register_components`` hook (see :mod:`mercore.hookspecs`); the registry never imports
a plugin itself, so a broken plugin cannot break it (see :mod:`mercore.plugins`).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import attrs

from mercore.errors import RegistryError
from mercore.kinds import KINDS

#: The provider name recorded for components resolved through a ``module:attr`` escape hatch.
LOCAL_PROVIDER = "<local module:attr>"


@attrs.frozen
class ComponentSpec:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`.
        name: the name a recipe uses in ``type:``.
        factory: called as ``factory(config, **context)``.
        config_cls: the attrs class that validates the recipe node.
        plugin: the name of the plugin that registered it (for error messages and ``mercore show``).
        doc: one-paragraph documentation (the factory's docstring by default).
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    config_cls: type
    plugin: str
    doc: str = ""


@attrs.frozen
class Node:
    """A validated recipe node: which component, and its typed config. ``build`` constructs it."""

    spec: ComponentSpec
    config: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def build(self, **context: Any) -> Any:
        """Construct the component as ``factory(config, **context)``."""
        return self.spec.factory(self.config, **context)


@attrs.define
class EmptyConfig:
    """Config of a component that takes no options."""


def _config_class_of(factory: Callable[..., Any], config: type | None) -> type:
    cls = config if config is not None else getattr(factory, "Config", None)
    if cls is None:
        return EmptyConfig
    if not attrs.has(cls):
        raise RegistryError(f"config class {cls!r} of {factory!r} is not an attrs class")
    return cls


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    import inspect

    return inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ")


class Registry:
    """Maps ``(kind, name)`` to :class:`ComponentSpec`, refusing duplicates and suggesting close names."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}

    # -- filling ---------------------------------------------------------------------------------------
    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        config: type | None = None,
        doc: str | None = None,
        plugin: str = "<unknown>",
    ) -> ComponentSpec:
        """Register ``factory`` as component ``name`` of ``kind``. A second provider of a name is refused."""
        if kind not in self._specs:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(
                f"plugin {plugin!r} registers {name!r} under unknown kind {kind!r}{hint} Kinds: {', '.join(KINDS)}"
            )
        existing = self._specs[kind].get(name)
        if existing is not None:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} and by plugin {plugin!r}; "
                "rename one of them or uninstall one plugin"
            )
        spec = ComponentSpec(
            kind=kind,
            name=name,
            factory=factory,
            config_cls=_config_class_of(factory, config),
            plugin=plugin,
            doc=doc if doc is not None else _first_paragraph(getattr(factory, "__doc__", None)),
        )
        self._specs[kind][name] = spec
        return spec

    def registrar(self, plugin: str) -> Callable[..., ComponentSpec]:
        """The ``register`` callable handed to one plugin's hook: it stamps the plugin's name."""

        def register(kind: str, name: str, factory: Callable[..., Any], config: type | None = None, doc: str | None = None):
            return self.add(kind, name, factory, config=config, doc=doc, plugin=plugin)

        return register

    # -- lookup ----------------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self._specs[kind])

    def specs(self, kind: str | None = None) -> list[ComponentSpec]:
        kinds = [kind] if kind else list(KINDS)
        out: list[ComponentSpec] = []
        for k in kinds:
            self._check_kind(k)
            out.extend(self._specs[k][n] for n in sorted(self._specs[k]))
        return out

    def get(self, kind: str, name: str) -> ComponentSpec:
        """Resolve ``name`` (or ``module:attr``) for ``kind``; unknown names say what is close and installed."""
        self._check_kind(kind)
        if name in self._specs[kind]:
            return self._specs[kind][name]
        if ":" in name:
            return self._resolve_module_attr(kind, name)
        raise RegistryError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        installed = self.names(kind)
        close = difflib.get_close_matches(name, installed, n=3, cutoff=0.6)
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        msg += f" Installed {kind} components: {', '.join(installed) if installed else '(none)'}"
        other = [k for k in KINDS if k != kind and name in self._specs[k]]
        if other:
            msg += f". {name!r} exists as a {other[0]}, not a {kind}"
        return msg

    def _resolve_module_attr(self, kind: str, ref: str) -> ComponentSpec:
        # Recipes are code: what may be imported, and what the attribute must look like, is decided by
        # mercore.code_guard before anything is imported.
        from mercore.code_guard import resolve_component_class

        cls = resolve_component_class(ref, kind)
        return ComponentSpec(
            kind=kind,
            name=ref,
            factory=cls,
            config_cls=_config_class_of(cls, None),
            plugin=LOCAL_PROVIDER,
            doc=_first_paragraph(getattr(cls, "__doc__", None)),
        )

    def _check_kind(self, kind: str) -> None:
        if kind not in self._specs:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"unknown component kind {kind!r}{hint} Kinds: {', '.join(KINDS)}")

    def __len__(self) -> int:
        return sum(len(v) for v in self._specs.values())
