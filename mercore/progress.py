"""A dependency-free progress bar for long loops, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """Wrap an iterable; redraws one stderr line at most 10 times a second with rate and ETA."""

    def __init__(self, iterable: Iterable[T], total: int, desc: str = "", enabled: bool = True):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.enabled = enabled and sys.stderr.isatty()
        self.postfix = ""

    def __iter__(self) -> Iterator[T]:
        start = last = time.perf_counter()
        for i, item in enumerate(self.iterable, 1):
            yield item
            now = time.perf_counter()
            if self.enabled and (now - last > 0.1 or i == self.total):
                last = now
                rate = i / max(now - start, 1e-9)
                eta = (self.total - i) / rate if rate > 0 else 0.0
                width = 24
                filled = int(width * i / max(self.total, 1))
                bar = "#" * filled + "." * (width - filled)
                sys.stderr.write(f"\r{self.desc} [{bar}] {i}/{self.total} {rate:.1f} it/s eta {eta:.0f}s {self.postfix}\x1b[K")
                sys.stderr.flush()
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
