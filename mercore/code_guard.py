"""What a recipe's ``type: module:attr`` may import: recipes are code, and this says how much.

A recipe node ``type: some_module:Cls`` imports ``some_module`` and builds ``Cls``. Importing a module runs
its top-level code, so a recipe (and a run folder given to ``mercore eval``, whose ``recipe.yaml`` is one) is
code. The rules, checked *before* anything is imported:

* Python's standard library is refused outright: it holds no mercore components, and ``os:system`` or
  ``builtins:eval`` are the classic ways to make a config file run a command.
* A module from an installed distribution (``pip install``) is imported: the user chose to install it.
* A *local* module (not provided by an installed distribution, or one that would be imported from the current
  folder, e.g. a ``numpy.py`` lying next to the recipe) is imported only when local code is allowed:
  ``--allow-local-code`` on ``run``/``validate``/``eval``, or ``MERCORE_ALLOW_LOCAL_CODE=1``.

After the import, the attribute must be shaped like a registered component: a class with an attrs ``Config``
class. Functions, builtins and other callables are refused.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import attrs

from mercore.errors import RegistryError

#: Environment variable that allows local modules in ``module:attr`` (``1``, ``true`` or ``yes``).
ALLOW_LOCAL_CODE_ENV = "MERCORE_ALLOW_LOCAL_CODE"

_allowed_by_flag = False


def allow_local_code(allowed: bool = True) -> None:
    """Allow (or forbid again) local modules for this process; what ``--allow-local-code`` calls."""
    global _allowed_by_flag
    _allowed_by_flag = allowed


def local_code_allowed() -> bool:
    """True when ``--allow-local-code`` was given or :data:`ALLOW_LOCAL_CODE_ENV` is set to a true value."""
    return _allowed_by_flag or os.environ.get(ALLOW_LOCAL_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def _is_stdlib(top: str) -> bool:
    return top in sys.builtin_module_names or top in sys.stdlib_module_names


def _location(spec: Any) -> Path | None:
    """The file or package folder a top-level module spec points at (None for namespace/builtin modules)."""
    if spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
        origin = Path(spec.origin)
        return origin.parent if origin.name == "__init__.py" else origin
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def _from_current_folder(location: Path | None) -> bool:
    """Would the import come from the current working folder (a module lying next to the recipe)?"""
    if location is None:
        return False
    try:
        return location.resolve().parent == Path.cwd().resolve()
    except OSError:
        return False


def why_local(module_name: str) -> str | None:
    """Why ``module_name`` counts as local code (a sentence), or None when it comes from an installed distribution.

    Finds the top-level module's spec without importing it (``find_spec`` of a top-level name runs no code).

    Raises:
        RegistryError: the module is part of the standard library, or cannot be found at all.
    """
    top = module_name.partition(".")[0]
    if _is_stdlib(top):
        raise RegistryError(f"module {module_name!r} is part of Python's standard library, which holds no mercore "
                            "components; module:attr may only name a component class from an installed plugin "
                            "package or (with --allow-local-code) a local module")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise RegistryError(f"cannot find module {top!r}: {exc}") from None
    if spec is None:
        raise RegistryError(f"cannot import module {module_name!r}: no module named {top!r} "
                            "(is its package installed, or is its folder on PYTHONPATH?)")
    location = _location(spec)
    if top not in importlib.metadata.packages_distributions():
        return f"module {top!r} ({location or 'no file'}) is not provided by an installed distribution"
    if _from_current_folder(location):
        return f"module {top!r} would be imported from the current folder ({location})"
    return None


def resolve_component_class(ref: str, kind: str) -> type:
    """Import ``module:attr`` under the rules above and return the component class.

    Raises:
        RegistryError: naming ``ref`` and why it is refused (standard library, local code not allowed, not a
            component-shaped class, import failure, missing attribute).
    """
    module_name, _, attr = ref.partition(":")
    head = f"{kind} {ref!r}"
    if not module_name or not attr:
        raise RegistryError(f"{head}: expected module:Class (e.g. my_package.models:MyModel)")
    try:
        reason = why_local(module_name)
    except RegistryError as exc:
        raise RegistryError(f"{head}: {exc}") from None
    if reason is not None and not local_code_allowed():
        raise RegistryError(
            f"{head}: {reason}. A recipe that names local code runs that code; it was NOT imported. "
            f"If you trust it, pass --allow-local-code (or set {ALLOW_LOCAL_CODE_ENV}=1)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"{head}: cannot import module {module_name!r}: {exc}") from exc
    try:
        obj = module
        for part in attr.split("."):  # Outer.Inner is allowed
            obj = getattr(obj, part)
    except AttributeError:
        raise RegistryError(f"{head}: module {module_name!r} has no attribute {attr!r}") from None
    config = getattr(obj, "Config", None) if inspect.isclass(obj) else None
    if config is None or not inspect.isclass(config) or not attrs.has(config):
        what = "a class without an attrs Config class" if inspect.isclass(obj) else f"a {type(obj).__name__}, not a class"
        raise RegistryError(
            f"{head}: {ref} is {what}; module:attr may only name a component class (a class with an attrs "
            "'Config' class, built as Cls(config, **context)), never an arbitrary callable")
    return obj
