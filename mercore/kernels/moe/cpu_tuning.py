"""CPU tuning derived from the machine the kernel runs on, instead of constants fitted to one CPU (issue 13).

What the kernel needs to know about the CPU, and where it comes from:

* cache sizes: ``/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size,shared_cpu_list}`` (Linux sysfs);
  where that tree is missing or unreadable (macOS, Windows, some containers) the fallback is
  :data:`FALLBACK_L2_BYTES` per core and :data:`FALLBACK_L3_BYTES_PER_CPU` of L3 per CPU, typical of current
  x86 server parts (the kernel stays correct whatever the numbers; only its speed depends on them);
* threads: ``torch.get_num_threads()`` (read at each call: a program may change it);
* ISA: ``torch.backends.cpu.get_cpu_capability()`` (recorded for the benchmark header; no rule depends on it).

The rule (``DESIGN.md``, "CPU cache blocking"): the padded layout walks its experts in blocks so that one
block's ``(rows, h)`` intermediates stay in cache from the first matmul into the second. Two such buffers are
live at once in a block (forward: the pre-activation and the activation; backward: the activation gradient and
the recomputed activation), so one buffer gets half of the cache the block's threads can use: their L2s plus
their share of the L3 (all of it when the OS lists no more CPUs sharing it than there are threads).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "FALLBACK_L2_BYTES",
    "FALLBACK_L3_BYTES_PER_CPU",
    "SYSFS_CACHE_DIR",
    "CpuCaches",
    "CpuTuning",
    "block_bytes_for",
    "cpu_tuning",
    "parse_cpu_list",
    "parse_size",
    "read_cpu_caches",
]

SYSFS_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_L2_BYTES = 1 << 20  # per core, where sysfs says nothing (x86 server parts: 0.5-2 MiB)
FALLBACK_L3_BYTES_PER_CPU = 2 << 20  # share of the L3 per CPU, where sysfs says nothing (1.5-4 MiB)


def parse_size(text: str) -> int:
    """Bytes of a sysfs cache size: ``"512K"`` -> 524288; ``K``, ``M`` and ``G`` suffixes (binary), or none."""
    s = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    digits = s[:-1] if s[-1:] in ("K", "M", "G") else s
    if not digits.isdigit():
        raise ValueError(f"not a cache size: {text!r}")
    return int(digits) * mult


def parse_cpu_list(text: str) -> int:
    """How many CPUs a sysfs CPU list names: ``"0-3,8,10-11"`` -> 7 (``""`` -> 0)."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi) - int(lo) + 1 if hi else 1
    return count


@dataclass(frozen=True)
class CpuCaches:
    """The data caches one core sees: its L2 (``l2_bytes``), the L3 instance it is on (``l3_bytes``, 0 if none),
    how many CPUs share that L3 (``l3_sharers``), and ``source`` (``"sysfs"`` or ``"fallback"``)."""

    l2_bytes: int
    l3_bytes: int
    l3_sharers: int
    source: str


def _fallback(cpus: int) -> CpuCaches:
    return CpuCaches(FALLBACK_L2_BYTES, FALLBACK_L3_BYTES_PER_CPU * cpus, cpus, "fallback")


def read_cpu_caches(root: Path = SYSFS_CACHE_DIR, cpus: int | None = None) -> CpuCaches:
    """Read cpu0's unified/data L2 and L3 from a sysfs cache tree (``root/index*/{level,type,size,
    shared_cpu_list}``); the documented fallback (scaled to ``cpus``, default ``os.cpu_count()``) where the
    tree is missing, unreadable or has no L2."""
    cpus = cpus or os.cpu_count() or 1
    sizes: dict[int, tuple[int, int]] = {}
    try:
        for idx in sorted(root.glob("index*")):
            kind = (idx / "type").read_text().strip()
            if kind not in ("Unified", "Data"):
                continue
            level = int((idx / "level").read_text())
            sharers_file = idx / "shared_cpu_list"
            sharers = parse_cpu_list(sharers_file.read_text()) if sharers_file.exists() else 1
            sizes[level] = (parse_size((idx / "size").read_text()), max(sharers, 1))
    except (OSError, ValueError):
        return _fallback(cpus)
    if 2 not in sizes:
        return _fallback(cpus)
    l3, sharers = sizes.get(3, (0, 1))
    return CpuCaches(sizes[2][0], l3, sharers, "sysfs")


def block_bytes_for(caches: CpuCaches, threads: int) -> int:
    """Bytes of one block's ``(rows, h)`` buffer: half the cache ``threads`` threads use (their L2s and their
    share of the L3; see the module docstring). At least one L2."""
    threads = max(threads, 1)
    l3_share = caches.l3_bytes * min(1.0, threads / caches.l3_sharers)
    return max(caches.l2_bytes, int(threads * caches.l2_bytes + l3_share) // 2)


@dataclass(frozen=True)
class CpuTuning:
    """The kernel's CPU settings for this machine and thread count."""

    caches: CpuCaches
    threads: int
    isa: str
    block_bytes: int  # one block's (rows, h) buffer, see block_bytes_for


@functools.lru_cache(maxsize=8)
def _tuning(threads: int) -> CpuTuning:
    caches = read_cpu_caches()
    return CpuTuning(caches=caches, threads=threads, isa=torch.backends.cpu.get_cpu_capability(),
                     block_bytes=block_bytes_for(caches, threads))


def cpu_tuning() -> CpuTuning:
    """The tuning for the current ``torch.get_num_threads()`` (sysfs is read once per thread count)."""
    return _tuning(torch.get_num_threads())
