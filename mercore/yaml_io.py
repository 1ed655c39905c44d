"""YAML reading that avoids PyYAML's traps and remembers where every key was written.

- ``1e-3`` is a float (PyYAML 1.1 reads it as a string); ``on``/``off``/``yes``/``no`` stay strings
  (only ``true``/``false`` are booleans, as in YAML 1.2).
- A key written twice in one mapping is an error naming both lines (PyYAML silently keeps the second).
- Every dotted key path is mapped to its line, so validation errors can point at it.
- Bombs are refused before they are expanded: nesting deeper than :data:`MAX_DEPTH`, a document whose aliases
  expand to more than :data:`MAX_VALUES` values (the "billion laughs"), and recursive aliases (``&a [*a]``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from mercore.errors import ConfigError

#: Deepest nesting of mappings/lists a recipe may have (real recipes nest fewer than 10 levels).
MAX_DEPTH = 64
#: Most values (mapping keys, values and list items, aliases counted as often as they are used) a document may
#: expand to. Real recipes have a few hundred; a 1.3 KB alias bomb expands to hundreds of millions.
MAX_VALUES = 100_000

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        self.mark = mark


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and exponent floats, and a nesting limit while composing."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # PyYAML composes recursively (a few frames per level): 500 levels overflow Python's stack, so the
        # depth is bounded here, with the line where the limit was crossed.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# Floats with an exponent and no dot (1e-3, 5E4), which YAML 1.1's float pattern misses.
RecipeLoader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _check_expansion(root: yaml.Node) -> str | None:
    """A problem if the node graph (aliases share nodes) expands too large, too deep, or into itself.

    Iterative post-order over distinct nodes with memoised sizes and depths: linear in the document, whatever
    the aliases would expand to.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            size[key], depth[key] = 1, 1
            continue
        if not children_done:
            if key in active:
                return f"line {node.start_mark.line + 1}: a recursive alias (a node that contains itself)"
            active.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in active:
                    return f"line {child.start_mark.line + 1}: a recursive alias (a node that contains itself)"
                if id(child) not in size:
                    stack.append((child, False))
            continue
        active.discard(key)
        size[key] = 1 + sum(size[id(c)] for c in children)
        depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[key] > MAX_VALUES:
            return (f"line {node.start_mark.line + 1}: the document expands to more than {MAX_VALUES:,} values "
                    "(aliases that repeat aliases, a 'billion laughs' bomb?); a recipe has a few hundred")
        if depth[key] > MAX_DEPTH:
            return (f"line {node.start_mark.line + 1}: nesting deeper than {MAX_DEPTH} levels once aliases are "
                    "expanded")
    return None


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
        ConfigError: the text is not valid YAML, is a bomb (see the module docstring), or has duplicate keys
            (all of them listed).
    """
    data, lines, problems = parse_yaml_collecting(text, source)
    if problems:
        raise ConfigError(problems, source=source)
    return data, lines


def parse_yaml_collecting(text: str, source: str = "<recipe>") -> tuple[Any, dict[str, str], list[str]]:
    """Like :func:`parse_yaml`, but duplicate keys are returned as problems (the first value is kept), so a
    caller can go on and report them together with later problems.

    Raises:
        ConfigError: the text cannot be read as data at all (invalid YAML, a bomb).
    """
    loader = None
    try:
        loader = RecipeLoader(text)  # the reader already refuses non-printable characters here
        node = loader.get_single_node()
        if node is None:
            return {}, {}, []
        bomb = _check_expansion(node)
        if bomb is not None:
            raise ConfigError([bomb], source=source)
        lines: dict[str, str] = {}
        problems: list[str] = []
        data = _walk(node, "", lines, problems, loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        detail = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {detail}"], source=source) from None
    except _TooDeep as exc:
        raise ConfigError([f"line {exc.mark.line + 1}, column {exc.mark.column + 1}: nesting deeper than "
                           f"{MAX_DEPTH} levels (a recipe nests fewer than 10)"], source=source) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines.pop("", None)
    return data, lines, problems


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
