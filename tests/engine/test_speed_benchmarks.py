"""The speed scripts of issue 11 run end to end on the CPU at tiny sizes: ``benchmarks/summer_epoch.py``
(timed steps, extrapolated epoch, profile, bi-GRU expert variants) and ``benchmarks/gpu_table.py --device cpu
--quick`` (its Markdown tables); ``benchmarks/thread_policy.py`` builds the option it is asked for."""

from __future__ import annotations

import sys

import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def quick_summer():
    import summer_epoch

    return summer_epoch.measure("cpu", "fp32", steps=2, warmup=0, quick=True, threads=1, top=5, experts=True,
                                rounds=1)


def test_summer_epoch_times_profiles_and_extrapolates(quick_summer):
    import summer_epoch

    r = quick_summer
    t = r["timing"]
    assert (r["device"], r["precision"], r["threads"], r["hidden"], r["batch_size"]) == ("cpu", "fp32", 1, 32, 4)
    assert r["dialogues"] == 12 and t["steps"] == 2 and t["mean_s"] > 0
    assert t["epoch_s_extrapolated"] == pytest.approx(t["mean_s"] * t["steps_per_epoch"])
    assert "gpu_busy_fraction" not in r["profile"] and "Self CPU" in r["profile"]["table"]
    variants = {e["variant"]: e for e in r["experts"]}
    assert variants["loop (today)"]["exact"] is True and variants["loop (today)"]["ms"] > 0
    assert "CUDA streams" not in variants  # CUDA only
    text = summer_epoch.report(r)
    assert "epoch (EXTRAPOLATED:" in text and "| loop (today) |" in text


def test_gpu_table_cpu_quick_prints_the_summer_tables(tmp_path, capsys):
    import gpu_table

    out = tmp_path / "table.md"
    assert gpu_table.main(["--device", "cpu", "--quick", "--no-kernel", "--cpu-steps", "1", "--out", str(out)]) == 0
    text = out.read_text()
    summer = text.split("## SUMMER training step (QUICK sizes", 1)[1].split("## bi-GRU experts", 1)[0]
    rows = [line for line in summer.splitlines() if line.startswith("| cpu |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "fp32" and float(cells[3]) > 0 and cells[4] == "1" and cells[7] == "-"
    assert cells[6].endswith("(extrapolated)")
    assert "| cpu | fp32 | loop (today) |" in text.split("## bi-GRU experts", 1)[1]


def test_thread_policy_options_name_what_they_set():
    import thread_policy

    opts = thread_policy.options(cores=4)
    assert (opts["torch-default"].threads, opts["torch-default"].wait_policy) == (4, "")
    assert (opts["one-thread"].threads, opts["cores-minus-one-spin"].threads) == (1, 3)
    assert (opts["policy"].threads, opts["policy"].wait_policy) == (None, None)
