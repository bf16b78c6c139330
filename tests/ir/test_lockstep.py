"""The lockstep interpreter runs GPU schedules as a GPU would: a block reduction through shared
memory with barriers sums right; a missing barrier is a race, a barrier or a shuffle under
divergence is reported; warp shuffles exchange lanes; bounds and cross-block races are caught."""

from __future__ import annotations

import numpy as np
import pytest

from ir.dtype import DType
from ir.errors import InterpreterError
from ir.loop import (
    Assign,
    Barrier,
    Buffer,
    Call,
    Const,
    DivergenceError,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    RaceError,
    Ref,
    Scope,
    Store,
    Var,
    launch_dims,
    run_kernel,
    run_lockstep,
)

F32 = DType.f32


def i64(value: int) -> Const:
    return Const(value, DType.i64)


def i32(value: int) -> Const:
    return Const(value, DType.i32)


def _block_sum(blocks: int, threads: int, barriers: bool = True, divergent_barrier: bool = False) -> Kernel:
    """out[b] = sum of x[b*threads : (b+1)*threads], by a tree in shared memory."""
    x, out = Buffer("x", F32, (blocks * threads,)), Buffer("out", F32, (blocks,))
    partial = Buffer("partial", F32, (threads,), Scope.SHARED)
    b, t = Var("b"), Var("t")
    body = [Store(partial, Ref(t), Load(x, Ref(b) * threads + Ref(t))), Barrier()]
    stride = threads // 2
    while stride:
        add = Store(partial, Ref(t), Load(partial, Ref(t)) + Load(partial, Ref(t) + stride))
        if divergent_barrier:  # the barrier inside the branch: only the threads below `stride` arrive
            body += [If(Ref(t).lt(i64(stride)), (add, Barrier()))]
        else:
            body += [If(Ref(t).lt(i64(stride)), (add,)), *([Barrier()] if barriers else [])]
        stride //= 2
    body.append(If(Ref(t).eq(i64(0)), (Store(out, Ref(b), Load(partial, i64(0))),)))
    loop = For(b, blocks, (For(t, threads, tuple(body), LoopKind.THREAD_X),), LoopKind.BLOCK_X)
    return Kernel("block_sum", (x, out), (loop,), (partial,), outputs=(1,))


def test_a_block_reduction_through_shared_memory_sums_each_block():
    kernel = _block_sum(blocks=3, threads=64)
    assert launch_dims(kernel) == ((3, 1, 1), (64, 1, 1))
    x = np.random.default_rng(0).integers(-50, 50, 3 * 64).astype(np.float32)  # integers: every order is exact
    out = np.zeros(3, np.float32)
    run_lockstep(kernel, [x, out])
    np.testing.assert_array_equal(out, x.reshape(3, 64).sum(axis=1))


def test_the_serial_interpreter_cannot_see_what_lockstep_sees():
    """Without barriers, serial threads still sum right (each finishes before the next starts);
    in lockstep the reads and writes of different threads meet between barriers."""
    kernel = _block_sum(blocks=1, threads=32, barriers=False)
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(1, np.float32)
    run_kernel(kernel, [x, out])
    with pytest.raises(RaceError, match=r"data race on partial\[\d+\] \(shared\)"):
        run_lockstep(kernel, [x, out.copy()])


def test_a_barrier_reached_by_some_threads_only_is_reported():
    kernel = _block_sum(blocks=1, threads=64, divergent_barrier=True)
    with pytest.raises(DivergenceError, match="barrier is reached by 32 of the 64 threads"):
        run_lockstep(kernel, [np.ones(64, np.float32), np.zeros(1, np.float32)])


