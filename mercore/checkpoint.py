"""Checkpoints that survive a kill, a full disk or a hostile file, and are verified before use.

Layout of ``RUN/checkpoints``::

    epoch-0003/            one folder per saved epoch (the newest ``keep`` are kept)
        model.safetensors  the model's weights (never a pickle)
        extra.safetensors  trainable weights outside the model (e.g. a distiller's projection), if any
        trainer_state.pt   optimizer, scheduler, RNG and loop state, loaded with weights_only=True
        meta.json          size and sha256 of each file above, written last
    best/                  same layout: the dev-selected weights
    LATEST                 the name of the newest complete epoch folder (a plain name, nothing else)

A folder is serialized in memory first (so the bytes it needs are known), written under a temporary name,
each file fsynced, then renamed into place, and only then is ``LATEST`` replaced (write, fsync, rename). A kill
at any point leaves the previous good checkpoint intact; a failed write (disk full, read-only folder) removes
its temporary folder at once and raises :class:`StorageError` naming the path and the bytes needed.

Nothing read back is trusted: ``LATEST`` must name an epoch folder inside ``checkpoints/``, ``meta.json`` must
follow its schema and list only regular files of its own folder, and loaded weights must be finite and of
the shapes of the model built from the recipe.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from mercore.errors import CheckpointError, StorageError

META = "meta.json"
LATEST = "LATEST"
# The files a checkpoint may hold; meta.json lists every one present (and only these).
CHECKPOINT_FILES = ("model.safetensors", "extra.safetensors", "trainer_state.pt")
# Names of epoch folders: ``epoch-0003`` (after 3 epochs) or ``epoch-0003-step-000012`` (12 steps into the 4th).
# Their lexical order is their order in time.
EPOCH_FOLDER = re.compile(r"^epoch-\d{4,}(-step-\d{6,})?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -- writing -----------------------------------------------------------------------------------------------

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


def _write_all(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``, fsynced. The one place checkpoint bytes reach the disk (tests inject faults here)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _free_bytes(path: Path) -> int | None:
    """Bytes free to this user on the filesystem of ``path`` (its nearest existing ancestor), or None."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def storage_error(exc: OSError, what: Path, needed: int | None = None) -> StorageError:
    """A :class:`StorageError` for an OS error while writing ``what``: the path, the cause, bytes needed and free."""
    path = exc.filename or what
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(Path(what).parent)
        need = f"; it needs {needed} bytes ({_human(needed)})" if needed is not None else ""
        have = f", {free} bytes ({_human(free)}) are free there" if free is not None else ""
        return StorageError(f"disk full while writing {what} ({reason}: {path}){need}{have}. The partial write was "
                            "removed and the last complete checkpoint is intact: free some space, then continue "
                            "with resume=true")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {what}: {reason} ({path}). Make the folder writable (or choose another "
                            "output_dir), then continue with resume=true")
    return StorageError(f"cannot write {what}: {reason} ({path})"
                        + (f"; the write needed {needed} bytes" if needed is not None else ""))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one.

    Raises:
        StorageError: the write failed (disk full, read-only folder...); the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_all(tmp, data)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise storage_error(exc, path, len(data)) from None
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_dict_for_safetensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; a contiguous clone breaks the sharing.
    return {k: v.detach().cpu().contiguous().clone() if v.data_ptr() else v.cpu()
            for k, v in module.state_dict().items()}


