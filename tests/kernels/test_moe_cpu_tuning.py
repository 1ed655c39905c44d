"""The kernel's CPU tuning is read from the machine: cache sizes from a (here fake) sysfs tree, with a documented
fallback, and the block budget derived from them and the thread count."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercore.kernels.moe import cpu_tuning as ct


def fake_sysfs(root: Path, caches: list[tuple[int, str, str, str]]) -> Path:
    """``root/index<i>/{level,type,size,shared_cpu_list}`` for each (level, type, size, shared CPUs)."""
    for i, (level, kind, size, shared) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
        (d / "shared_cpu_list").write_text(f"{shared}\n")
    return root


def test_parse_size_and_cpu_list() -> None:
    assert ct.parse_size("512K") == 512 << 10
    assert ct.parse_size("32768K\n") == 32 << 20
    assert ct.parse_size("2M") == 2 << 20 and ct.parse_size("1G") == 1 << 30 and ct.parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not a cache size: 'big'"):
        ct.parse_size("big")
    assert ct.parse_cpu_list("0-1") == 2
    assert ct.parse_cpu_list("0-3,8,10-11") == 7
    assert ct.parse_cpu_list("5") == 1 and ct.parse_cpu_list("") == 0


def test_reads_l2_and_l3_from_sysfs(tmp_path: Path) -> None:
    # The 2-core EPYC VM of the first measurements: 32K L1d, 64K L1i, 512K L2, 8 MiB L3 over both CPUs.
    root = fake_sysfs(tmp_path, [(1, "Data", "32K", "0"), (1, "Instruction", "64K", "0"),
                                 (2, "Unified", "512K", "0"), (3, "Unified", "8192K", "0-1")])
    caches = ct.read_cpu_caches(root, cpus=2)
    assert caches == ct.CpuCaches(l2_bytes=512 << 10, l3_bytes=8 << 20, l3_sharers=2, source="sysfs")
    # Two threads: both L2s and all of the L3, halved (two (rows, h) buffers per block).
    assert ct.block_bytes_for(caches, 2) == (2 * (512 << 10) + (8 << 20)) // 2
    # One thread: its L2 and half the L3 (the other CPU shares it).
    assert ct.block_bytes_for(caches, 1) == ((512 << 10) + (4 << 20)) // 2


def test_shared_l3_is_split_by_sharers_and_l2_only_machines(tmp_path: Path) -> None:
    # A 2 MiB-L2 Xeon whose 32 MiB L3 is shared by 16 CPUs, of which the kernel runs 2 threads.
    xeon = ct.read_cpu_caches(fake_sysfs(tmp_path / "xeon", [(2, "Unified", "2048K", "0"),
                                                             (3, "Unified", "32M", "0-15")]), cpus=16)
    assert ct.block_bytes_for(xeon, 2) == (2 * (2 << 20) + (4 << 20)) // 2
    # No L3 at all: the L2s alone; never less than one L2.
    l2_only = ct.read_cpu_caches(fake_sysfs(tmp_path / "l2", [(2, "Unified", "1M", "0")]), cpus=4)
    assert (l2_only.l3_bytes, l2_only.source) == (0, "sysfs")
    assert ct.block_bytes_for(l2_only, 1) == 1 << 20 and ct.block_bytes_for(l2_only, 4) == 2 << 20


@pytest.mark.parametrize("broken", ["missing", "no_l2", "garbage"])
def test_fallback_when_sysfs_says_nothing(tmp_path: Path, broken: str) -> None:
    if broken == "no_l2":
        fake_sysfs(tmp_path, [(1, "Data", "32K", "0")])
    elif broken == "garbage":
        fake_sysfs(tmp_path, [(2, "Unified", "lots", "0")])
    root = tmp_path / "nowhere" if broken == "missing" else tmp_path
    caches = ct.read_cpu_caches(root, cpus=4)
    assert caches == ct.CpuCaches(ct.FALLBACK_L2_BYTES, 4 * ct.FALLBACK_L3_BYTES_PER_CPU, 4, "fallback")


def test_tuning_follows_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = ct.cpu_tuning()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    two = ct.cpu_tuning()
    assert (one.threads, two.threads) == (1, 2)
    assert one.block_bytes == ct.block_bytes_for(one.caches, 1) and two.block_bytes == ct.block_bytes_for(two.caches, 2)
    assert one.isa == torch.backends.cpu.get_cpu_capability()
