"""Checkpoints that survive a kill at any moment and are verified before use.

Layout of ``RUN/checkpoints``::

    epoch-0003/            one folder per saved epoch (the newest ``keep`` are kept)
        model.safetensors  the model's weights (never a pickle)
        extra.safetensors  trainable weights outside the model (e.g. a distiller's projection), if any
        trainer_state.pt   optimizer, scheduler, RNG and loop state, loaded with weights_only=True
        meta.json          size and sha256 of each file above, written last
    best/                  same layout: the dev-selected weights
    LATEST                 the name of the newest complete epoch folder

A folder is written under a temporary name, each file fsynced, then renamed into place, and only then is
``LATEST`` replaced (write, fsync, rename). A kill at any point leaves the previous good checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from mercore.errors import CheckpointError

META = "meta.json"
LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    extra: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (see the module docstring). Returns ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, Any] = {}

    def finish(name: str) -> None:
        p = tmp / name
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        files[name] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}

    # save_model stores tensors that share storage once (safetensors refuses shared storage).
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    finish("model.safetensors")
    if extra is not None and len(extra.state_dict()):
        save_model(extra, str(tmp / "extra.safetensors"), metadata={"format": "pt"})
        finish("extra.safetensors")
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
        finish("trainer_state.pt")
    meta = {"files": files, **(info or {})}
    with open(tmp / META, "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if folder.exists():  # rewriting 'best': move the old one aside first, then drop it once the new one is in
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    return folder


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Check every file of a checkpoint against its recorded size and hash; return the metadata.

    Raises:
        CheckpointError: naming the missing, truncated or corrupted file.
    """
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.exists():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {META} is missing (the write was interrupted)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: {META} is corrupted ({exc})") from None
    for name, expect in meta.get("files", {}).items():
        p = folder / name
        if not p.exists():
            raise CheckpointError(f"checkpoint file {p} is missing")
        size = p.stat().st_size
        if size != expect["bytes"]:
            raise CheckpointError(f"checkpoint file {p} is truncated or altered: {size} bytes, expected {expect['bytes']}")
        if _sha256(p) != expect["sha256"]:
            raise CheckpointError(f"checkpoint file {p} is corrupted: its sha256 does not match {META}")
    return meta


def load_weights(folder: Path, module: torch.nn.Module, file: str = "model.safetensors", verify: bool = True) -> None:
    """Load ``file`` of a verified checkpoint into ``module`` (strict: every key must match)."""
    folder = Path(folder)
    if verify:
        verify_checkpoint(folder)
    try:
        missing, unexpected = load_model(module, str(folder / file), strict=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read {folder / file}: {exc}") from None
    missing = sorted(missing)
    # A shared tensor that an older checkpoint stored under each of its names is not unexpected.
    unexpected = [k for k in unexpected if k not in module.state_dict()]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / file} does not match the model built from the recipe: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """Load ``trainer_state.pt`` with ``weights_only=True`` (no arbitrary code from a pickle)."""
    path = Path(folder) / "trainer_state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load trainer state {path}: {exc}") from None


def epoch_folder(checkpoints: Path, epoch: int) -> Path:
    return Path(checkpoints) / f"epoch-{epoch:04d}"


def set_latest(checkpoints: Path, folder: Path) -> None:
    atomic_write_text(Path(checkpoints) / LATEST, Path(folder).name + "\n")


def latest_folder(checkpoints: Path) -> Path | None:
    """The folder named by ``LATEST``, or None when there is no complete checkpoint yet."""
    pointer = Path(checkpoints) / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    return Path(checkpoints) / name if name else None


def good_folders(checkpoints: Path) -> list[Path]:
    """Epoch folders that pass verification, newest first."""
    out = []
    for p in sorted(Path(checkpoints).glob("epoch-*"), reverse=True):
        try:
            verify_checkpoint(p)
            out.append(p)
        except CheckpointError:
            continue
    return out


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch folders, and leftovers of interrupted writes."""
    folders = sorted(Path(checkpoints).glob("epoch-*"))
    for p in folders[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(checkpoints).glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
