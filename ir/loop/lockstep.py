"""The lockstep kernel-IR interpreter: runs a GPU-scheduled kernel the way a GPU does, block by
block, with all the threads of a block executing each statement together.

`ir.loop.interpreter` runs GPU loops as plain loops, one iteration after another, which is right
only for kernels whose threads never talk to each other. Here a block's threads are the lanes of
numpy vectors: a `THREAD_*` loop binds its variable to the vector of thread indices, every
expression is evaluated for all threads at once (`interpreter.Evaluator` walks it; the semantics
are the serial interpreter's, on arrays), and an `If` whose condition differs between threads
runs each branch with the other threads masked off, as a warp does under divergence. This gives
the constructs that need threads together their meaning:

- `Barrier` (`__syncthreads`) must be reached by all threads of the block or by none; otherwise
  it is reported (`DivergenceError`), since on a GPU that hangs or is undefined.
- SHARED buffers are one array per block (fresh, zeroed, for each block); LOCAL buffers and
  variables are per thread; GLOBAL buffers are the caller's arrays.
- Warp shuffles (`Call`s named in `ir.loop.nodes.WARP_SHUFFLES`) exchange values among the 32
  lanes of each warp; every lane of a warp must take part. So must the tensor-core MMA
  (`mma_m16n8k16_f16`/`_bf16`), which assembles each warp's A, B and C from its lanes' fragments
  by the PTX ISA layouts (`A_FRAGMENT`, `B_FRAGMENT`, `C_FRAGMENT`): a schedule that holds a
  fragment element at the wrong place computes a wrong product here, as it would on the device.
  The int8 MMA (`mma_m16n8k32_s8s8`/`_u8s8`) does the same in `ir.loop.lockstep_int8`.
- Asynchronous copies into shared memory (`cp_async`) land only at the `cp_async_wait` that covers
  them, and `ldmatrix_x4(_trans)` gathers each lane's registers by the PTX ISA layout
  (`ir.loop.lockstep_tiles`): a missing wait reads stale data, a missing barrier after it is a race.
- Vector accesses (`vector_load`, `vector_store`) must be aligned to their size and inside their
  buffer, as the device requires (`ir.loop.lockstep_vector`).
- Loads and stores are bounds-checked (the failing block and thread are named), and with
  `check_races` a data race is reported (`RaceError`, naming the buffer and the element): two
  threads of a block touching one element between two barriers where at least one writes, or two
  blocks touching one global element where at least one writes (blocks never synchronise).

Blocks run one after another, so a kernel whose blocks wait for each other cannot be run; grid
and block sizes come from the kernel's GPU loops (`launch_dims`), whose extents must equal them
(the printed CUDA has no guard for a shorter loop). Speed: one numpy operation per expression
node per statement executed, for the whole block: tests use small shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ir.dtype import DType
from ir.errors import InterpreterError
from ir.loop.interpreter import Evaluator, bind_params
from ir.loop.lockstep_int8 import MMA_INT8, mma_int8
from ir.loop.lockstep_tiles import TILE_CALLS, async_copy, run_tile_call
from ir.loop.lockstep_tiles import AsyncCopy as _AsyncCopy
from ir.loop.lockstep_vector import VECTOR_CALLS, vector_load, vector_store
from ir.loop.nodes import (
    WARP_SHUFFLES,
    WARP_SIZE,
    Assign,
    Barrier,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    If,
    Kernel,
    LoopKind,
    Scope,
    Stmt,
    Store,
    Var,
)

Dim3 = tuple[int, int, int]

BLOCK_KINDS = (LoopKind.BLOCK_X, LoopKind.BLOCK_Y, LoopKind.BLOCK_Z)
THREAD_KINDS = (LoopKind.THREAD_X, LoopKind.THREAD_Y, LoopKind.THREAD_Z)


class DivergenceError(InterpreterError):
    """A barrier or a warp shuffle reached by only some of the threads that must reach it together."""


class RaceError(InterpreterError):
    """Two threads access one element without a barrier between them, and at least one writes."""


def launch_dims(kernel: Kernel) -> tuple[Dim3, Dim3]:
    """`(grid, block)` of a scheduled kernel: per axis, the largest extent of a loop bound to it
    (1 where none is); a kernel without GPU loops is one thread of one block."""
    grid, block = [1, 1, 1], [1, 1, 1]
    for loop in _loops(kernel.body):
        if loop.kind in BLOCK_KINDS:
            axis = BLOCK_KINDS.index(loop.kind)
            grid[axis] = max(grid[axis], loop.extent)
        elif loop.kind in THREAD_KINDS:
            axis = THREAD_KINDS.index(loop.kind)
            block[axis] = max(block[axis], loop.extent)
    return (grid[0], grid[1], grid[2]), (block[0], block[1], block[2])


def run_lockstep(kernel: Kernel, arrays: Sequence[np.ndarray], check_races: bool = True) -> None:
    """Run the scheduled `kernel` on `arrays` (its parameters, in order), block after block with
    each block's threads in lockstep; outputs are written in place."""
    memory = bind_params(kernel, arrays)
    grid, block = launch_dims(kernel)
    trackers = {buffer: _Tracker(buffer.size) for buffer in kernel.params} if check_races else None
    for z in range(grid[2]):
        for y in range(grid[1]):
            for x in range(grid[0]):
                _Block(kernel, memory, trackers, grid, block, (x, y, z)).run(kernel.body)


