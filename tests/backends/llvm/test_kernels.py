"""Whole kernels through the LLVM backend: loops of every CPU kind, accumulators, conditionals,
local buffers, the work split of the runtime's ABI over concurrent workers, the text and the
machine code produced, and the errors for what the CPU cannot run."""

import re

import numpy as np
import pytest

from backends.llvm import STACK_LIMIT, CodegenError, emit_module, host_cpu
from ir.dtype import DType
from ir.loop import (
    Assign,
    Barrier,
    Buffer,
    Cast,
    Const,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Store,
    Var,
)
from tests.backends.llvm.harness import assert_bit_identical, call, compile_kernels, run_both

F32 = DType.f32


def matmul_relu(m: int, k: int, n: int) -> Kernel:
    """y = relu(x @ w), rows spread over workers, the accumulator a local."""
    x, w, y = Buffer("x", F32, (m, k)), Buffer("w", F32, (k, n)), Buffer("y", F32, (m, n))
    i, j, p = Var("i"), Var("j"), Var("p")
    acc = Var("acc", F32)
    product = Load(x, Ref(i) * k + Ref(p)) * Load(w, Ref(p) * n + Ref(j))
    body = (
        Assign(acc, Const(0.0, F32)),
        For(p, k, (Assign(acc, Ref(acc) + product),)),
        Store(y, Ref(i) * n + Ref(j), Ref(acc).max(Const(0.0, F32))),
    )
    return Kernel(
        "matmul_relu",
        (x, w, y),
        (For(i, m, (For(j, n, body),), LoopKind.PARALLEL),),
        source="%0 = matmul(%x, %w) : f32[7,5]  # model.py:12\n%1 = relu(%0) : f32[7,5]",
        outputs=(2,),
    )


@pytest.mark.parametrize("workers", [1, 3])
def test_matmul_relu_matches_the_interpreter_on_one_and_three_workers(workers):
    kernel = matmul_relu(7, 13, 5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 13)).astype(np.float32)
    w = rng.normal(size=(13, 5)).astype(np.float32)
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, [x, w, np.zeros((7, 5), np.float32)], workers)
    assert_bit_identical(compiled[2], interpreted[2], "y")
    np.testing.assert_allclose(compiled[2], np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5)


def row_reductions(rows: int, columns: int, dtype: DType) -> Kernel:
    """Per row: the sum and the max of x (NaN-propagating), with accumulators."""
    x = Buffer("x", dtype, (rows, columns))
    total, largest = Buffer("total", dtype, (rows,)), Buffer("largest", dtype, (rows,))
    r, c = Var("r"), Var("c")
    s, m = Var("s", dtype), Var("m", dtype)
    element = Load(x, Ref(r) * columns + Ref(c))
    body = (
        Assign(s, Const(0, dtype)),
        Assign(m, Load(x, Ref(r) * columns)),
        For(c, columns, (Assign(s, Ref(s) + element), Assign(m, Ref(m).max(element)))),
        Store(total, Ref(r), Ref(s)),
        Store(largest, Ref(r), Ref(m)),
    )
    return Kernel(f"reduce_{dtype}", (x, total, largest), (For(r, rows, body, LoopKind.PARALLEL),))


@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16, DType.f16, DType.i32, DType.u8], ids=str)
def test_reduction_with_accumulators(dtype):
    kernel = row_reductions(6, 33, dtype)
    rng = np.random.default_rng(1)
    values = rng.normal(0, 30, (6, 33)) if dtype.is_float else rng.integers(0, 100, (6, 33))
    x = values.astype(dtype.numpy)
    if dtype.is_float:
        x[2, 5] = np.nan
    arrays = [x, np.zeros(6, dtype.numpy), np.zeros(6, dtype.numpy)]
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, arrays, workers=2)
    assert_bit_identical(compiled[1], interpreted[1], "sum")
    assert_bit_identical(compiled[2], interpreted[2], "max")


def test_if_with_and_without_else():
    n = 10
    x, y, z = Buffer("x", F32, (n,)), Buffer("y", F32, (n,)), Buffer("z", DType.i32, (n,))
    i = Var("i")
    value = Load(x, Ref(i))
    body = (
        If(value.gt(Const(0.0, F32)), (Store(y, Ref(i), value * 2.0),), (Store(y, Ref(i), -value),)),
        If(value.lt(Const(-1.0, F32)), (Store(z, Ref(i), Const(7, DType.i32)),)),
    )
    kernel = Kernel("branches", (x, y, z), (For(i, n, body),))
    data = np.array([1.0, -2.0, 0.0, -0.0, np.nan, 3.5, -0.5, np.inf, -np.inf, -1.0], np.float32)
    arrays = [data, np.zeros(n, np.float32), np.full(n, -1, np.int32)]
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, arrays)
    assert_bit_identical(compiled[1], interpreted[1], "y")
    assert_bit_identical(compiled[2], interpreted[2], "z")


