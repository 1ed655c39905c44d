"""The MoE benchmark suite runs end to end and its JSON alone yields the report (tiny grid, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, benchmark_module
VARIANTS = {"naive", "dense", "capacity", "fused", "floor"}


@pytest.mark.slow
def test_benchmarks_json_has_every_key_and_report_prints_ratios(tmp_path: Path) -> None:
    out = tmp_path / "moe.json"
    env = dict(os.environ, MERCORE_BENCH_GRID="tiny")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", f"--benchmark-json={out}", "-q",
         "-p", "no:cacheprovider", "-k", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    named = data["machine_info"]["mercore"]  # the machine the results were measured on
    assert {"cpu_model", "cpu_count", "isa", "torch_threads", "torch_version", "blas"} <= named.keys(), named
    assert named["cpu_model"] and named["isa"] and named["torch_threads"] >= 1
    benches = data["benchmarks"]
    seen = set()
    for b in benches:
        info = b["extra_info"]
        assert {"variant", "pass", "N", "d", "h", "E", "k", "peak_bytes"} <= info.keys(), info
        assert info["peak_bytes"] > 0
        seen.add((info["variant"], info["pass"], info["k"]))
        assert b["group"] == f"{info['pass']} N={info['N']} h={info['h']} E={info['E']} k={info['k']}"
    assert seen == {(v, p, k) for v in VARIANTS for p in ("fwd", "fwdbwd") for k in (1, 2)}

    report = subprocess.run([sys.executable, "benchmarks/report.py", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| cpu/float32")]
    assert len(rows) == 4  # (fwd, fwdbwd) x (k=1, k=2)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(c != "-" for c in cells[6:13]), row  # every variant's median and both ratios
        assert float(cells[12]) > 0  # fused/floor
    assert "fwdbwd N=2048 h=1024 E=16 k=2 not in this file" in report.stdout


def test_plain_pytest_does_not_collect_benchmarks() -> None:
    assert 'testpaths = ["tests"]' in (ROOT / "pyproject.toml").read_text()


def test_interleaved_retiming_prints_one_row_per_cell() -> None:
    """`benchmarks/interleaved.py` times the same problems as the suite, variants interleaved per round."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/interleaved.py", "fwd:37,64,4,2", "fwdbwd:37,64,4,1", "--rounds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| fwd")]
    assert [(r[0].strip(), r[4].strip()) for r in rows] == [("fwd", "2"), ("fwdbwd", "1")]
    for r in rows:
        assert all(float(v) >= 0 for v in r[5:8]) and all(float(v) > 0 for v in r[8:10])  # ms, then ratios
    assert "fused slower than naive in" in proc.stdout
    assert proc.stdout.startswith("machine: ") and "ISA " in proc.stdout and "mercore: " in proc.stdout
    bad = subprocess.run([sys.executable, "benchmarks/interleaved.py", "bwd:37,64,4,1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "PASS must be fwd or fwdbwd" in bad.stderr


def test_interleaved_names_issue13_cells_and_per_cell_rounds() -> None:
    """`--cells issue13` is issue 13's seven rows in order (the target cell twice, the second at 25 rounds)."""
    listed = subprocess.run([sys.executable, "benchmarks/interleaved.py", "--cells", "issue13", "--list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.split() == [
        "fwdbwd:2048,1024,16,2", "fwdbwd:2048,1024,16,2@25", "fwd:2048,1024,16,2", "fwdbwd:512,1024,16,2",
        "fwdbwd:2048,512,8,1", "fwdbwd:8192,1024,8,2", "fwd:8192,1024,8,2"]
    bad = subprocess.run([sys.executable, "benchmarks/interleaved.py", "fwd:37,64,4,x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected PASS:N,h,E,k or PASS:N,h,E,k@ROUNDS with integers" in bad.stderr


def test_machine_info_names_cpu_isa_threads_and_blas(tmp_path: Path) -> None:
    machine_info = benchmark_module("machine_info")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t: avx\n")
    assert machine_info.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    config = ("PyTorch built with:\n  - GCC 11.2\n  - Intel(R) oneAPI Math Kernel Library Version 2024.2\n"
              "  - Intel(R) MKL-DNN v3.12.0\n  - CPU capability usage: AVX512\n"
              "  - Build settings: BLAS_INFO=mkl, CXX_COMPILER=/opt/c++, USE_MKLDNN=ON, USE_CUDA=OFF\n")
    assert machine_info.blas_lines(config) == [
        "Intel(R) oneAPI Math Kernel Library Version 2024.2", "Intel(R) MKL-DNN v3.12.0",
        "CPU capability usage: AVX512", "Build settings: BLAS_INFO=mkl, USE_MKLDNN=ON"]
    info = machine_info.machine_info()
    header = machine_info.machine_header(info)
    assert header.startswith(f"machine: {info['cpu_model']}") and f"ISA {info['isa']}" in header
