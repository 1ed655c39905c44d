"""Which machine a benchmark ran on: CPU model, ISA torch dispatches to, threads, and torch's BLAS/oneDNN build.

Every benchmark table names its machine (issue 13: the same kernel sat at 1.02x the dense floor on one x86 CPU and
1.39x on another). Used by ``benchmarks/interleaved.py`` (printed above its table) and by ``benchmarks/conftest.py``
(stored in pytest-benchmark's ``machine_info``). Benchmark-side only and free of ``mercore`` imports, so it runs
the same against any installed ``mercore`` (e.g. a before/after comparison of two checkouts).

    python benchmarks/machine_info.py      # the header alone
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import torch

__all__ = ["blas_lines", "cpu_model", "machine_header", "machine_info"]

# Lines of torch.__config__.show() that say which GEMM/conv libraries and CPU features the build uses.
_CONFIG_KEYS = re.compile(r"MKL|BLAS|LAPACK|oneDNN|MKLDNN|OpenMP|CPU capability|Intel|OpenBLAS|AVX", re.IGNORECASE)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: ``/proc/cpuinfo``'s first ``model name``, else ``lscpu``'s ``Model name``, else
    :func:`platform.processor` (``"unknown"`` if all are empty)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and value.strip():
                return value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def blas_lines(config: str | None = None) -> list[str]:
    """The BLAS / LAPACK / MKL / oneDNN / OpenMP / CPU-capability lines of ``torch.__config__.show()``."""
    text = torch.__config__.show() if config is None else config
    lines = []
    for raw in text.splitlines():
        line = raw.strip().lstrip("-").strip()
        if not line or not _CONFIG_KEYS.search(line):
            continue
        if line.startswith("Build settings:"):  # one long comma-separated line: keep only the BLAS-ish items
            items = [it.strip() for it in line.removeprefix("Build settings:").split(",")]
            line = "Build settings: " + ", ".join(it for it in items if _CONFIG_KEYS.search(it))
        lines.append(line)
    return lines


def machine_info() -> dict[str, object]:
    """``cpu_model``, ``cpu_count`` (the OS's), ``isa`` (``torch.backends.cpu.get_cpu_capability()``),
    ``torch_threads``, ``torch_version`` and ``blas`` (the lines of :func:`blas_lines`)."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "blas": blas_lines(),
    }


def machine_header(info: dict[str, object] | None = None) -> str:
    """:func:`machine_info` as a few Markdown-friendly lines to print above a table."""
    info = machine_info() if info is None else info
    lines = [
        f"machine: {info['cpu_model']} ({info['cpu_count']} CPUs), ISA {info['isa']}, "
        f"torch {info['torch_version']} with {info['torch_threads']} threads",
    ]
    lines += [f"  {line}" for line in info["blas"]]  # type: ignore[union-attr]
    return "\n".join(lines)


if __name__ == "__main__":
    print(machine_header())
