"""Declaring component configs, and validating recipe nodes against them.

A component's config is an attrs class whose fields are annotated with plain types (``int``, ``float``,
``bool``, ``str``, ``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]``), nested attrs classes, or
sub-components declared with :func:`component`. Validation collects *every* problem with its dotted path
and YAML line before anything is built.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Any, Literal, Union

import attrs

from mercore.registry import Node, Registry

_META_KIND = "mercore_component_kind"
_META_HELP = "help"


def option(default: Any = attrs.NOTHING, *, help: str = "", factory: Any = None) -> Any:
    """An ordinary config field with a help text shown by ``mercore show``."""
    if factory is not None:
        return attrs.field(factory=factory, metadata={_META_HELP: help})
    return attrs.field(default=default, metadata={_META_HELP: help})


def component(kind: str, default: dict | None = None, *, required: bool = False, help: str = "") -> Any:
    """A field holding a sub-component of ``kind``; validated into a :class:`~mercore.registry.Node`.

    ``default`` is the recipe node used when the key is absent (``None`` makes the sub-component optional);
    ``required=True`` makes the key mandatory. Annotate the field as ``Node``, ``Node | None``, or
    ``Node | list[Node]`` for a field that also takes a non-empty list of nodes (``logger``).
    """
    meta = {_META_KIND: kind, _META_HELP: help}
    if required:
        return attrs.field(metadata=meta)
    if default is None:
        return attrs.field(default=None, metadata=meta)
    return attrs.field(factory=lambda: dict(default), metadata=meta)


def field_help(f: attrs.Attribute) -> str:
    return f.metadata.get(_META_HELP, "")


def field_kind(f: attrs.Attribute) -> str | None:
    return f.metadata.get(_META_KIND)


def type_name(tp: Any) -> str:
    """A short, readable name of an annotation for messages and ``mercore show``."""
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"dict[{type_name(args[0])}, {type_name(args[1])}]" if args else "dict"
    return str(tp)


class LineMap:
    """Dotted key path -> where it was set: ``"line 12"`` of the recipe, or ``"override 'a.b=1'"``."""

    def __init__(self, lines: dict[str, str] | None = None, source: str | None = None):
        self.lines = lines or {}
        self.source = source

    def where(self, path: str) -> str:
        """``path (line N)`` where the origin of the path or of its nearest ancestor is known."""
        probe = path
        while probe:
            if probe in self.lines:
                return f"{path} ({self.lines[probe]})"
            probe = probe.rpartition(".")[0]
        return path


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class _Validator:
    def __init__(self, registry: Registry, lines: LineMap):
        self.registry = registry
        self.lines = lines
        self.problems: list[str] = []

    def problem(self, path: str, msg: str) -> None:
        self.problems.append(f"{self.lines.where(path) if path else '(top level)'}: {msg}")

    # -- attrs classes -----------------------------------------------------------------------------------
    def config(self, cls: type, data: Any, path: str, label: str | None = None) -> Any:
        label = label or cls.__name__
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem(path, f"expected a mapping of {label} options, got {type(data).__name__} {data!r}")
            return None
        before = len(self.problems)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in attrs.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key in data:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(fields) if fields else "(none)"
                self.problem(_join(path, key), f"unknown key {key!r} for {label}{hint} Valid keys: {known}")
        for name, f in fields.items():
            sub = _join(path, name)
            if name in data:
                value = data[name]
            elif f.default is attrs.NOTHING:
                self.problem(sub, f"missing required key {name!r} ({type_name(hints.get(name))})")
                continue
            elif field_kind(f) is None:
                continue  # attrs fills in the default
            else:
                value = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default  # type: ignore[union-attr]
            kind = field_kind(f)
            if kind is not None and isinstance(value, list) and _allows_list(hints.get(name)):
                if not value:
                    self.problem(sub, f"an empty list: give at least one {kind} component")
                kwargs[name] = [self.node(kind, v, f"{sub}[{i}]") for i, v in enumerate(value)]
            elif kind is not None:
                kwargs[name] = None if value is None else self.node(kind, value, sub)
                if value is None and not _allows_none(hints.get(name)):
                    self.problem(sub, f"a {kind} component is required here")
            else:
                kwargs[name] = self.value(hints.get(name, Any), value, sub)
        if len(self.problems) > before:
            return None
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:  # attrs validators of the config class
            self.problem(path, f"{label}: {exc}")
            return None

    def node(self, kind: str, data: Any, path: str) -> Node | None:
        if isinstance(data, str):
            data = {"type": data}
        if not isinstance(data, dict):
            self.problem(path, f"expected a {kind} component (a mapping with 'type'), got {data!r}")
            return None
        if "type" not in data:
            self.problem(path, f"missing 'type' of {kind}; installed: {', '.join(self.registry.names(kind)) or '(none)'}")
            return None
        name = data["type"]
        try:
            spec = self.registry.get(kind, str(name))
        except Exception as exc:  # RegistryError, or an import error of a module:attr
            self.problem(_join(path, "type"), str(exc))
            return None
        before = len(self.problems)
        options = {k: v for k, v in data.items() if k != "type"}
        cfg = self.config(spec.config_cls, options, path, label=f"{kind} {spec.name!r}")
        if len(self.problems) > before or cfg is None:
            return None
        return Node(spec=spec, config=cfg)

    # -- plain values ----------------------------------------------------------------------------------------
    def value(self, tp: Any, value: Any, path: str) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            if value is None:
                if type(None) in args:
                    return None
                self.problem(path, f"must not be null (expected {type_name(tp)})")
                return None
            inner = [a for a in args if a is not type(None)]
            for candidate in inner:  # first alternative that validates silently
                trial = _Validator(self.registry, self.lines)
                out = trial.value(candidate, value, path)
                if not trial.problems:
                    return out
            self.problem(path, f"expected {type_name(tp)}, got {type(value).__name__} {value!r}")
            return None
        if origin is Literal:
            if value in args:
                return value
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.problem(path, f"{value!r} is not one of {', '.join(repr(a) for a in args)}{hint}")
            return None
        if origin in (list, tuple) or tp in (list, tuple):
            if not isinstance(value, (list, tuple)):
                self.problem(path, f"expected a list ({type_name(tp)}), got {type(value).__name__} {value!r}")
                return None
            item = args[0] if args else Any
            out = [self.value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
            return tuple(out) if origin is tuple else out
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.problem(path, f"expected a mapping ({type_name(tp)}), got {type(value).__name__} {value!r}")
                return None
            vt = args[1] if args else Any
            return {k: self.value(vt, v, _join(path, k)) for k, v in value.items()}
        if isinstance(tp, type) and attrs.has(tp):
            return self.config(tp, value, path)
        if tp is bool:
            if isinstance(value, bool):
                return value
            self.problem(path, f"expected true or false, got {value!r}")
            return None
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and not value.isascii():
                # int('١٢') is 12: a number must be written in ASCII digits, as YAML itself requires
                self.problem(path, f"expected an integer in ASCII digits 0-9, got {value!r}")
                return None
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
            self.problem(path, f"expected an integer, got {type(value).__name__} {value!r}")
            return None
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isnan(float(value)):
                    self.problem(path, "must be a number, got NaN")
                return float(value)
            if isinstance(value, str) and not value.isascii():
                self.problem(path, f"expected a number in ASCII digits 0-9, got {value!r}")
                return None
            if isinstance(value, str):  # '1e-3' quoted, or an interpolated environment variable
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if math.isnan(number):
                        self.problem(path, f"must be a number, got NaN ({value!r})")
                    return number
            self.problem(path, f"expected a number, got {type(value).__name__} {value!r}")
            return None
        if tp is str:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            self.problem(path, f"expected a string, got {type(value).__name__} {value!r}")
            return None
        if tp is Node:
            self.problem(path, "sub-component fields must be declared with mercore.config.component(kind)")
            return None
        return value


def _allows_list(tp: Any) -> bool:
    """Whether a component field's annotation takes a list of nodes (``Node | list[Node]``)."""
    return typing.get_origin(tp) in (Union, types.UnionType) and any(
        typing.get_origin(a) is list for a in typing.get_args(tp))


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def validate_config(cls: type, data: Any, registry: Registry, lines: LineMap | None = None, path: str = "") -> tuple[Any, list[str]]:
    """Validate ``data`` against attrs class ``cls``. Returns ``(instance or None, problems)``."""
    v = _Validator(registry, lines or LineMap())
    out = v.config(cls, data, path)
    return (out if not v.problems else None), v.problems


def validate_node(kind: str, data: Any, registry: Registry, lines: LineMap | None = None, path: str = "") -> tuple[Node | None, list[str]]:
    """Validate a component node ``{"type": name, ...options}`` of ``kind``. Returns ``(node or None, problems)``."""
    v = _Validator(registry, lines or LineMap())
    out = v.node(kind, data, path)
    return (out if not v.problems else None), v.problems


def config_to_dict(obj: Any) -> Any:
    """Turn a validated config (attrs instances, Nodes) back into plain recipe data."""
    if isinstance(obj, Node):
        return {"type": obj.name, **config_to_dict(obj.config)}
    if attrs.has(type(obj)):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    return obj
