"""The CPU executor on hand-written kernels: results against numpy for 1-3 threads, the ABI's
work split and calls, barriers between launches, outputs that alias inputs or constants,
bf16 buffers, and the errors for bad inputs, bad programs and bad code."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import threading

import ml_dtypes
import numpy as np
import pytest

import runtime.cpu
from runtime import (
    BufferSpec,
    CodeCompilationError,
    CpuExecutor,
    InputMismatchError,
    Launch,
    Program,
    ProgramError,
    plan_arena,
)
from runtime.arguments import ALIGNED_OUTPUT_BYTES, data_address


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_chain_matches_numpy(chain_program, chain_inputs, chain_expected, threads):
    executor = CpuExecutor(chain_program, threads=threads)
    x, y = chain_inputs
    for _ in range(2):  # a second run reuses the arena and the launch table
        (out,) = executor.run([x, y])
        np.testing.assert_allclose(out, chain_expected(x, y, chain_program.constants[2]), rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == x.shape


def test_chain_arena_reuses_bytes(chain_program):
    intermediates = [b for b in chain_program.buffers if b.kind == "intermediate"]
    assert chain_program.arena_bytes < sum(b.nbytes for b in intermediates)
    t1, _, t3 = intermediates
    assert t1.offset == t3.offset  # t1 dies at launch 1, t3 is born at launch 2


def test_strided_inputs_are_made_contiguous(chain_program, chain_inputs, chain_expected):
    x, y = chain_inputs
    wide = np.stack([x, y], axis=1)  # columns are strided views
    (out,) = CpuExecutor(chain_program, threads=2).run([wide[:, 0], wide[:, 1]])
    np.testing.assert_allclose(out, chain_expected(x, y, chain_program.constants[2]), rtol=1e-6)


def _program(name, buffers, inputs, outputs, launches, code, constants=None):
    buffers, arena = plan_arena(buffers, launches, outputs)
    return Program(name, buffers, inputs, outputs, constants or {}, launches, arena, code)


@pytest.mark.parametrize("threads", [1, 2])
def test_barrier_orders_launches(kernels, threads):
    """Forty launches ping-pong between two intermediates, each reading what other workers
    wrote in the launch before: out[i] = x[(i + 40) % n] + 40."""
    n, steps = 257, 40
    f32 = "float32"
    buffers = (
        BufferSpec("x", f32, (n,), "input"),
        BufferSpec("a", f32, (n,), "intermediate"),
        BufferSpec("b", f32, (n,), "intermediate"),
        BufferSpec("out", f32, (n,), "output"),
    )
    chain = [0] + [1 + k % 2 for k in range(steps - 1)] + [3]
    launches = tuple(Launch("rotate", (src, dst)) for src, dst in itertools.pairwise(chain))
    code = kernels.cpu_code(kernels.rotate_add_one("rotate", n))
    executor = CpuExecutor(_program("ping_pong", buffers, (0,), (3,), launches, code), threads=threads)
    x = np.arange(n, dtype=np.float32)
    for _ in range(3):
        (out,) = executor.run([x])
        np.testing.assert_array_equal(out, np.roll(x, -steps) + steps)


@pytest.mark.parametrize("parallel", [True, False])
def test_each_worker_is_called_once_per_launch(kernels, parallel):
    """With 3 threads, a parallel launch calls workers 0, 1, 2 with workers=3; a serial one
    calls worker 0 alone with workers=1."""
    buffers = (BufferSpec("calls", "int64", (3,), "output"), BufferSpec("seen", "int64", (3,), "output"))
    launches = (Launch("zero", (0, 1), parallel=False),) + (Launch("record", (0, 1), parallel=parallel),) * 5
    code = kernels.cpu_code(kernels.zero_pair("zero", 3), kernels.record_workers("record"))
    executor = CpuExecutor(_program("record", buffers, (), (0, 1), launches, code), threads=3)
    for _ in range(2):
        calls, seen = executor.run([])
        assert list(calls) == ([5, 5, 5] if parallel else [5, 0, 0])
        assert list(seen) == ([3, 3, 3] if parallel else [1, 0, 0])


def test_serial_kernel_runs_on_worker_zero(kernels):
    n = 1000
    buffers = (BufferSpec("a", "float32", (n,), "input"), BufferSpec("s", "float32", (1,), "output"))
    code = kernels.cpu_code(kernels.serial_sum("total", n))
    a = np.ones(n, dtype=np.float32)
    for parallel in (True, False):  # either way the ABI gives the whole sum to worker 0
        program = _program("total", buffers, (0,), (1,), (Launch("total", (0, 1), parallel=parallel),), code)
        (s,) = CpuExecutor(program, threads=2).run([a])
        assert s[0] == n


def test_bfloat16_buffers_move_as_bits(kernels):
    n = 33
    buffers = (BufferSpec("a", "bfloat16", (3, 11), "input"), BufferSpec("out", "bfloat16", (3, 11), "output"))
    code = kernels.cpu_code(kernels.copy_bits16("copy", n))
    program = _program("copy", buffers, (0,), (1,), (Launch("copy", (0, 1)),), code)
    a = np.linspace(-3, 3, n).astype(ml_dtypes.bfloat16).reshape(3, 11)
    (out,) = CpuExecutor(program, threads=2).run([a])
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(out.view(np.uint16), a.view(np.uint16))


def test_outputs_alias_inputs_constants_and_intermediates(kernels):
    """Outputs (sum, x, c, t, sum): the repeated output, the input, the constant and the
    intermediate each come back as arrays of their own."""
    n, f32 = 16, "float32"
    buffers = (
        BufferSpec("x", f32, (n,), "input"),
        BufferSpec("c", f32, (n,), "constant"),
        BufferSpec("t", f32, (n,), "intermediate"),
        BufferSpec("sum", f32, (n,), "output"),
    )
    launches = (Launch("add", (0, 1, 2)), Launch("add", (2, 0, 3)))
    code = kernels.cpu_code(kernels.binary("add", "fadd", n))
    c = np.full(n, 0.5, dtype=np.float32)
    program = _program("alias", buffers, (0,), (3, 0, 1, 2, 3), launches, code, {1: c})
    x = np.arange(n, dtype=np.float32)
    total, x_out, c_out, t_out, total_again = CpuExecutor(program, threads=2).run([x])
    np.testing.assert_array_equal(total, 2 * x + c)
    np.testing.assert_array_equal(total_again, total)
    np.testing.assert_array_equal(x_out, x)
    np.testing.assert_array_equal(c_out, c)
    np.testing.assert_array_equal(t_out, x + c)
    arrays = [total, x_out, c_out, t_out, total_again]
    assert len({a.ctypes.data for a in arrays} | {x.ctypes.data, c.ctypes.data}) == 7  # nothing shared
    c_out[:] = 7  # the program's constant is not the caller's to change
    np.testing.assert_array_equal(program.constants[1], c)


def test_a_program_without_launches_returns_its_inputs(kernels):
    buffers = (BufferSpec("x", "int32", (2, 2), "input"),)
    program = Program("identity", buffers, (0,), (0,), {}, (), 0, kernels.cpu_code())
    x = np.arange(4, dtype=np.int32).reshape(2, 2)
    (out,) = CpuExecutor(program, threads=2).run([x])
    np.testing.assert_array_equal(out, x)


def test_code_for_another_cpu_is_recompiled_for_this_host(kernels, chain_inputs):
    """Function attributes that pin a kernel to the CPU it was generated on are dropped when the
    host differs, so the IR compiles for the host's CPU instead."""
    n, f32 = 8, "float32"
    kernel = kernels.binary("add", "fadd", n, attributes=" #0")
    pinned = kernel + '\nattributes #0 = { "target-cpu"="a-cpu-from-elsewhere" "target-features"="+made-up" }\n'
    code = kernels.cpu_code(pinned, cpu="a-cpu-from-elsewhere", features="+made-up")
    buffers = (BufferSpec("a", f32, (n,), "input"), BufferSpec("b", f32, (n,), "input"))
    buffers += (BufferSpec("out", f32, (n,), "output"),)
    program = _program("elsewhere", buffers, (0, 1), (2,), (Launch("add", (0, 1, 2)),), code)
    a, b = np.arange(n, dtype=np.float32), np.ones(n, dtype=np.float32)
    (out,) = CpuExecutor(program, threads=1).run([a, b])
    np.testing.assert_array_equal(out, a + b)


