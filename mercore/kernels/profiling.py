"""Peak-memory measurement of one call, for the MoE kernel's tests and benchmarks."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable

import torch

__all__ = ["cpu_peak_bytes", "cuda_peak_bytes"]


def cpu_peak_bytes(run: Callable[[], None]) -> int:
    """Peak CPU bytes allocated (and not yet freed) during ``run``, above what was allocated before it.

    Measured with ``torch.profiler(profile_memory=True)``: every allocation/free through the c10 CPU allocator
    is recorded with the allocator's running ``Total Allocated``; the peak of that minus its value just before
    the first event is the high-water mark of tensors created by ``run`` -- activations saved for backward,
    temporaries, the output and the gradients (which ``zero_grad`` released before). Inputs and weights, which
    exist before, are not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted(
        (ev for ev in events if ev.get("name") == "[memory]" and ev["args"].get("Device Type", 0) == 0),
        key=lambda ev: ev["ts"],
    )
    if not mem:
        return 0
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return int(max(ev["args"]["Total Allocated"] for ev in mem) - base)


def cuda_peak_bytes(run: Callable[[], None]) -> int:
    """Peak CUDA bytes allocated during ``run`` above what was allocated before (``max_memory_allocated``)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)
