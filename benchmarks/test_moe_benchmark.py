"""pytest-benchmark suite of the MoE expert computation: naive vs dense vs capacity vs fused vs floor.

Run: ``nice pytest benchmarks --benchmark-only --benchmark-json=moe.json`` then
``python benchmarks/report.py moe.json``. ``MERCORE_BENCH_GRID=small`` (or ``target``) shrinks the grid.
Plain ``pytest`` does not collect this directory (``testpaths = ["tests"]``); ``--benchmark-skip`` skips it.

The (problem, pass, variant) parametrization and the measuring live in ``conftest.py``. Results are grouped per
problem (``benchmark.group``: pass, N, h, E, k) so ``pytest-benchmark compare --group-by=group`` shows the
variants side by side; ``extra_info`` carries ``variant``, ``pass``, ``N``, ``d``, ``h``, ``E``, ``k`` and
``peak_bytes`` (see ``mercore.kernels.profiling.cpu_peak_bytes``), plus ``device`` and ``dtype``.
"""

from __future__ import annotations

import pytest
import torch


def test_moe_cpu_float32(moe_bench) -> None:
    """float32 on CPU: the table the issue's targets refer to."""
    moe_bench("cpu", torch.float32)


@pytest.mark.moe_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() is False)")
def test_moe_cuda_bfloat16(moe_bench) -> None:
    """bfloat16 on CUDA, h = 1024 problems of the same grid; skipped without a GPU."""
    moe_bench("cuda", torch.bfloat16)
