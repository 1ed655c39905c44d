"""The sync-free CUDA path (``impl="sync_free"``, what ``auto`` takes on CUDA): same results as the naive loop,
no host read anywhere in its forward or backward, chunked no-grad inference.

On the CPU the path runs as well (``torch._grouped_mm`` runs on the CPU in torch 2.13), with every way of
reading a tensor's value into Python patched to raise; the CUDA tests (sync debug mode "error", CUDA graph
capture) skip without a GPU.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import textwrap
from collections.abc import Iterator
from unittest import mock

import pytest
import torch

from mercore.kernels import moe
from mercore.kernels.moe import api, block, combine, function, grouped, layout, routing, sync_free
from mercore.kernels.moe import fused_moe, fused_moe_flat, grouped_mm_available, naive_moe, padded_to_flat

pytestmark = pytest.mark.skipif(
    not grouped_mm_available("cpu", torch.float32), reason="torch._grouped_mm does not run on this CPU build"
)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() is False)")


class HostRead(AssertionError):
    """Raised by the guard when code reads a tensor's value into Python."""


_READS = ("item", "tolist", "numpy", "cpu", "__int__", "__bool__", "__float__", "__index__")


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Patch every Python-level way of reading a tensor's value to the host (``.item()``, ``.tolist()``,
    ``.numpy()``, ``.cpu()``, ``int()``/``bool()``/``float()``/index use) to raise :class:`HostRead`. On CUDA each
    of these is a device sync; a CPU run of the same code under this guard proves the code has none."""

    def raiser(name: str):
        def read(self, *args, **kwargs):
            raise HostRead(f"host read: Tensor.{name} on a {tuple(self.shape)} tensor")

        return read

    with contextlib.ExitStack() as stack:
        for name in _READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, raiser(name)))
        yield


def fwd_bwd(p: dict, flat: bool = False, **kw) -> None:
    """Forward and backward of every leaf through the sync-free path (inputs built before the guard)."""
    if flat:
        out = fused_moe_flat(p["x"], p["w1"], p["w2"], *padded_to_flat(p["expert_idx"], p["gate"]), b1=p["b1"],
                             b2=p["b2"], w3=p["w3"], impl="sync_free", **kw)
    else:
        out = fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], b1=p["b1"], b2=p["b2"], w3=p["w3"],
                        impl="sync_free", **kw)
    leaves = [p[n] for n in ("x", "w1", "w2", "gate", "b1", "b2", "w3") if p[n] is not None]
    torch.autograd.grad(out, leaves, torch.ones_like(out))


# ------------------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
@pytest.mark.parametrize("bias,glu,drop", [(False, False, 0.0), (True, False, 0.3), (True, True, 0.3), (False, True, 1.0)])
def test_sync_free_matches_naive(moe_inputs, moe_outputs, assert_match, activation, bias, glu, drop) -> None:
    p = moe_inputs(45, 16, 24, 6, 2, bias=bias, glu=glu, drop=drop, seed=3)
    got = moe_outputs(fused_moe, p, activation, impl="sync_free")
    assert_match(got, moe_outputs(naive_moe, p, activation))
    assert torch.count_nonzero(got["gate"][p["expert_idx"] < 0]) == 0  # -1 slots: zero gate gradient


def test_sync_free_flat_form_and_empty_experts(moe_inputs, moe_outputs, assert_match) -> None:
    p = moe_inputs(30, 8, 12, 6, 3, bias=True, drop=0.2, seed=4)
    p["expert_idx"] = torch.where(p["expert_idx"] == 2, 5, p["expert_idx"])  # expert 2 gets nothing
    ref = moe_outputs(naive_moe, p)
    got = moe_outputs(lambda x, w1, w2, idx, g, **kw: fused_moe_flat(x, w1, w2, *padded_to_flat(idx, g), **kw),
                      p, impl="sync_free")
    assert_match(got, ref)
    assert torch.count_nonzero(got["w1"][2]) == 0 and torch.count_nonzero(got["b1"][2]) == 0


def test_sync_free_bfloat16_close_to_float32(moe_inputs, moe_outputs) -> None:
    p = moe_inputs(40, 32, 64, 8, 2, bias=True, glu=True, drop=0.2, seed=5)
    ref = moe_outputs(naive_moe, p)["out"]
    pbf = {n: (v.detach().bfloat16().requires_grad_() if v is not None and v.is_floating_point() else v)
           for n, v in p.items()}
    got = moe_outputs(fused_moe, pbf, impl="sync_free")
    torch.testing.assert_close(got["out"].float(), ref, rtol=3e-2, atol=3e-2 * float(ref.abs().max()))
    assert all(torch.isfinite(v.float()).all() for v in got.values())


def test_sync_free_refuses_unaligned_rows(moe_inputs) -> None:
    p = moe_inputs(5, 6, 12, 3, 2)  # d = 6 float32 = 24 bytes: not a multiple of 16
    with pytest.raises(RuntimeError, match="impl='sync_free' needs torch._grouped_mm .* 16-byte aligned"):
        fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], impl="sync_free")


def test_sync_free_range_check_on_device(moe_inputs) -> None:
    """Out-of-range experts are caught by a device-side assert (on the CPU: at once)."""
    p = moe_inputs(4, 8, 12, 3, 2)
    with pytest.raises(RuntimeError, match=r"expert_idx entries must be in \[-1, E\) with E = num_experts=3"):
        fused_moe(p["x"], p["w1"], p["w2"], torch.full((4, 2), 3), p["gate"], impl="sync_free")


# ------------------------------------------------------------------------------------------------- no host read


@pytest.mark.parametrize("bias,glu,drop", [(True, False, 0.3), (False, True, 0.0), (True, True, 1.0)])
@pytest.mark.parametrize("flat", [False, True])
def test_sync_free_path_reads_nothing_from_the_device(moe_inputs, bias, glu, drop, flat) -> None:
    p = moe_inputs(33, 16, 24, 5, 2, bias=bias, glu=glu, drop=drop, seed=6)
    fwd_bwd(p, flat=flat)  # warm-up outside the guard: grouped_mm_available's one-off probe
    with no_host_reads():
        fwd_bwd(p, flat=flat)
        with torch.no_grad():
            fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], w3=p["w3"], impl="sync_free")


def test_host_path_is_caught_by_the_guard(moe_inputs) -> None:
    """The guard is not vacuous: the padded (CPU) path reads its counts to the host and is caught."""
    p = moe_inputs(20, 16, 24, 4, 2, seed=7)
    with no_host_reads(), pytest.raises(HostRead, match=r"host read: Tensor\.(tolist|__int__)"):
        fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], impl="padded")


@pytest.mark.parametrize("read", ["item", "bool"])
def test_guard_fails_when_a_host_read_is_added_to_the_sync_free_path(moe_inputs, read: str) -> None:
    """Inject one host read into the sync-free layout and the no-host-read check fails."""
    p = moe_inputs(20, 16, 24, 4, 2, seed=8)
    original = sync_free.SyncFreeLayout.clear_unused_rows_

    def with_read(self, rows):
        if read == "item":
            rows.abs().max().item()
        elif rows.abs().max() > 0:  # bool() of a tensor
            pass
        return original(self, rows)

    with mock.patch.object(sync_free.SyncFreeLayout, "clear_unused_rows_", with_read):
        fwd_bwd(p)  # runs fine without the guard
        with no_host_reads(), pytest.raises(HostRead):
            fwd_bwd(p)


_FORBIDDEN_METHODS = {"item", "tolist", "numpy", "cpu"}
_FORBIDDEN_BUILTINS = {"int", "bool", "float"}


def host_reads_in(source: str) -> list[str]:
    """Calls in ``source`` that read a value to the host: ``x.item()``, ``x.tolist()``, ``x.numpy()``,
    ``x.cpu()``, and ``int(...)``, ``bool(...)``, ``float(...)`` of anything (the CUDA path has no host numbers
    to convert, so any such call is suspect)."""
    found = []
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in _FORBIDDEN_METHODS:
            found.append(f"line {node.lineno}: .{f.attr}()")
        elif isinstance(f, ast.Name) and f.id in _FORBIDDEN_BUILTINS:
            found.append(f"line {node.lineno}: {f.id}()")
    return found


# Everything the sync-free forward and backward execute.
SYNC_FREE_CODE = [
    sync_free, combine, function, block, moe.activations, routing.sort_assignments_on_device,
    routing._flatten_checked, routing.DeviceRouting, grouped.GroupedOps, grouped.aligned,
    layout.sync_free_eligible, api._fused, api._use_sync_free, api.fused_moe, api.fused_moe_flat,
    api.inference_chunk_tokens, routing.padded_to_flat,
]


@pytest.mark.parametrize("obj", SYNC_FREE_CODE, ids=lambda o: getattr(o, "__qualname__", o.__name__))
def test_sync_free_source_has_no_host_read(obj) -> None:
    assert host_reads_in(inspect.getsource(obj)) == []


def test_source_check_finds_host_reads() -> None:
    src = "def f(t):\n    n = t.sum().item()\n    c = t.tolist()\n    if bool(t.any()):\n        return int(t.max())\n"
    assert host_reads_in(src) == ["line 2: .item()", "line 3: .tolist()", "line 4: bool()", "line 5: int()"]
    assert host_reads_in(inspect.getsource(routing.sort_assignments))  # the host routing does read


# ------------------------------------------------------------------------------------------------- inference


def test_chunked_inference_matches_and_lowers_the_peak(moe_inputs) -> None:
    from mercore.kernels.profiling import cpu_peak_bytes

    p = moe_inputs(512, 64, 256, 8, 2, glu=True, seed=9)
    args = (p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"])
    chunk_bytes = 64 * 2 * ((2 * 64 + 2 * 256) * 4 + 4 * 64)  # 64 tokens per chunk: 8 chunks
    with torch.no_grad():
        ref = naive_moe(*args, w3=p["w3"])
        whole = fused_moe(*args, w3=p["w3"], impl="sync_free")
        with mock.patch.object(api, "INFERENCE_CHUNK_BYTES", chunk_bytes), \
                mock.patch.object(api, "_fused", wraps=api._fused) as spy:
            chunked = fused_moe(*args, w3=p["w3"], impl="sync_free")
        assert spy.call_count == 8
        torch.testing.assert_close(chunked, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(chunked, whole)

        def peak(chunk: int) -> int:
            with mock.patch.object(api, "INFERENCE_CHUNK_BYTES", chunk):
                return cpu_peak_bytes(lambda: fused_moe(*args, w3=p["w3"], impl="sync_free"))

        naive_peak = cpu_peak_bytes(lambda: naive_moe(*args, w3=p["w3"]))
        unchunked, small = peak(1 << 40), peak(chunk_bytes)
    assert small < unchunked / 2, (small, unchunked)
    assert small <= 2 * naive_peak, (small, naive_peak)


# ------------------------------------------------------------------------------------------------- CUDA


def _cuda_inputs(moe_inputs, **kw) -> dict:
    return moe_inputs(300, 64, 128, 8, 2, bias=True, glu=True, drop=0.1, dtype=torch.bfloat16, device="cuda", **kw)


@CUDA
def test_cuda_auto_takes_the_sync_free_path_without_a_sync(moe_inputs) -> None:
    p = _cuda_inputs(moe_inputs, seed=10)
    out = fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], b1=p["b1"], b2=p["b2"], w3=p["w3"])
    torch.cuda.synchronize()  # warm-up done (lazy CUDA init, the grouped_mm probe)
    with mock.patch.object(api, "SyncFreeLayout", wraps=api.SyncFreeLayout) as spy:
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], b1=p["b1"], b2=p["b2"], w3=p["w3"])
            leaves = [p[n] for n in ("x", "w1", "w2", "gate", "b1", "b2", "w3")]
            torch.autograd.grad(out, leaves, torch.ones_like(out))
            with torch.no_grad():
                fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], w3=p["w3"])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert spy.call_count == 2


@CUDA
def test_cuda_graph_captures_the_moe_forward(moe_inputs) -> None:
    p = _cuda_inputs(moe_inputs, seed=11)
    args = (p["x"].detach(), p["w1"].detach(), p["w2"].detach(), p["expert_idx"], p["gate"].detach())
    with torch.no_grad():
        eager = fused_moe(*args, w3=p["w3"].detach())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fused_moe(*args, w3=p["w3"].detach())  # warm-up on a side stream, as graph capture requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = fused_moe(*args, w3=p["w3"].detach())
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager)