class _Tracker:
    """Who last wrote and read each element of a buffer, for race detection: a thread is
    (block, thread) and an epoch counts the barriers its block has passed. Accesses by threads
    of one block are ordered when a barrier lies between them; accesses by two blocks never are."""

    NONE, MANY = -1, -2

    def __init__(self, size: int) -> None:
        self.writer = np.full(size, self.NONE, np.int64)
        self.writer_block = np.full(size, self.NONE, np.int64)
        self.writer_epoch = np.zeros(size, np.int64)
        self.reader = np.full(size, self.NONE, np.int64)  # a thread, or MANY threads in one epoch
        self.reader_block = np.full(size, self.NONE, np.int64)
        self.reader_epoch = np.zeros(size, np.int64)
        self.read_by_blocks = np.zeros(size, bool)  # read by more than one block

    def unordered_write(self, at: np.ndarray, thread: np.ndarray, block: int, epoch: int) -> np.ndarray:
        """Per access: whether another thread wrote the element, not ordered before it."""
        writer = self.writer[at]
        ordered = (self.writer_block[at] == block) & (self.writer_epoch[at] < epoch)
        return (writer != self.NONE) & (writer != thread) & ~ordered

    def unordered_read(self, at: np.ndarray, thread: np.ndarray, block: int, epoch: int) -> np.ndarray:
        """Per access: whether another thread read the element, not ordered before it."""
        reader, reader_block = self.reader[at], self.reader_block[at]
        other_block = self.read_by_blocks[at] | ((reader_block != self.NONE) & (reader_block != block))
        this_epoch = (reader_block == block) & (self.reader_epoch[at] == epoch)
        return other_block | (this_epoch & (reader != self.NONE) & (reader != thread))

    def wrote(self, at: np.ndarray, thread: np.ndarray, block: int, epoch: int) -> None:
        self.writer[at], self.writer_block[at], self.writer_epoch[at] = thread, block, epoch

    def read(self, at: np.ndarray, thread: np.ndarray, block: int, epoch: int) -> None:
        previous, previous_block = self.reader[at], self.reader_block[at]
        self.read_by_blocks[at] |= (previous_block != self.NONE) & (previous_block != block)
        this_epoch = (previous_block == block) & (self.reader_epoch[at] == epoch)
        shared = this_epoch & (previous != self.NONE) & (previous != thread)
        shared |= _repeated(at)  # several threads of this one load
        self.reader[at] = np.where(shared, self.MANY, thread)
        self.reader_block[at], self.reader_epoch[at] = block, epoch