INPUT_ERRORS = [
    (lambda x, y: [x], "takes 2 input(s) (x, y), got 1"),
    (lambda x, y: [x, y, y], "takes 2 input(s) (x, y), got 3"),
    (lambda x, y: [x.astype(np.float64), y], "input 'x' of program 'chain': expected float32[1001], got float64[1001]"),
    (lambda x, y: [x, y[:-1]], "input 'y' of program 'chain': expected float32[1001], got float32[1000]"),
    (lambda x, y: [x, y.reshape(7, 143)], "expected float32[1001], got float32[7,143]"),
    (lambda x, y: [x, [1.0, 2.0]], "input 'y' of program 'chain': expected float32[1001], got float64[2]"),
]


@pytest.mark.parametrize(("make_inputs", "message"), INPUT_ERRORS)
def test_bad_inputs_get_a_clear_error(chain_program, chain_inputs, make_inputs, message):
    executor = CpuExecutor(chain_program, threads=1)
    with pytest.raises(InputMismatchError) as error:
        executor.run(make_inputs(*chain_inputs))
    assert message in str(error.value)
    assert isinstance(error.value, TypeError)


def test_code_errors(kernels, chain_program):
    missing = dataclasses.replace(chain_program, code=kernels.cpu_code(kernels.binary("add", "fadd", 4)))
    with pytest.raises(CodeCompilationError, match="launches 'mul', which its code lacks"):
        CpuExecutor(missing)
    broken = dataclasses.replace(chain_program, code=kernels.cpu_code("define void @add( {"))
    with pytest.raises(CodeCompilationError, match="LLVM IR does not compile"):
        CpuExecutor(broken)
    with pytest.raises(ProgramError, match="not the CPU"):
        CpuExecutor(dataclasses.replace(chain_program, code={}))  # no LLVM IR


