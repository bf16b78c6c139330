"""Barriers between launches: only where a launch touches bytes another worker touched since
the last one (`runtime.memory.barriers_before`), and a program whose kernels would race
without them gives exact results run after run on 2 threads."""

from __future__ import annotations

import time

import numpy as np

from runtime import BufferSpec, CpuExecutor, Launch, Program, plan_arena
from runtime.memory import barriers_before

F32 = "float32"


def _spec(name, kind, n=8, offset=None):
    return BufferSpec(name, F32, (n,), kind, offset)


def test_serial_chains_need_no_barriers():
    buffers = (_spec("x", "input"), _spec("a", "intermediate", offset=0), _spec("y", "output"))
    launches = (Launch("f", (0, 1), parallel=False, writes=(1,)), Launch("g", (1, 2), parallel=False, writes=(2,)))
    assert barriers_before(buffers, launches) == [False, False]


def test_a_serial_reader_of_a_parallel_writer_waits():
    buffers = (_spec("x", "input"), _spec("a", "intermediate", offset=0), _spec("y", "output"))
    launches = (Launch("f", (0, 1), parallel=True, writes=(1,)), Launch("g", (1, 2), parallel=False, writes=(2,)))
    assert barriers_before(buffers, launches) == [False, True]


def test_readers_of_inputs_alone_never_wait():
    buffers = (_spec("x", "input"), _spec("y", "output"), _spec("z", "output"))
    launches = (Launch("f", (0, 1), writes=(1,)), Launch("g", (0, 2), writes=(2,)))
    assert barriers_before(buffers, launches) == [False, False]


def test_arena_bytes_shared_by_dead_and_new_intermediates_count_as_one():
    """b takes a's bytes once a is dead: overwriting them must wait for the parallel reader of a."""
    buffers = (
        _spec("x", "input"),
        _spec("a", "intermediate", offset=0),
        _spec("y", "output"),
        _spec("b", "intermediate", offset=0),
        _spec("z", "output"),
    )
    launches = (
        Launch("w", (0, 1), parallel=False, writes=(1,)),
        Launch("r", (1, 2), parallel=True, writes=(2,)),
        Launch("o", (0, 3), parallel=False, writes=(3,)),
        Launch("s", (3, 4), parallel=False, writes=(4,)),
    )
    assert barriers_before(buffers, launches) == [False, True, True, False]
    moved = (*buffers[:3], _spec("b", "intermediate", offset=64), *buffers[4:])
    assert barriers_before(moved, launches) == [False, True, False, False]


def test_a_serial_sum_of_a_parallel_result_is_exact_every_run(kernels):
    """x + c on both workers into a, then a serial sum of a on worker 0: without the barrier the
    sum would read rows the other worker has not written yet."""
    n = kernels.N * 64
    buffers = (
        _spec("x", "input", n),
        _spec("c", "constant", n),
        _spec("a", "intermediate", n),
        _spec("s", "output", 1),
    )
    launches = (Launch("add", (0, 1, 2), writes=(2,)), Launch("total", (2, 3), parallel=False, writes=(3,)))
    planned, arena = plan_arena(buffers, launches, (3,))
    c = np.ones(n, dtype=np.float32)
    code = kernels.cpu_code(kernels.binary("add", "fadd", n), kernels.serial_sum("total", n))
    program = Program("race", planned, (0,), (3,), {1: c}, launches, arena, code)
    executor = CpuExecutor(program, threads=2)
    assert executor.workers == 2 and executor.barriers == 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.integers(-50, 50, n).astype(np.float32)  # integers: the sum is exact in f32
        (s,) = executor.run([x])
        assert s[0] == np.sum(x.astype(np.float64) + 1)


def test_a_program_without_parallel_launches_starts_no_threads(kernels):
    n = 16
    buffers = (_spec("x", "input", n), _spec("c", "constant", n), _spec("y", "output", n))
    launches = (Launch("add", (0, 1, 2), parallel=False, writes=(2,)),)
    code = kernels.cpu_code(kernels.binary("add", "fadd", n))
    program = Program("serial", buffers, (0,), (2,), {1: np.ones(n, np.float32)}, launches, 0, code)
    executor = CpuExecutor(program, threads=2)
    assert executor.workers == 1
    (y,) = executor.run([np.arange(n, dtype=np.float32)])
    np.testing.assert_array_equal(y, np.arange(n) + 1)


def _race_program(kernels):
    n = kernels.N * 64
    buffers = (
        _spec("x", "input", n),
        _spec("c", "constant", n),
        _spec("a", "intermediate", n),
        _spec("s", "output", 1),
    )
    launches = (Launch("add", (0, 1, 2), writes=(2,)), Launch("total", (2, 3), parallel=False, writes=(3,)))
    planned, arena = plan_arena(buffers, launches, (3,))
    code = kernels.cpu_code(kernels.binary("add", "fadd", n), kernels.serial_sum("total", n))
    return Program("race", planned, (0,), (3,), {1: np.ones(n, dtype=np.float32)}, launches, arena, code), n


def test_a_profile_times_every_launch_and_leaves_runs_as_they_were(kernels):
    """`CpuExecutor.profile`: one reading per run and launch, each a plausible time, on one worker,
    on two (where it puts a barrier before every launch, and takes it away again) and while the
    executor chooses between them."""
    from runtime.driver import PROFILE_SLOT

    program, n = _race_program(kernels)
    x = (np.arange(n) % 7 - 3).astype(np.float32)  # small integers: the sum is exact in f32
    for threads in (1, 2, None):  # None: the first runs decide between the pool and one thread
        executor = CpuExecutor(program, threads=threads)
        flags = executor._flags.copy()
        start = time.perf_counter()
        readings = executor.profile([x], runs=8)
        elapsed = time.perf_counter() - start
        assert readings.shape == (8, 2)
        assert (readings > 0).all() and readings.sum() < elapsed  # times inside the runs, none empty
        assert executor._state[PROFILE_SLOT] == 0 and (executor._flags == flags).all()
        (s,) = executor.run([x])
        assert s[0] == np.sum(x.astype(np.float64) + 1)  # still right after profiling
