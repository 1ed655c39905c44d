"""``benchmarks/kernel_table.py`` (the GPU benchmark of issue 11) runs end to end in its CPU quick mode and
prints a full Markdown table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import ROOT


def test_kernel_table_quick_mode_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "benchmarks/kernel_table.py", "--device", "cpu", "--quick", "--rounds", "1",
         "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and " ms " not in line]
    labels = [r.strip("|").split("|")[0].strip() for r in rows]
    assert [label.split(":")[0] for label in labels] == ["MERC"] * 2 + ["Mixtral"] * 2 + ["fine-grained"] * 4
    assert [label.endswith("GLU") for label in labels] == [False] * 2 + [True] * 6
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[1] in ("fwd", "fwd+bwd")
        # naive, fused and floor times, both time ratios and both peaks are numbers (grouped-only may be "-").
        for i in (2, 3, 5, 6, 7, 8, 9, 10):
            assert float(cells[i]) > 0, (r, i)


def test_kernel_table_says_when_cuda_is_missing() -> None:
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, "benchmarks/kernel_table.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "--device cuda: CUDA is not available here (torch.cuda.is_available() is False); use --device cpu" in proc.stderr