def _repeated(at: np.ndarray) -> np.ndarray:
    """Per element of `at`: whether its value occurs more than once in `at`."""
    _, inverse, counts = np.unique(at, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


class _Block(Evaluator):
    """One block's threads; values are arrays over the threads (index = linear thread index)."""

    def __init__(self, kernel: Kernel, memory: dict[Buffer, np.ndarray], trackers: dict[Buffer, _Tracker] | None,
                 grid: Dim3, block: Dim3, index: Dim3) -> None:  # fmt: skip
        self.kernel, self.grid, self.block, self.index = kernel, grid, block, index
        self.threads = math.prod(block)
        self.id = index[0] + grid[0] * (index[1] + grid[1] * index[2])
        linear = np.arange(self.threads, dtype=np.int64)
        self.thread_index = (linear % block[0], linear // block[0] % block[1], linear // (block[0] * block[1]))
        self.memory = dict(memory)
        self.trackers = dict(trackers or {})  # None: races are not checked
        for buffer in kernel.locals:
            match buffer.scope:
                case Scope.SHARED:
                    self.memory[buffer] = np.zeros(buffer.size, buffer.dtype.numpy)
                    if trackers is not None:
                        self.trackers[buffer] = _Tracker(buffer.size)
                case _:  # one array per thread
                    self.memory[buffer] = np.zeros((self.threads, buffer.size), buffer.dtype.numpy)
        self.env: dict[Var, tuple[np.ndarray, np.ndarray]] = {}  # values and where they are assigned
        self.active = np.ones(self.threads, bool)
        self.epoch = 0
        self.copies: list[_AsyncCopy] = []  # cp_async copies issued and not landed yet
        self.commits = np.zeros(self.threads, np.int64)  # cp_async groups each thread committed

    def where(self, lane: int) -> str:
        return f"block {self.index}, thread {int(lane)}"

    # -- statements -----------------------------------------------------------------------------

    def run(self, body: Sequence[Stmt]) -> None:
        for stmt in body:
            match stmt:
                case Store(buffer, index, Call(name="cp_async") as copy):
                    self.async_copy(buffer, index, copy)
                case Store(buffer, index, Call(name="vector_store") as vector):
                    vector_store(self, buffer, index, vector)
                case Store(buffer, index, value):
                    self.store(buffer, index, value)
                case Assign(var, value):
                    values = self.full(self.eval(value))
                    old, assigned = self.env.get(var, (values, np.zeros(self.threads, bool)))
                    self.env[var] = (np.where(self.active, values, old), assigned | self.active)
                case For(var, extent, loop_body, kind):
                    self.loop(var, extent, loop_body, kind)
                case If(condition, then, otherwise):
                    taken = self.full(self.eval(condition)).astype(bool)
                    outer = self.active
                    for mask, branch in ((outer & taken, then), (outer & ~taken, otherwise)):
                        if branch and mask.any():
                            self.active = mask
                            self.run(branch)
                    self.active = outer
                case Barrier():
                    if not self.active.all():
                        waiting, absent = np.flatnonzero(self.active), np.flatnonzero(~self.active)
                        raise DivergenceError(
                            f"kernel {self.kernel.name}: a barrier is reached by {waiting.size} of the "
                            f"{self.threads} threads of block {self.index} (thread {waiting[0]} waits, thread "
                            f"{absent[0]} never arrives); every thread of a block must reach it, or none"
                        )
                    self.epoch += 1
                case _:
                    raise self.fail(f"unknown statement {stmt!r}")

    def loop(self, var: Var, extent: int, body: Sequence[Stmt], kind: LoopKind) -> None:
        everywhere = np.ones(self.threads, bool)
        if kind in BLOCK_KINDS or kind in THREAD_KINDS:
            gpu_block = kind in BLOCK_KINDS
            axis = (BLOCK_KINDS if gpu_block else THREAD_KINDS).index(kind)
            size = (self.grid if gpu_block else self.block)[axis]
            if extent != size:  # the printed kernel binds the index with no guard
                raise self.fail(f"loop {var.name} ({kind.value}) has extent {extent}, but the launch has {size}")
            position = np.full(self.threads, self.index[axis]) if gpu_block else self.thread_index[axis]
            self.env[var] = (position.astype(np.int64), everywhere)
            self.run(body)
            return
        if kind is LoopKind.PARALLEL:
            raise self.fail(f"loop {var.name} is parallel (a CPU work split); schedule the kernel for the GPU first")
        for i in range(extent):  # extents are constants: every thread runs the same iterations
            self.env[var] = (np.full(self.threads, i, np.int64), everywhere)
            self.run(body)

    def store(self, buffer: Buffer, index: Expr, value: Expr) -> None:
        lanes = np.flatnonzero(self.active)
        at = self.addresses(buffer, index, lanes)
        values = self.full(self.eval(value))[lanes]
        if buffer.scope is Scope.LOCAL:
            self.memory[buffer][lanes, at] = values
            return
        tracker = self.trackers.get(buffer)
        if tracker is not None:
            thread = self.id * self.threads + lanes
            clash = tracker.unordered_write(at, thread, self.id, self.epoch)
            clash |= tracker.unordered_read(at, thread, self.id, self.epoch) | _repeated(at)
            if clash.any():
                self.race(buffer, at, lanes, clash, "writes")
            tracker.wrote(at, thread, self.id, self.epoch)
        self.memory[buffer][at] = values

    def async_copy(self, buffer: Buffer, index: Expr, copy: Call) -> None:
        async_copy(self, buffer, index, copy)

    def race(self, buffer: Buffer, at: np.ndarray, lanes: np.ndarray, clash: np.ndarray, access: str) -> None:
        first = int(np.flatnonzero(clash)[0])
        raise RaceError(
            f"kernel {self.kernel.name}: data race on {buffer.name}[{int(at[first])}] ({buffer.scope.value}): "
            f"{self.where(lanes[first])} {access} an element that another thread wrote or read with no barrier "
            f"between them" + ("; blocks never synchronise" if buffer.scope is Scope.GLOBAL else "")
        )

    def addresses(self, buffer: Buffer, index: Expr, lanes: np.ndarray) -> np.ndarray:
        at = self.full(self.eval(index))[lanes].astype(np.int64)
        outside = (at < 0) | (at >= buffer.size)
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise self.fail(f"index {int(at[first])} out of bounds of {buffer.name}[{buffer.size}] "
                            f"({self.where(lanes[first])})")  # fmt: skip
        return at

    # -- expressions ----------------------------------------------------------------------------

    def full(self, value) -> np.ndarray:
        """`value` (a numpy scalar or an array over the threads) as an array over the threads."""
        return np.broadcast_to(value, (self.threads,))

    def ref(self, var: Var) -> np.ndarray:
        if var not in self.env or (self.active & ~self.env[var][1]).any():
            raise self.fail(f"{var.name} is read before it is assigned")
        return self.env[var][0]

    def load(self, buffer: Buffer, index: Expr) -> np.ndarray:
        lanes = np.flatnonzero(self.active)
        result = np.zeros(self.threads, buffer.dtype.numpy)  # masked-off threads read nothing
        at = self.addresses(buffer, index, lanes)
        if buffer.scope is Scope.LOCAL:
            result[lanes] = self.memory[buffer][lanes, at]
            return result
        result[lanes] = self.read_at(buffer, lanes, at)
        return result

    def read_at(self, buffer: Buffer, lanes: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Elements `at` of a shared or global buffer, read by threads `lanes` (race-tracked)."""
        tracker = self.trackers.get(buffer)
        if tracker is not None:
            thread = self.id * self.threads + lanes
            clash = tracker.unordered_write(at, thread, self.id, self.epoch)
            if clash.any():
                self.race(buffer, at, lanes, clash, "reads")
            tracker.read(at, thread, self.id, self.epoch)
        return self.memory[buffer][at]

    def select(self, condition: Expr, a: Expr, b: Expr) -> np.ndarray:
        # Each side only where it is chosen: lowering guards out-of-bounds loads this way.
        chosen = self.full(self.eval(condition)).astype(bool)
        outer = self.active
        sides = []
        for mask, side in ((outer & chosen, a), (outer & ~chosen, b)):
            self.active = mask
            sides.append(self.full(self.eval(side)) if mask.any() else np.zeros(self.threads, side.dtype.numpy))
        self.active = outer
        return np.where(chosen, *sides)

    def call(self, expr: Call) -> np.ndarray:
        if expr.name in MMA_OPERANDS:
            return self.mma(expr)
        if expr.name in TILE_CALLS:
            return run_tile_call(self, expr)
        if expr.name in VECTOR_CALLS:
            return vector_load(self, expr)
        if expr.name in MMA_INT8:  # ir.loop.lockstep_int8 assembles the warps' int8 fragments
            self.whole_warps(expr.name)
            return mma_int8(expr, lambda operand: self.full(self.eval(operand)), self.fail)
        if expr.name not in WARP_SHUFFLES:
            return super().call(expr)
        value, operand = (self.full(self.eval(argument)) for argument in expr.args)
        self.whole_warps(expr.name)
        thread = np.arange(self.threads, dtype=np.int64)
        lane, operand = thread % WARP_SIZE, operand.astype(np.int64)
        match expr.name:
            case "shfl_xor":
                target = lane ^ operand
            case "shfl_down":
                target = lane + operand
            case _:  # shfl_idx
                target = operand % WARP_SIZE
        source = np.where((target >= 0) & (target < WARP_SIZE), thread - lane + target, thread)
        return value[source]

    def whole_warps(self, name: str) -> None:
        """Check that every lane of each warp with an active lane executes the collective `name`."""
        if self.threads % WARP_SIZE:
            raise self.fail(f"{name} in a block of {self.threads} threads, not whole warps of {WARP_SIZE}")
        warps = self.active.reshape(-1, WARP_SIZE)
        partial = warps.any(axis=1) & ~warps.all(axis=1)
        if partial.any():
            warp = int(np.flatnonzero(partial)[0])
            raise DivergenceError(
                f"kernel {self.kernel.name}: {name} in block {self.index} is executed by "
                f"{int(warps[warp].sum())} of the {WARP_SIZE} lanes of warp {warp}; every lane must take part"
            )

    def mma(self, expr: Call) -> np.ndarray:
        """`mma_m16n8k16_*`: each warp multiplies the 16 x 16 A and 16 x 8 B its lanes hold and adds
        the 16 x 8 C; each lane receives element `index` of its D fragment (see `MMA_OPERANDS`)."""
        operand = MMA_OPERANDS[expr.name]
        *fragments, index = expr.args
        count = len(A_FRAGMENT) + len(B_FRAGMENT) + len(C_FRAGMENT)
        wrong = [a.dtype for a in fragments[:12] if a.dtype != operand] + [
            a.dtype for a in fragments[12:] if a.dtype != DType.f32
        ]
        if len(fragments) != count or wrong or not isinstance(index, Const) or not 0 <= int(index.value) < 4:
            raise self.fail(f"{expr.name} takes 8 A and 4 B elements ({operand}), 4 C elements (f32) and a "
                            f"constant index 0..3 of D; got {len(expr.args)} operands")  # fmt: skip
        self.whole_warps(expr.name)
        values = [self.full(self.eval(a)).astype(np.float32).reshape(-1, WARP_SIZE) for a in fragments]
        warps = values[0].shape[0]
        a, b, c = (
            np.zeros((warps, 16, 16), np.float32),
            np.zeros((warps, 16, 8), np.float32),
            np.zeros((warps, 16, 8), np.float32),
        )
        lanes = np.arange(WARP_SIZE)
        held = iter(values)
        for matrix, layout in ((a, A_FRAGMENT), (b, B_FRAGMENT), (c, C_FRAGMENT)):
            for place in layout:
                rows, columns = place(lanes)
                matrix[:, rows, columns] = next(held)
        d = c.copy()
        with np.errstate(all="ignore"):
            for k in range(16):  # products of f16/bf16 are exact in f32; one rounding per step, in k order
                d = d + a[:, :, k, None] * b[:, None, k, :]
        rows, columns = C_FRAGMENT[int(index.value)](lanes)
        return d[:, rows, columns].reshape(-1)


# The m16n8k16 fragments of the PTX ISA ("Matrix Fragments for mma.m16n8k16", f16/bf16 with f32
# accumulators): per element of a lane's fragment, (row, column) of the warp's matrix as a
# function of the lane; group = lane >> 2, quad = lane % 4.
def _at(row_offset: int, column_offset: int, by_group_row: bool) -> Callable[[np.ndarray], tuple]:
    def place(lane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        group, quad = lane >> 2, lane % 4
        if by_group_row:  # A and C: rows by group, columns by quad
            return group + row_offset, quad * 2 + column_offset
        return quad * 2 + row_offset, group + column_offset  # B: rows (K) by quad, columns by group

    return place


A_FRAGMENT = tuple(_at(8 * (i // 2 % 2), i % 2 + 8 * (i // 4), True) for i in range(8))
"""a0..a7: rows group (+8 for a2, a3, a6, a7), columns 2 quad + (i & 1) (+8 for a4..a7)."""
B_FRAGMENT = tuple(_at(i % 2 + 8 * (i // 2), 0, False) for i in range(4))
"""b0..b3: rows 2 quad + (i & 1) (+8 for b2, b3), column group."""
C_FRAGMENT = tuple(_at(8 * (i // 2), i % 2, True) for i in range(4))
"""c0..c3 (and d): rows group (+8 for c2, c3), columns 2 quad + (i & 1)."""
MMA_OPERANDS = {"mma_m16n8k16_f16": DType.f16, "mma_m16n8k16_bf16": DType.bf16}
"""The warp-collective tensor-core `Call`s and the dtype of their A and B elements."""


def _loops(body: Sequence[Stmt]) -> Iterator[For]:
    for stmt in body:
        match stmt:
            case For(_, _, loop_body, _):
                yield stmt
                yield from _loops(loop_body)
            case If(_, then, otherwise):
                yield from _loops(then)
                yield from _loops(otherwise)
