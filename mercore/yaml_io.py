"""YAML reading that avoids PyYAML's traps and remembers where every key was written.

- ``1e-3`` is a float (PyYAML 1.1 reads it as a string); ``on``/``off``/``yes``/``no`` stay strings
  (only ``true``/``false`` are booleans, as in YAML 1.2).
- A key written twice in one mapping is an error naming both lines (PyYAML silently keeps the second).
- Every dotted key path is mapped to its line, so validation errors can point at it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from mercore.errors import ConfigError

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and exponent floats."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# Floats with an exponent and no dot (1e-3, 5E4), which YAML 1.1's float pattern misses.
RecipeLoader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _walk(node: yaml.Node, path: str, lines: dict[str, str], problems: list[str], loader: RecipeLoader) -> Any:
    lines.setdefault(path, f"line {node.start_mark.line + 1}")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve '<<' merge keys
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(f"{path or '(top level)'} (line {key_node.start_mark.line + 1}): key {key!r} is not a scalar")
                continue
            sub = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in out:
                problems.append(
                    f"{sub} (line {line}): duplicate key {key!r}, first written at line {first_line[key]}; "
                    "remove one (YAML would silently keep the last)"
                )
                continue
            first_line[key] = line
            lines[sub] = f"line {line}"
            out[key] = _walk(value_node, sub, lines, problems, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, f"{path}[{i}]", lines, problems, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, source: str = "<recipe>") -> tuple[Any, dict[str, str]]:
    """Parse YAML text into plain data and a ``{dotted.path: "line N"}`` map.

    Raises:
        ConfigError: the text is not valid YAML, or has duplicate keys (all of them listed).
    """
    loader = None
    try:
        loader = RecipeLoader(text)  # the reader already refuses non-printable characters here
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[str, str] = {}
        problems: list[str] = []
        data = _walk(node, "", lines, problems, loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        detail = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {detail}"], source=source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if problems:
        raise ConfigError(problems, source=source)
    lines.pop("", None)
    return data, lines


def parse_scalar(text: str) -> Any:
    """Parse an override's value the way the recipe file would (``1e-3``, ``[a, b]``, ``null``, ``true``)."""
    if text == "":
        return ""
    try:
        data, _ = parse_yaml(text, source="override")
    except ConfigError:
        return text
    return data


def dump_yaml(data: Any) -> str:
    """Write plain data as block-style YAML with keys in their given order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
