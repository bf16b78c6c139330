"""The shared memory of a block: where each shared buffer of a kernel lies, and whether the printer
declares them `__shared__` (static) or takes them from the launch's dynamic shared memory.

The printer (`backends.cuda.codegen`) and the program's launches (`backends.cuda.program`) both follow
`dynamic_shared_bytes`, so the printed code and the launch size cannot disagree.
"""

from __future__ import annotations

from ir.loop import Buffer, Kernel, Scope

STATIC_SHARED_LIMIT = 48 * 1024
"""Bytes of `__shared__` arrays a block may declare statically (sm_80, sm_90); a kernel that needs
more takes all its shared buffers from the launch's dynamic shared memory (`KILN_DYNAMIC_SHARED`),
whose size its launch carries (`Launch.shared_bytes`; the driver makes the >48 KiB opt-in)."""
SHARED_ALIGNMENT = 16
"""Each buffer's offset in dynamic shared memory: 16 bytes, the widest vector access."""


def shared_offsets(kernel: Kernel) -> tuple[dict[Buffer, int], int]:
    """Each shared buffer's byte offset in dynamic shared memory, and the bytes they take."""
    offsets, end = {}, 0
    for buffer in kernel.locals:
        if buffer.scope is Scope.SHARED:
            offsets[buffer] = -(-end // SHARED_ALIGNMENT) * SHARED_ALIGNMENT
            end = offsets[buffer] + max(buffer.size, 1) * buffer.dtype.itemsize
    return offsets, end


def dynamic_shared_bytes(kernel: Kernel) -> int:
    """The dynamic shared memory a launch of `kernel` asks for: 0 when its shared buffers fit
    `STATIC_SHARED_LIMIT` (the printer declares them `__shared__`), else all of them."""
    _, total = shared_offsets(kernel)
    return total if total > STATIC_SHARED_LIMIT else 0