@pytest.mark.parametrize("kind", [LoopKind.SERIAL, LoopKind.VECTORIZED])
def test_select_evaluates_only_the_chosen_load(kind):
    """Padding: x[i - 1] is read only where i >= 1, as in the interpreter, which would reject
    the read at index -1; the load must not be speculated: scalar code puts it behind a branch,
    vector code masks it."""
    n = 8
    x, y = Buffer("x", F32, (n,)), Buffer("y", F32, (n,))
    i = Var("i")
    shifted = Select(Ref(i).ge(1), Load(x, Ref(i) - 1), Const(0.0, F32))
    kernel = Kernel("shift_right", (x, y), (For(i, n, (Store(y, Ref(i), shifted),), kind),))
    text = emit_module([kernel], "pad")
    if kind is LoopKind.SERIAL:
        load_block = re.search(r"\n([\w.\"]+):\n(?:  [^\n]*\n)*?  %[^\n]*= load float", text)
        assert load_block and load_block.group(1).endswith(".if"), text
    else:
        assert re.search(r"call <8 x float> @\"?llvm\.masked\.(load|gather)", text), text
        assert not re.search(r"= load float", text), text
    data = np.arange(1, n + 1, dtype=np.float32)
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, [data, np.zeros(n, np.float32)])
    assert_bit_identical(compiled[1], interpreted[1], "y")
    np.testing.assert_array_equal(compiled[1], [0, 1, 2, 3, 4, 5, 6, 7])


def increment(n: int, parallel: bool) -> Kernel:
    y = Buffer("y", DType.i32, (n,))
    i = Var("i")
    loop = For(i, n, (Store(y, Ref(i), Load(y, Ref(i)) + 1),), LoopKind.PARALLEL if parallel else LoopKind.SERIAL)
    return Kernel(f"increment_{'parallel' if parallel else 'serial'}", (y,), (loop,))


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 20])
def test_every_iteration_runs_exactly_once_whatever_the_number_of_workers(workers):
    kernels = [increment(16, parallel=True), increment(16, parallel=False)]
    module = compile_kernels(kernels)
    for kernel in kernels:
        y = np.zeros(16, np.int32)
        call(module, kernel, [y], workers)
        np.testing.assert_array_equal(y, np.ones(16, np.int32), err_msg=kernel.name)


def test_nested_parallel_loop_runs_serially_on_worker_zero():
    y = Buffer("y", DType.i32, (4, 3))
    i, j = Var("i"), Var("j")
    inner = For(j, 3, (Store(y, Ref(i) * 3 + Ref(j), Load(y, Ref(i) * 3 + Ref(j)) + 1),), LoopKind.PARALLEL)
    kernel = Kernel("nested", (y,), (For(i, 4, (inner,)), Assign(Var("unused", DType.i32), Const(0, DType.i32))))
    out = np.zeros((4, 3), np.int32)
    call(compile_kernels([kernel]), kernel, [out], workers=3)
    np.testing.assert_array_equal(out, 1)


