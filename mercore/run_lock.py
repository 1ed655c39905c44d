"""One run per run directory: a lock file held for the run's whole life.

``RUN/run.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking) and holds the owner's pid, host
and start time as JSON. The kernel drops a flock when its process dies, however it dies, so a lock file
left behind by a killed run is recognised as stale (nobody holds its flock), taken over, and the take-over
is reported. A second run on a folder whose lock is held is refused at once with :class:`OutputDirError`,
naming the holder. The file is removed when the run ends.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

from mercore.errors import OutputDirError

LOCK_FILE = "run.lock"


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """The run directory as a path; an empty name (which would write into the current folder) is refused."""
    if not str(output_dir).strip():
        raise OutputDirError("output_dir is empty: it would write into the current folder and overwrite its "
                             "results.json and metrics.jsonl; give a folder, e.g. output_dir=runs/NAME")
    return Path(output_dir)


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (the lock file holds no owner)"


class RunLock:
    """Exclusive ownership of a run directory; use as a context manager around the run.

    Args:
        run_dir: the run directory (created if missing).
        log: where the note about a taken-over stale lock goes.
    """

    def __init__(self, run_dir: str | os.PathLike, log: Callable[[str], None] = print):
        self.run_dir = check_output_dir(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._log = log
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`OutputDirError` naming the run that holds it (or why the folder is unusable)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputDirError(f"output_dir {str(self.run_dir)!r} cannot be created: {exc.strerror} "
                                 f"({exc.filename or self.run_dir})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputDirError(f"output_dir {str(self.run_dir)!r} is not writable: {exc.strerror} "
                                     f"({self.path}); choose a writable folder") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise OutputDirError(
                    f"output_dir {str(self.run_dir)!r} is in use by another run ({holder}; lock file {self.path}). "
                    "Wait for it to finish, stop it, or choose another output_dir") from None
            # The holder may have removed the file between our open and our flock: then we locked a
            # deleted inode, and a third run could lock a new file. Retry until the path is our inode.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if previous:
            self._log(f"note: took over the stale lock {self.path} of {_describe_holder(previous)}, "
                      "which is no longer running (it was killed or crashed)")
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner.encode("utf-8") + b"\n", 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not the user's recipe: exit 1
                from mercore.checkpoint import storage_error

                raise storage_error(exc, self.path) from None
            raise OutputDirError(f"output_dir {str(self.run_dir)!r} is not writable: {exc.strerror} "
                                 f"({self.path})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, so no one locks the old file after us)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