def test_dropping_an_executor_stops_its_threads(chain_program):
    def workers():
        return [t for t in threading.enumerate() if t.name.startswith("kiln-cpu-worker")]

    before = len(workers())
    executor = CpuExecutor(chain_program, threads=3)
    assert len(workers()) == before + 2
    del executor
    gc.collect()
    for thread in workers()[before:]:
        thread.join(timeout=5)
    assert len(workers()) == before


def _kiln_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kiln-cpu-worker")]


def test_without_a_thread_count_a_small_program_stays_on_the_calling_thread(
    chain_program, chain_inputs, chain_expected, monkeypatch
):
    """threads=None: the first runs are timed on the calling thread; a program this small never
    starts the pool, and its results are the same before and after the choice."""
    monkeypatch.setattr(runtime.cpu, "default_threads", lambda: 3)
    before = len(_kiln_workers())
    executor = CpuExecutor(chain_program)
    assert executor.workers == 3  # at most: nothing is chosen before the first runs
    x, y = chain_inputs
    for _ in range(runtime.cpu.PROBE_RUNS + 2):
        (out,) = executor.run([x, y])
        np.testing.assert_allclose(out, chain_expected(x, y, chain_program.constants[2]), rtol=1e-6)
    assert executor.workers == 1 and len(_kiln_workers()) == before


def test_without_a_thread_count_a_big_program_starts_the_pool_after_its_first_runs(
    chain_program, chain_inputs, chain_expected, monkeypatch
):
    monkeypatch.setattr(runtime.cpu, "default_threads", lambda: 3)
    monkeypatch.setattr(runtime.cpu, "POOL_MIN_PHASE_NS", 0)  # any program counts as big
    before = len(_kiln_workers())
    executor = CpuExecutor(chain_program)
    x, y = chain_inputs
    expected = chain_expected(x, y, chain_program.constants[2])
    for run in range(runtime.cpu.PROBE_RUNS + 3):
        assert len(_kiln_workers()) == before + (2 if run >= runtime.cpu.PROBE_RUNS else 0)
        (out,) = executor.run([x, y])
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert executor.workers == 3
    del executor
    gc.collect()
    for thread in _kiln_workers()[before:]:
        thread.join(timeout=5)


def test_outputs_are_fresh_and_big_ones_start_on_a_cache_line(kernels):
    n, f32 = 4096, "float32"
    buffers = (BufferSpec("a", f32, (n,), "input"), BufferSpec("b", f32, (n,), "input"))
    buffers += (BufferSpec("out", f32, (n,), "output"),)
    program = _program(
        "big_add",
        buffers,
        (0, 1),
        (2,),
        (Launch("add", (0, 1, 2)),),
        kernels.cpu_code(kernels.binary("add", "fadd", n)),
    )
    executor = CpuExecutor(program, threads=1)
    a, b = np.arange(n, dtype=np.float32), np.ones(n, dtype=np.float32)
    (first,) = executor.run([a, b])
    (second,) = executor.run([a, a])
    assert first.ctypes.data % 64 == 0 and first.nbytes >= ALIGNED_OUTPUT_BYTES
    np.testing.assert_array_equal(first, a + b)  # the second run wrote an array of its own
    np.testing.assert_array_equal(second, a + a)


def test_run_at_reads_and_writes_the_callers_memory(chain_program, chain_inputs, chain_expected):
    executor = CpuExecutor(chain_program, threads=2)
    x, y = chain_inputs
    x = x.copy()
    x.flags.writeable = False  # read-only inputs are read through ndarray.ctypes
    ((shape, dtype, _),) = executor.arguments.output_types
    out = np.full(shape, np.nan, dtype)
    executor.run_at([data_address(x), data_address(y), data_address(out)])
    np.testing.assert_allclose(out, chain_expected(x, y, chain_program.constants[2]), rtol=1e-6)
    assert data_address(x) == x.ctypes.data and data_address(out) == out.ctypes.data
