"""The padded layout: expert-grouped rows in ``(E, C, .)`` groups, every matmul one ``torch.bmm``; on the CPU
cut into cache-sized blocks of consecutive experts. The CPU layout (why: ``DESIGN.md``, "Layouts")."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from .activations import acc_dtype
from .block import Block
from .combine import Combine
from .cpu_tuning import cpu_tuning
from .routing import MoERouting

__all__ = ["CPU_BLOCK_BYTES", "PaddedGroups", "PaddedLayout", "Spans", "block_budget_bytes", "block_spans",
           "experts_per_block", "padded_rows"]

# CPU cache blocking: the padded layout holds its experts in runs whose (rows, h) intermediates take at most
# this many bytes, and the kernel walks the runs (DESIGN.md, "CPU cache blocking"). None: derived from this
# machine's caches and thread count (cpu_tuning.block_bytes_for); an int overrides it (tests, experiments).
CPU_BLOCK_BYTES: int | None = None

class PaddedGroups:
    """Batched per-expert ops over ``e`` experts' padded ``(e * c, .)`` rows: every matmul is one ``torch.bmm``."""

    def __init__(self, e: int, c: int) -> None:
        self.e, self.c = e, c

    def mm(self, a: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
        """Per-expert ``rows @ w[e]``: ``(e*c, K)`` x ``(e, K, P)`` (any strides) -> ``(e*c, P)``, one bmm."""
        if out is None:
            return torch.bmm(a.view(self.e, self.c, -1), w).view(self.e * self.c, -1)
        torch.bmm(a.view(self.e, self.c, -1), w, out=out.view(self.e, self.c, -1))
        return out

    def mm_wgrad(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        """Per-expert ``rows_a.T @ rows_b``: ``(e*c, K)``, ``(e*c, P)`` -> ``(e, K, P)``, one bmm."""
        return torch.bmm(a.view(self.e, self.c, -1).transpose(1, 2), b.view(self.e, self.c, -1), out=out)

    def add_bias_(self, rows: Tensor, bias: Tensor) -> Tensor:
        rows.view(self.e, self.c, -1).add_(bias.unsqueeze(1))
        return rows

    def segment_sum(self, rows: Tensor) -> Tensor:
        """``(e*c, f)`` -> ``(e, f)`` per-expert sums (padding rows are zero in every gradient summed here)."""
        return rows.view(self.e, self.c, -1).sum(1, dtype=acc_dtype(rows.dtype))


@dataclass
class Spans:
    """The blocks of the padded layout: ``(e0, e1, capacity, first row)`` each, and the total row count ``R``."""

    blocks: list[tuple[int, int, int, int]]
    num_rows: int


def block_budget_bytes() -> int:
    """Bytes one block's ``(rows, h)`` buffer may take: :data:`CPU_BLOCK_BYTES` if set, else derived."""
    return CPU_BLOCK_BYTES if CPU_BLOCK_BYTES is not None else cpu_tuning().block_bytes


def experts_per_block(counts: list[int], row_bytes: int, device: torch.device) -> int:
    """How many consecutive experts one block of the padded layout holds.

    The cache allows runs whose ``(rows, h)`` buffer fits :func:`block_budget_bytes` at the largest load. A CPU
    bmm splits its batch over the threads (a run of 3 experts on 2 threads leaves one thread idle a third of
    the time: measured 30% slower), so a run is a multiple of the thread count (or 1 when not even that fits),
    unless all experts fit at once. The experts are cut into as few blocks as the cache allows; among the run
    lengths that give that many blocks, the one with the fewest padded rows (each block pads to its own largest
    load), the shorter on a tie (16 experts with room for 14 on 2 threads: runs of 8, 10, 12 or 14 all make two
    blocks). More, shorter blocks would pad less but cost more ops; measured, they did not pay (DESIGN.md)."""
    num_experts = len(counts)
    if device.type != "cpu" or row_bytes <= 0 or num_experts <= 1:
        return max(num_experts, 1)
    capacity = max(max(counts), 1)
    limit = max(1, block_budget_bytes() // (capacity * row_bytes))
    if limit >= num_experts:
        return num_experts
    threads = torch.get_num_threads()
    if limit < threads:
        return 1
    limit -= limit % threads
    n_blocks = -(-num_experts // limit)
    same_count = [r for r in range(threads, limit + 1, threads) if -(-num_experts // r) == n_blocks]
    return min(same_count, key=lambda r: (padded_rows(counts, r), r))


def padded_rows(counts: list[int], run: int) -> int:
    """Rows of the padded layout with the experts cut into runs of ``run``, each padded to its largest load."""
    return sum((min(e0 + run, len(counts)) - e0) * max(max(counts[e0:e0 + run]), 1)
               for e0 in range(0, len(counts), run))


def block_spans(routing: MoERouting, row_bytes: int = 0) -> Spans:
    """Cut the experts into blocks of :func:`experts_per_block` consecutive experts (``row_bytes = 0``: one
    block); a block's capacity is the largest load among its experts (at least 1)."""
    counts = routing.counts
    per_block = experts_per_block(counts, row_bytes, routing.token.device)
    blocks, start = [], 0
    for e0 in range(0, len(counts), per_block):
        e1 = min(e0 + per_block, len(counts))
        cap = max(max(counts[e0:e1]), 1)
        blocks.append((e0, e1, cap, start))
        start += (e1 - e0) * cap
    return Spans(blocks, start)


class PaddedLayout:
    """Rows ``(R, f)`` in blocks of consecutive experts (see :data:`CPU_BLOCK_BYTES`). In the block of experts
    ``e0 .. e1 - 1``, whose capacity ``C_b`` is the largest load among them, expert ``e``'s assignments sit at
    rows ``start_b + (e - e0) * C_b + rank``, followed by ``C_b - count_e`` padding rows. One block (the usual
    case at MERC sizes) is the plain ``(E, C)`` padded layout; one-expert blocks have no padding at all."""

    def __init__(self, routing: MoERouting, spans: Spans) -> None:
        """``spans``: the blocks, from :func:`block_spans` (one span of all experts: no cache blocking)."""
        self.routing = routing
        counts, num_e = routing.counts, routing.num_experts
        dev = routing.token.device
        # Host-side bookkeeping from the counts (no device sync): each expert's first row and padding.
        base, n_pad = [0] * num_e, [0] * num_e
        for e0, e1, cap, start in spans.blocks:
            for e in range(e0, e1):
                base[e], n_pad[e] = start + (e - e0) * cap, cap - counts[e]
        self.num_rows = spans.num_rows
        # Row of every sorted assignment: base[expert] + its rank among that expert's assignments.
        base_t = torch.tensor(base, device=dev)
        counts_t = torch.tensor(counts, device=dev)
        first_t = routing.offs.to(torch.long) - counts_t  # (E,) first sorted position of each expert
        self.slot = (base_t - first_t).index_select(0, routing.expert) + torch.arange(
            routing.num_assignments, device=dev)  # (M,)
        # Token of every row (padding rows: token 0, zeroed right after every gather).
        self.row_token = torch.zeros(self.num_rows, dtype=torch.long, device=dev)
        self.row_token.index_copy_(0, self.slot, routing.token)
        self.pad_rows = self._padding_rows(base, counts, n_pad)
        self.blocks = self._blocks(spans, n_pad)
        zero_row = next((base[e] + c for e, c in enumerate(counts) if n_pad[e]), None)  # any padding row
        self.combiner = Combine(
            num_tokens=routing.num_tokens, slots_per_token=routing.slots_per_token, order=routing.order,
            row_of_sorted=self.slot, row_token=self.row_token, gate_rows=self.to_rows, num_rows=self.num_rows,
            zero_row=zero_row,
        )

    def _padding_rows(self, base: list[int], counts: list[int], n_pad: list[int]) -> Tensor | None:
        """Padding rows, ascending: expert e's rows ``base[e] + count_e .. base[e] + C_b - 1``; None if none.
        Built on the host from the host counts: one small copy, no parallel op (a ``repeat_interleave`` here cost
        a fork/join per call, which a busy 2-core machine stretches to tens of ms)."""
        if self.num_rows == self.routing.num_assignments:
            return None
        rows = list(itertools.chain.from_iterable(
            range(b + c, b + c + p) for b, c, p in zip(base, counts, n_pad) if p))
        return torch.tensor(rows, dtype=torch.long, device=self.routing.token.device)

    def _blocks(self, spans: Spans, n_pad: list[int]) -> list[Block]:
        pad_start = list(itertools.accumulate(n_pad, initial=0))  # where expert e's padding rows start
        blocks = []
        for e0, e1, cap, start in spans.blocks:
            lo, hi = pad_start[e0], pad_start[e1]
            pad = None
            if hi > lo:  # then pad_rows exists
                pad = self.pad_rows[lo:hi] - start if start else self.pad_rows[lo:hi]  # block-relative
            blocks.append(Block(slice(start, start + (e1 - e0) * cap), slice(e0, e1), PaddedGroups(e1 - e0, cap), pad))
        return blocks

    @property
    def is_empty(self) -> bool:
        """No valid assignment at all (from the host counts)."""
        return self.routing.num_assignments == 0

    def gather(self, src: Tensor, blk: Block | None = None) -> Tensor:
        """``(N, f)`` -> ``(R, f)`` rows ``src[token]`` (of one block's rows if given), zero on padding rows. Zero
        input rows give zero gradient rows all the way through the backward, so padding never leaks into weight
        or bias gradients."""
        idx, pad = (self.row_token, self.pad_rows) if blk is None else (self.row_token[blk.rows], blk.pad_rows)
        rows = src.index_select(0, idx)
        if pad is not None:
            rows.index_fill_(0, pad, 0)  # touches only the padding rows
        return rows

    def to_rows(self, v: Tensor) -> Tensor:
        """``(M,)`` per sorted assignment -> ``(R,)`` per row, zero on padding."""
        return v.new_zeros(self.num_rows).index_copy_(0, self.slot, v)

    def from_rows(self, v: Tensor) -> Tensor:
        """``(R,)`` per row -> ``(M,)`` per sorted assignment."""
        return v.index_select(0, self.slot)

    def clear_unused_rows_(self, rows: Tensor) -> Tensor:
        """Padding rows are already zero in every combined tensor: nothing to do."""
        return rows
