"""The memory plan: a program's intermediates packed into one arena by liveness.

An intermediate lives from the first launch that uses it (the one that writes it) to the last
launch that reads it; two intermediates whose lives do not overlap may share bytes. Placing
them is interval colouring with sizes, NP-hard in general; the greedy order that TFLite's
arena planner uses does well in practice: largest buffer first, each into the smallest gap
(best fit) left between the already placed buffers whose lives overlap its own, else on top.
Offsets and sizes are rounded up to `alignment` bytes (64: a cache line and an AVX-512 vector),
which the executor's arena base also has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from runtime.program import BufferSpec, Launch

Lifetime = tuple[int, int]
"""(first launch, last launch) that use a buffer, both inclusive."""


def _round_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def lifetimes_from_launches(launches: Sequence[Launch], n_buffers: int) -> list[Lifetime | None]:
    """For each buffer index, the first and last launch that take it, or None if none does.
    The first use is the write: a program never reads an intermediate before writing it."""
    lifetimes: list[Lifetime | None] = [None] * n_buffers
    for k, launch in enumerate(launches):
        for i in launch.args:
            first = lifetimes[i][0] if lifetimes[i] is not None else k
            lifetimes[i] = (first, k)
    return lifetimes


def plan_memory(
    sizes: Sequence[int], lifetimes: Sequence[Lifetime | None], alignment: int = 64
) -> tuple[list[int], int]:
    """Byte offsets for buffers of `sizes` live over `lifetimes`, and the arena size they need.
    Buffers alive at the same launch never overlap; a buffer no launch uses (lifetime None) is
    never touched, so it gets offset 0 and only its size counts towards the arena."""
    assert len(sizes) == len(lifetimes), "one lifetime per size"
    rounded = [_round_up(size, alignment) for size in sizes]
    offsets = [0] * len(sizes)
    placed: list[int] = []
    order = sorted(range(len(sizes)), key=lambda i: (-rounded[i], lifetimes[i] or (0, 0), i))
    for i in order:
        if lifetimes[i] is None or rounded[i] == 0:
            continue
        first, last = lifetimes[i]
        overlapping = sorted(
            (j for j in placed if lifetimes[j][0] <= last and first <= lifetimes[j][1]), key=lambda j: offsets[j]
        )
        best_offset, best_gap, top = None, None, 0
        for j in overlapping:
            gap = offsets[j] - top
            if gap >= rounded[i] and (best_gap is None or gap < best_gap):
                best_offset, best_gap = top, gap
            top = max(top, offsets[j] + rounded[j])
        offsets[i] = top if best_offset is None else best_offset
        placed.append(i)
    arena = max((offsets[i] + rounded[i] for i in range(len(sizes))), default=0)
    return offsets, arena


def plan_arena(
    buffers: Sequence[BufferSpec], launches: Sequence[Launch], outputs: Sequence[int] = (), alignment: int = 64
) -> tuple[tuple[BufferSpec, ...], int]:
    """Give every intermediate of a program its arena offset: `buffers` with offsets filled in,
    and the arena's size. An intermediate that is also an output stays live to the end, since the
    executor copies it out after the last launch."""
    lifetimes = lifetimes_from_launches(launches, len(buffers))
    end = max(len(launches) - 1, 0)
    for i in outputs:
        if lifetimes[i] is not None:
            lifetimes[i] = (lifetimes[i][0], end)
    chosen = [i for i, spec in enumerate(buffers) if spec.kind == "intermediate"]
    offsets, arena = plan_memory([buffers[i].nbytes for i in chosen], [lifetimes[i] for i in chosen], alignment)
    planned = list(buffers)
    for i, offset in zip(chosen, offsets, strict=True):
        planned[i] = dataclasses.replace(buffers[i], offset=offset)
    return tuple(planned), arena


def _region(buffers: Sequence[BufferSpec], i: int) -> tuple[int, int, int]:
    """(space, start, end) of the bytes buffer i occupies: intermediates share the arena (space
    -1), every other buffer is memory of its own (space i)."""
    spec = buffers[i]
    if spec.kind == "intermediate":
        return (-1, spec.offset or 0, (spec.offset or 0) + spec.nbytes)
    return (i, 0, spec.nbytes)


def _overlaps(regions: Sequence[tuple[int, int, int]], others: Sequence[tuple[int, int, int]]) -> bool:
    return any(a == b and start < other_end and other_start < end
               for a, start, end in regions for b, other_start, other_end in others)  # fmt: skip


def barriers_before(buffers: Sequence[BufferSpec], launches: Sequence[Launch]) -> list[bool]:
    """For each launch, whether the workers must meet at a barrier before it.

    A barrier is needed only where a launch could touch bytes that another worker touched since
    the last barrier, one of the two writing them: a parallel launch runs on every worker, so it
    conflicts with any earlier launch's accesses; a serial one runs on worker 0, so only with
    the parallel launches' (worker 0's own serial launches ran before it, in order). Bytes, not
    buffer indices, are compared, because the memory plan lets intermediates whose lives do not
    overlap share the arena: the next launch may overwrite what another worker is still reading.
    Inputs and constants are never written; a launch's `writes` (or, when unknown, every output
    and intermediate it takes) are also counted as read. The run's start and end are barriers
    of their own, so nothing crosses runs."""
    needed: list[bool] = []
    # Since the last barrier: (reads, writes) of parallel launches, and of serial ones.
    parallel: tuple[list, list] = ([], [])
    serial: tuple[list, list] = ([], [])
    for launch in launches:
        writes = launch.writes
        if writes is None:
            writes = tuple(i for i in launch.args if buffers[i].kind in ("output", "intermediate"))
        reads = [_region(buffers, i) for i in launch.args if buffers[i].kind in ("output", "intermediate")]
        written = [_region(buffers, i) for i in writes]
        seen = [parallel] + ([serial] if launch.parallel else [])
        conflict = any(_overlaps(written, r + w) or _overlaps(reads, w) for r, w in seen)
        needed.append(conflict)
        if conflict:
            parallel, serial = ([], []), ([], [])
        target = parallel if launch.parallel else serial
        target[0].extend(reads)
        target[1].extend(written)
    return needed


ALIGNMENT = 64
"""Bytes: the arena base and fresh outputs start on a cache line (and an AVX-512 vector)."""


def aligned_empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ALIGNMENT-byte boundary."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)