def serialize_checkpoint(
    *,
    model: torch.nn.Module,
    extra: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """The bytes of every file of a checkpoint, ``meta.json`` (sizes and hashes of the others) last."""
    blobs: dict[str, bytes] = {
        "model.safetensors": save_safetensors_bytes(_state_dict_for_safetensors(model), metadata={"format": "pt"})}
    if extra is not None and len(extra.state_dict()):
        blobs["extra.safetensors"] = save_safetensors_bytes(_state_dict_for_safetensors(extra),
                                                            metadata={"format": "pt"})
    if trainer_state is not None:
        buf = io.BytesIO()
        torch.save(trainer_state, buf)
        blobs["trainer_state.pt"] = buf.getvalue()
    files = {name: {"bytes": len(b), "sha256": _sha256_bytes(b)} for name, b in blobs.items()}
    blobs[META] = json.dumps({"files": files, **(info or {})}, indent=2).encode("utf-8")
    return blobs


def write_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    extra: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (see the module docstring). Returns ``folder``.

    Raises:
        StorageError: an OS error (disk full, permission, I/O) while writing, naming the path and the bytes the
            checkpoint needs; the temporary folder is already removed and any previous checkpoint is intact.
    """
    folder = Path(folder)
    blobs = serialize_checkpoint(model=model, extra=extra, trainer_state=trainer_state, info=info)
    needed = sum(len(b) for b in blobs.values())
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, data in blobs.items():  # meta.json last: a folder without it is incomplete
            _write_all(tmp / name, data)
        _fsync_dir(tmp)
        if folder.exists():  # rewriting 'best': move the old one aside first, then drop it once the new one is in
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except OSError as exc:
        _remove(tmp)
        if old.exists() and not folder.exists():  # failed between the two renames: put the old one back
            os.replace(old, folder)
        raise storage_error(exc, folder, needed) from None
    _fsync_dir(folder.parent)
    return folder


# -- reading and verifying ---------------------------------------------------------------------------------

def _check_meta_schema(folder: Path, meta: Any) -> dict[str, Any]:
    """``meta.json`` must be ``{"files": {NAME: {"bytes": int, "sha256": hex}}, ...}`` with known plain names."""
    where = f"checkpoint {folder}: {META}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} must be a JSON object with 'files', got {type(meta).__name__}")
    files = meta.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{where}: 'files' must be an object of file name -> {{bytes, sha256}}")
    if "model.safetensors" not in files:
        raise CheckpointError(f"{where} does not list model.safetensors")
    for name, expect in files.items():
        if name not in CHECKPOINT_FILES:  # also refuses '/dev/zero', '../x', 'a/b': only these plain names
            raise CheckpointError(f"{where} lists {name!r}, which is not a checkpoint file "
                                  f"(allowed: {', '.join(CHECKPOINT_FILES)})")
        ok = (isinstance(expect, dict) and type(expect.get("bytes")) is int and expect["bytes"] >= 0
              and isinstance(expect.get("sha256"), str) and _SHA256.match(expect["sha256"]))
        if not ok:
            raise CheckpointError(f"{where}: the entry of {name!r} must be {{\"bytes\": INT, \"sha256\": HEX64}}, "
                                  f"got {expect!r}")
    return meta


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Check every file of a checkpoint against its recorded size and hash; return the metadata.

    ``meta.json`` is schema-checked; every file it lists must be a regular file (not a link, device or pipe)
    inside ``folder``, and every checkpoint file present must be listed (so nothing unhashed is loaded).

    Raises:
        CheckpointError: naming the missing, truncated, corrupted or unexpected file.
    """
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {META} is missing (the write was interrupted)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {folder}: {META} is corrupted ({exc})") from None
    files = _check_meta_schema(folder, meta)["files"]
    for name in CHECKPOINT_FILES:
        if name not in files and os.path.lexists(folder / name):
            raise CheckpointError(f"checkpoint file {folder / name} is not listed in {META} (not written with it)")
    for name, expect in files.items():
        p = folder / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file {p} is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"checkpoint file {p} is not a regular file (a link, device or pipe): refused")
        if st.st_size != expect["bytes"]:
            raise CheckpointError(f"checkpoint file {p} is truncated or altered: {st.st_size} bytes, "
                                  f"expected {expect['bytes']}")
        if _sha256(p) != expect["sha256"]:
            raise CheckpointError(f"checkpoint file {p} is corrupted: its sha256 does not match {META}")
    return meta


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity, naming the tensor (a hash only proves the file is unchanged)."""
    for name, t in state.items():
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise CheckpointError(f"{path}: tensor {name!r} holds {bad} non-finite value(s) (NaN or infinity) "
                                      f"of {t.numel()}; these weights cannot be used")


def _check_shapes(state: dict[str, torch.Tensor], module: torch.nn.Module, path: Path) -> None:
    expected = module.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
             for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(
            f"{path} was written by a different model than the one built from the recipe (another recipe's "
            f"checkpoint?): {len(wrong)} tensor(s) differ in shape: {'; '.join(wrong[:5])}"
            f"{'...' if len(wrong) > 5 else ''}")


def load_weights(folder: Path, module: torch.nn.Module, file: str = "model.safetensors", verify: bool = True) -> None:
    """Load ``file`` of a verified checkpoint into ``module`` (strict: every key and shape must match, and every
    value must be finite)."""
    folder = Path(folder)
    if verify:
        meta = verify_checkpoint(folder)
        if file not in meta["files"]:
            raise CheckpointError(f"checkpoint {folder} has no {file} listed in {META}")
    path = folder / file
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise CheckpointError(f"checkpoint file {path} is not a regular file: refused")
        state = load_safetensors_bytes(path.read_bytes())
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    check_finite(state, path)
    _check_shapes(state, module, path)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match the model built from the recipe: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """Load ``trainer_state.pt`` with ``weights_only=True`` (no arbitrary code from a pickle)."""
    path = Path(folder) / "trainer_state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load trainer state {path}: {exc}") from None


# -- pointers and clean-up ---------------------------------------------------------------------------------

def epoch_folder(checkpoints: Path, epoch: int) -> Path:
    return Path(checkpoints) / f"epoch-{epoch:04d}"


def set_latest(checkpoints: Path, folder: Path) -> None:
    atomic_write_text(Path(checkpoints) / LATEST, Path(folder).name + "\n")


def latest_folder(checkpoints: Path) -> Path | None:
    """The folder named by ``LATEST``, or None when there is no ``LATEST`` yet.

    Raises:
        CheckpointError: ``LATEST`` names anything but an existing epoch folder directly inside ``checkpoints``
            (an absolute path, ``..``, another run's folder, a link).
    """
    checkpoints = Path(checkpoints)
    pointer = checkpoints / LATEST
    if not os.path.lexists(pointer):
        return None
    try:
        if not pointer.is_file() or pointer.is_symlink() or pointer.stat().st_size > 4096:
            raise ValueError("not a small regular file")
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{pointer} is unreadable ({exc}); delete it to resume from the newest valid "
                              "epoch folder") from None
    if not EPOCH_FOLDER.match(name):
        raise CheckpointError(f"{pointer} names {name[:200]!r}, which is not an epoch folder of this run "
                              f"(expected a name like epoch-0003 inside {checkpoints}); delete {pointer} to resume "
                              "from the newest valid epoch folder")
    folder = checkpoints / name
    if folder.is_symlink() or not folder.is_dir():
        raise CheckpointError(f"{pointer} names {name!r}, but {folder} is not a folder of this run; delete "
                              f"{pointer} to resume from the newest valid epoch folder")
    return folder


def epoch_folders(checkpoints: Path) -> list[Path]:
    """Epoch folders (real folders with a valid name, no links), oldest first."""
    return sorted(p for p in Path(checkpoints).glob("epoch-*")
                  if EPOCH_FOLDER.match(p.name) and p.is_dir() and not p.is_symlink())


def good_folders(checkpoints: Path) -> list[Path]:
    """Epoch folders that pass verification, newest first."""
    out = []
    for p in reversed(epoch_folders(checkpoints)):
        try:
            verify_checkpoint(p)
            out.append(p)
        except CheckpointError:
            continue
    return out


def restore_interrupted_swaps(checkpoints: Path) -> list[Path]:
    """Put back a folder (``best``) that a kill left moved aside between the two renames of a rewrite."""
    restored = []
    for old in sorted(Path(checkpoints).glob(".*.old-*")):
        name = old.name[1:old.name.rindex(".old-")]
        target = old.with_name(name)
        if old.is_dir() and not os.path.lexists(target):
            os.replace(old, target)
            restored.append(target)
    return restored


def resume_folder(checkpoints: Path, log: Callable[[str], None] = print) -> Path | None:
    """The checkpoint a resume continues from: ``LATEST`` if present, else the newest valid epoch folder.

    Returns None when the run has no checkpoint yet. Raises :class:`CheckpointError` for a hostile ``LATEST``.
    """
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return None
    for p in restore_interrupted_swaps(checkpoints):
        log(f"restored {p} (a kill had left it moved aside during a rewrite)")
    folder = latest_folder(checkpoints)
    if folder is not None:
        return folder
    good = good_folders(checkpoints)
    if good:
        log(f"{checkpoints / LATEST} is missing: resuming from the newest valid epoch folder, {good[0].name}")
        return good[0]
    return None


def prune(checkpoints: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep`` epoch folders, and leftovers of interrupted writes.

    ``protect`` (the folder just written) is never deleted; epoch folders newer than it belong to an abandoned
    timeline (the run was resumed from an earlier point) and are deleted, so they can never be resumed from.
    """
    folders = epoch_folders(checkpoints)
    if protect is not None and Path(protect) in folders:
        i = folders.index(Path(protect))
        for p in folders[i + 1:]:
            shutil.rmtree(p, ignore_errors=True)
        folders = folders[:i + 1]
    for p in folders[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(checkpoints).glob(".*.tmp-*"):
        _remove(p)
    for p in Path(checkpoints).glob(".*.old-*"):  # a rewrite killed after its second rename
        if os.path.lexists(p.with_name(p.name[1:p.name.rindex(".old-")])):
            _remove(p)