def _warp_kernel(name: str, operand: int, threads: int = 64, guard: int | None = None) -> Kernel:
    """out[t] = shuffle(x[t], operand) over one block of `threads`."""
    x, out = Buffer("x", F32, (threads,)), Buffer("out", F32, (threads,))
    t = Var("t")
    shuffled = Call(name, (Load(x, Ref(t)), i32(operand)), F32)
    statement = Store(out, Ref(t), shuffled)
    if guard is not None:
        statement = If(Ref(t).lt(i64(guard)), (statement,))
    return Kernel(name, (x, out), (For(t, threads, (statement,), LoopKind.THREAD_X),), outputs=(1,))


@pytest.mark.parametrize(
    ("name", "operand", "source"),
    [
        ("shfl_xor", 1, lambda lane: lane ^ 1),
        ("shfl_xor", 16, lambda lane: lane ^ 16),
        ("shfl_down", 3, lambda lane: np.where(lane + 3 < 32, lane + 3, lane)),  # past lane 31: its own
        ("shfl_idx", 5, lambda lane: np.full_like(lane, 5)),
    ],
)
def test_warp_shuffles_exchange_values_within_each_warp(name, operand, source):
    x = np.arange(100, 164, dtype=np.float32)
    out = np.zeros(64, np.float32)
    run_lockstep(_warp_kernel(name, operand), [x, out])
    thread = np.arange(64)
    lane = thread % 32
    np.testing.assert_array_equal(out, x[thread - lane + source(lane)])


def test_a_butterfly_of_xor_shuffles_gives_every_lane_the_warp_sum():
    x, out = Buffer("x", F32, (32,)), Buffer("out", F32, (32,))
    t, acc = Var("t"), Var("acc", F32)
    body = [Assign(acc, Load(x, Ref(t)))]
    body += [Assign(acc, Ref(acc) + Call("shfl_xor", (Ref(acc), i32(m)), F32)) for m in (16, 8, 4, 2, 1)]
    body.append(Store(out, Ref(t), Ref(acc)))
    kernel = Kernel("warp_sum", (x, out), (For(t, 32, tuple(body), LoopKind.THREAD_X),), outputs=(1,))
    values = np.arange(32, dtype=np.float32)
    result = np.zeros(32, np.float32)
    run_lockstep(kernel, [values, result])
    np.testing.assert_array_equal(result, np.full(32, values.sum()))


def test_a_shuffle_under_divergence_is_reported():
    with pytest.raises(DivergenceError, match=r"shfl_xor .* executed by 20 of the 32 lanes of warp 0"):
        run_lockstep(_warp_kernel("shfl_xor", 1, guard=20), [np.ones(64, np.float32), np.zeros(64, np.float32)])


def test_a_shuffle_masked_off_for_whole_warps_is_fine():
    out = np.zeros(64, np.float32)
    run_lockstep(_warp_kernel("shfl_xor", 1, guard=32), [np.arange(64, dtype=np.float32), out])
    np.testing.assert_array_equal(out[:32], np.arange(32) ^ 1)
    np.testing.assert_array_equal(out[32:], 0)


def _store_all(blocks: int, threads: int, index) -> Kernel:
    out = Buffer("out", F32, (4,))
    b, t = Var("b"), Var("t")
    store = Store(out, index(Ref(b), Ref(t)), Const(1.0, F32))
    loop = For(b, blocks, (For(t, threads, (store,), LoopKind.THREAD_X),), LoopKind.BLOCK_X)
    return Kernel("stores", (out,), (loop,), outputs=(0,))


def test_two_blocks_writing_one_global_element_race():
    kernel = _store_all(2, 1, lambda b, t: i64(0))
    with pytest.raises(RaceError, match=r"out\[0\] \(global\).*block \(1, 0, 0\).*blocks never synchronise"):
        run_lockstep(kernel, [np.zeros(4, np.float32)])
    run_lockstep(kernel, [np.zeros(4, np.float32)], check_races=False)  # unchecked, it runs


def test_two_threads_of_one_store_writing_one_element_race():
    with pytest.raises(RaceError, match=r"out\[1\]"):
        run_lockstep(_store_all(1, 2, lambda b, t: i64(1)), [np.zeros(4, np.float32)])


