"""A restricted unpickler for the community feature pickles (MMGCN, SDT, MultiEMO, DialogueGCN).

A pickle is a program: ``pickle.load`` will import and call any global the file names (``os.system``,
``subprocess.Popen``, ``builtins.eval`` ...). The feature pickles of the MERC literature only ever need
containers (dict, list, tuple, set: built into the pickle protocol, no import), numpy arrays, numpy scalars
and dtypes, and a few builtins. :class:`RestrictedUnpickler` resolves exactly those globals and refuses every
other one *before* importing it, with a :class:`~mercore.errors.DataError` naming ``module.name`` and the file.

Files written by Python 2 (most of these pickles) name ``__builtin__``/``copy_reg`` modules; they are
mapped to their Python 3 names the way :mod:`pickle` does, and only then checked against the allow-list.
Files are opened with ``encoding='latin1'``, which is what numpy needs to restore Python 2 array buffers.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from os import PathLike
from pathlib import Path
from typing import Any

from mercore.errors import DataError

#: ``(module, name)`` pairs a feature pickle may reference. Everything else is refused.
#: Both numpy spellings are here: numpy < 2 writes ``numpy.core.*``, numpy >= 2 writes ``numpy._core.*``.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # numpy arrays: ndarray.__reduce__ -> _reconstruct(ndarray, (0,), b'b') + __setstate__(...)
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # numpy scalars (np.float32(1.0) in a list), and protocol-5 buffers of arrays
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # containers without an opcode of their own in protocols 0-3
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("collections", "OrderedDict"),
        # Python 3 writes bytes as _codecs.encode(str, 'latin1') under protocols 0-2 (array buffers)
        ("_codecs", "encode"),
    }
)


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Map a Python 2 global (``__builtin__.set``) to its Python 3 spelling (``builtins.set``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".", 1)[0])


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`.

    Args:
        file: a binary file object.
        source: the path shown in error messages.
        allowed: the allow-list (default :data:`ALLOWED_GLOBALS`).
    """

    def __init__(self, file: io.BufferedIOBase, source: str, allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS):
        # fix_imports=False: we do the Python 2 -> 3 mapping ourselves in find_class, before the check.
        super().__init__(file, encoding="latin1", fix_imports=False)
        self.source = source
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        module3, name3 = _python3_name(module, name)
        if (module3, name3) not in self.allowed:
            raise DataError(
                f"{self.source}: refusing to unpickle global {module3}.{name3}: it is not one of the numpy/builtin "
                "types feature pickles contain, and loading it could run arbitrary code. If this file is trusted "
                "and really needs it, convert it to safetensors or JSONL first"
            )
        if module3.startswith("numpy.core.") and _numpy_major() >= 2:
            # numpy 2 keeps numpy.core only as a deprecated alias of numpy._core; skip the warning.
            module3 = "numpy._core." + module3[len("numpy.core."):]
        return getattr(importlib.import_module(module3), name3)

    def persistent_load(self, pid: Any) -> Any:  # noqa: D401 - pickle API
        raise DataError(f"{self.source}: the pickle uses persistent ids ({pid!r}), which no feature pickle does")


def safe_load(path: str | PathLike[str]) -> Any:
    """Unpickle ``path`` through :class:`RestrictedUnpickler`.

    Raises:
        DataError: the file is missing, truncated or corrupt, or names a global outside the allow-list.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: pickle file not found" + ("" if p.parent.is_dir() else f" (folder {p.parent} does not exist)"))
    try:
        with open(p, "rb") as fh:
            return RestrictedUnpickler(fh, str(p)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, ImportError, MemoryError) as exc:
        raise DataError(f"{p}: not a readable feature pickle ({type(exc).__name__}: {exc})") from exc