@pytest.mark.parametrize("elements", [16, STACK_LIMIT // 4 + 1], ids=["stack", "heap"])
def test_local_buffers_on_the_stack_and_on_the_heap(elements):
    """A local scratch buffer (reversed copy of x), small (an alloca) and large (malloc/free)."""
    x, y = Buffer("x", F32, (elements,)), Buffer("y", F32, (elements,))
    scratch = Buffer("scratch", F32, (elements,), Scope.LOCAL)
    i = Var("i")
    body = (
        For(i, elements, (Store(scratch, Const(elements - 1, DType.i64) - Ref(i), Load(x, Ref(i)) + 1.0),)),
        For(i, elements, (Store(y, Ref(i), Load(scratch, Ref(i))),)),
    )
    kernel = Kernel("reverse", (x, y), body, locals=(scratch,))
    text = emit_module([kernel], "locals")
    assert ('@"malloc"' in text) == (elements * 4 > STACK_LIMIT)
    data = np.random.default_rng(2).normal(size=elements).astype(np.float32)
    out = np.zeros(elements, np.float32)
    module = compile_kernels([kernel])
    call(module, kernel, [data, out], workers=2)
    np.testing.assert_array_equal(out, data[::-1] + np.float32(1.0))


def test_loop_kinds_become_llvm_loop_metadata():
    n = 64
    x, y = Buffer("x", F32, (n,)), Buffer("y", F32, (n,))
    i, j = Var("i"), Var("j")
    kernel = Kernel(
        "kinds",
        (x, y),
        (
            For(i, n, (Store(y, Ref(i), Load(x, Ref(i)) * 2.0),), LoopKind.VECTORIZED),
            For(j, 4, (Store(y, Ref(j), Load(y, Ref(j)) + 1.0),), LoopKind.UNROLLED),
        ),
    )
    text = emit_module([kernel], "kinds")
    assert re.search(r"!\d+ = distinct !\{ !\d+, !\d+ \}", text)
    # The vectorized loop is vector code already (backends.llvm.vectorize): 64 lanes in one step.
    assert "<64 x float>" in text and "llvm.loop.vectorize.enable" not in text
    assert '!{ !"llvm.loop.unroll.full" }' in text
    data = np.arange(n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    call(compile_kernels([kernel]), kernel, [data, out])
    expected = data * 2
    expected[:4] += 1
    np.testing.assert_array_equal(out, expected)


def test_vectorizable_loop_compiles_to_vector_instructions():
    n = 1024
    a, b, c = (Buffer(name, F32, (n,)) for name in "abc")
    i = Var("i")
    body = (Store(c, Ref(i), Load(a, Ref(i)) + Load(b, Ref(i))),)
    kernel = Kernel("vector_add", (a, b, c), (For(i, n, body, LoopKind.VECTORIZED),))
    module = compile_kernels([kernel])
    print(f"host CPU: {host_cpu().name}")
    assert re.search(r"vaddps\s+[^\n]*%[yz]mm", module.assembly), module.assembly
    assert "<16 x float>" in module.optimized_ir or "<8 x float>" in module.optimized_ir
    x, y = np.arange(n, dtype=np.float32), np.ones(n, np.float32)
    out = np.zeros(n, np.float32)
    call(module, kernel, [x, y, out])
    np.testing.assert_array_equal(out, x + y)


def test_emitted_text_has_one_function_per_kernel_with_its_source_in_a_comment():
    kernels = [matmul_relu(2, 3, 4), increment(5, parallel=True)]
    text = emit_module(kernels, "two")
    assert text.startswith("; Kiln module two: 2 kernel(s)")
    assert len(re.findall(r"^define void @", text, re.MULTILINE)) == 2
    comment = text[: text.index('define void @"matmul_relu"')]
    assert "; from:\n;   %0 = matmul(%x, %w) : f32[7,5]  # model.py:12\n" in comment
    assert ";   kernel matmul_relu(in x: f32[2,3], in w: f32[3,4], out y: f32[2,4]) {" in comment
    assert 'define void @"matmul_relu"(ptr %"args", i64 %"worker", i64 %"workers")' in text
    module = compile_kernels(kernels)
    assert set(module.addresses) == {"matmul_relu", "increment_parallel"}
    with pytest.raises(KeyError, match="no kernel 'missing'"):
        module.address("missing")


def _kernel_with(stmt, locals_=()) -> Kernel:
    return Kernel("bad", (Buffer("y", F32, (4,)),), (stmt,), locals=locals_)


y_buffer = Buffer("y", F32, (4,))


@pytest.mark.parametrize(
    "kernel, message",
    [
        (_kernel_with(For(Var("t"), 4, (), LoopKind.THREAD_X)), "bound to thread.x; GPU schedules need the CUDA"),
        (_kernel_with(Barrier()), "barrier synchronises GPU threads"),
        (_kernel_with(Store(y_buffer, Const(0, DType.i64), Const(1.0, F32))), "y is neither a parameter"),
        (_kernel_with(Assign(Var("v", F32), Ref(Var("w", F32)))), "w is read outside its loop or before"),
        (_kernel_with(For(Var("t", DType.i8), 4, ())), "loop variable t is i8"),
        (_kernel_with(For(Var("t"), 4, ()), (Buffer("tile", F32, (4,), Scope.SHARED),)), "tile is a shared buffer"),
        (
            _kernel_with(Assign(Var("v", DType.i32), Cast(Const(1.0, F32), DType.i32).max(Const(0, DType.i32)))),
            None,
        ),
    ],
    ids=["gpu-loop", "barrier", "unknown-buffer", "unassigned", "i8-loop", "shared", "valid"],
)
def test_what_the_cpu_cannot_run_is_a_codegen_error_naming_the_kernel(kernel, message):
    if message is None:
        emit_module([kernel], "ok")
        return
    with pytest.raises(CodegenError, match=f"kernel bad: .*{re.escape(message)}"):
        emit_module([kernel], "errors")


def test_duplicate_kernel_names_are_an_error():
    with pytest.raises(CodegenError, match="kernel name 'increment_parallel' is taken"):
        emit_module([increment(4, True), increment(8, True)], "twice")


def test_i32_loop_variables_and_indices():
    y = Buffer("y", F32, (6,))
    i = Var("i", DType.i32)
    kernel = Kernel("count32", (y,), (For(i, 6, (Store(y, Ref(i), Cast(Ref(i) * 2, F32)),), LoopKind.PARALLEL),))
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, [np.zeros(6, np.float32)], workers=4)
    assert_bit_identical(compiled[0], interpreted[0], "y")
    np.testing.assert_array_equal(compiled[0], [0, 2, 4, 6, 8, 10])