def test_an_out_of_bounds_store_names_the_block_and_thread():
    kernel = _store_all(2, 3, lambda b, t: b * 3 + t)  # block 1 thread 1 writes out[4]
    with pytest.raises(InterpreterError, match=r"index 4 out of bounds of out\[4\] \(block \(1, 0, 0\), thread 1\)"):
        run_lockstep(kernel, [np.zeros(4, np.float32)])


def test_local_buffers_and_variables_are_private_to_each_thread():
    x, out = Buffer("x", F32, (64,)), Buffer("out", F32, (64,))
    scratch = Buffer("scratch", F32, (2,), Scope.LOCAL)
    t = Var("t")
    body = (
        Store(scratch, i64(0), Load(x, Ref(t))),  # every thread writes element 0 of its own copy
        Store(scratch, i64(1), Load(scratch, i64(0)) * Const(2.0, F32)),
        Store(out, Ref(t), Load(scratch, i64(1))),
    )
    kernel = Kernel("private", (x, out), (For(t, 64, body, LoopKind.THREAD_X),), (scratch,), outputs=(1,))
    values, result = np.arange(64, dtype=np.float32), np.zeros(64, np.float32)
    run_lockstep(kernel, [values, result])
    np.testing.assert_array_equal(result, values * 2)


def test_a_select_evaluates_each_side_only_where_it_is_chosen():
    """x[t - 1] is read only where t >= 1: lowering guards padding this way."""
    from ir.loop import Select

    x, out = Buffer("x", F32, (32,)), Buffer("out", F32, (32,))
    t = Var("t")
    shifted = Select(Ref(t).ge(i64(1)), Load(x, Ref(t) - 1), Const(0.0, F32))
    kernel = Kernel("shift", (x, out), (For(t, 32, (Store(out, Ref(t), shifted),), LoopKind.THREAD_X),), outputs=(1,))
    values, result = np.arange(1, 33, dtype=np.float32), np.zeros(32, np.float32)
    run_lockstep(kernel, [values, result])
    np.testing.assert_array_equal(result, np.concatenate([[0], values[:-1]]))


def test_a_loop_shorter_than_the_launch_is_refused():
    x = Buffer("x", F32, (64,))
    t, u = Var("t"), Var("u")
    stores = (
        For(t, 64, (Store(x, Ref(t), Const(1.0, F32)),), LoopKind.THREAD_X),
        For(u, 32, (Store(x, Ref(u), Const(2.0, F32)),), LoopKind.THREAD_X),
    )
    with pytest.raises(InterpreterError, match=r"loop u \(thread.x\) has extent 32, but the launch has 64"):
        run_lockstep(Kernel("short", (x,), stores, outputs=(0,)), [np.zeros(64, np.float32)])


@pytest.mark.parametrize("run", [run_kernel, run_lockstep], ids=["serial", "lockstep"])
def test_fma_rounds_once_in_both_interpreters(run):
    a, b, c, out = (Buffer(name, F32, (3,)) for name in ("a", "b", "c", "out"))
    t = Var("t")
    fused = Call("fma", (Load(a, Ref(t)), Load(b, Ref(t)), Load(c, Ref(t))), F32)
    kernel = Kernel("fma", (a, b, c, out), (For(t, 3, (Store(out, Ref(t), fused),), LoopKind.THREAD_X),))
    near_one = 1 + 2**-12
    x = np.array([near_one, 2.0, 1 + 2**-23], np.float32)
    z = np.array([-(1 + 2**-11), 1.0, -1.0], np.float32)
    result = np.zeros(3, np.float32)
    run(kernel, [x, x, z, result])
    exact = x.astype(np.float64) ** 2 + z  # exact here: no rounding below f32's last place is lost
    np.testing.assert_array_equal(result, exact.astype(np.float32))
    assert result[0] == np.float32(2**-24)  # unfused, x * x + z would give 0
