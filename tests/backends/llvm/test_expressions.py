"""Every arithmetic, comparison and logical operation of the kernel IR, on every dtype and on the
awkward values (NaN, infinities, -0.0, subnormals, ties, integer extremes, division by zero and
by negative numbers): compiled code gives the interpreter's bits."""

import itertools

import ml_dtypes
import numpy as np
import pytest

from ir.dtype import DType
from ir.loop import Binary, Buffer, Call, Const, For, Kernel, Load, LoopKind, Ref, Select, Store, Unary, Var, run_kernel
from tests.backends.llvm.harness import assert_bit_identical, call, compile_kernels, run_both

FLOAT_SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 3.0, -7.25, 1e-40, -1e-30, 65504.0, 1e30,
                  np.inf, -np.inf, np.nan, 1 / 3, 100.75]  # fmt: skip
INTEGER_SPECIALS = {
    DType.i64: [0, 1, -1, 2, -2, 7, -7, 3, 100, -(2**63), 2**63 - 1, 2**40 + 3],
    DType.i32: [0, 1, -1, 2, -2, 7, -7, 3, 100, -(2**31), 2**31 - 1, 65537],
    DType.i8: [0, 1, -1, 2, -2, 7, -7, 3, 100, -128, 127, 64],
    DType.u8: [0, 1, 2, 3, 7, 100, 127, 128, 200, 255],
}
FLOAT_OPS = ["add", "sub", "mul", "div", "mod", "max", "min", "lt", "le", "gt", "ge", "eq", "ne"]
INTEGER_OPS = ["add", "sub", "mul", "div", "mod", "max", "min", "lt", "le", "gt", "ge", "eq", "ne"]
BOOL_OPS = ["and", "or", "xor", "eq", "ne", "lt", "ge", "max", "min"]
FLOAT_UNARY = ["neg", "abs", "floor", "ceil", "round", "sqrt"]
INTEGER_UNARY = ["neg", "abs", "floor", "ceil", "round"]


def operand_pairs(dtype: DType) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of the dtype's special values, as two arrays."""
    if dtype == DType.bool:
        values = [False, True]
    elif dtype.is_float:
        values = FLOAT_SPECIALS
    else:
        values = INTEGER_SPECIALS[dtype]
    pairs = list(itertools.product(values, repeat=2))
    if dtype == DType.i64:  # MIN / -1 overflows the interpreter's Python int -> int64; tested below
        pairs.remove((-(2**63), -1))
    a, b = zip(*pairs)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(a, dtype=np.float64 if dtype.is_float else None).astype(dtype.numpy), np.array(
            b, dtype=np.float64 if dtype.is_float else None
        ).astype(dtype.numpy)


def elementwise_kernel(dtype: DType, n: int) -> Kernel:
    """One output per operation, over a vectorized loop (so the vector forms are checked too)."""
    a, b = Buffer("a", dtype, (n,)), Buffer("b", dtype, (n,))
    i = Var("i")
    x, y = Load(a, Ref(i)), Load(b, Ref(i))
    if dtype == DType.bool:
        exprs = {op: Binary(op, x, y) for op in BOOL_OPS} | {"not": Unary("not", x), "select": Select(x, y, x)}
    elif dtype.is_float:
        exprs = {op: Binary(op, x, y) for op in FLOAT_OPS} | {op: Unary(op, x) for op in FLOAT_UNARY}
        exprs["select"] = Select(x.lt(y), x, y * Const(2.0, dtype))
        exprs["const"] = x + Const(0.1, dtype)  # the constant rounds to the dtype first
    else:
        exprs = {op: Binary(op, x, y) for op in INTEGER_OPS} | {op: Unary(op, x) for op in INTEGER_UNARY}
        exprs["select"] = Select(x.ge(y), x - y, y)
        exprs["const"] = x * Const(3, dtype) + Const(-1 if dtype.is_signed else 255, dtype)
    outputs = [Buffer(f"out_{name}", expr.dtype, (n,)) for name, expr in exprs.items()]
    body = tuple(Store(out, Ref(i), expr) for out, expr in zip(outputs, exprs.values()))
    return Kernel(f"elementwise_{dtype}", (a, b, *outputs), (For(i, n, body, LoopKind.VECTORIZED),))


@pytest.fixture(scope="module")
def elementwise():
    kernels = {dtype: elementwise_kernel(dtype, operand_pairs(dtype)[0].size) for dtype in DType}
    return kernels, compile_kernels(list(kernels.values()), "elementwise")


@pytest.mark.parametrize("dtype", list(DType), ids=str)
def test_every_operation_matches_the_interpreter_bit_for_bit(elementwise, dtype):
    kernels, module = elementwise
    kernel = kernels[dtype]
    a, b = operand_pairs(dtype)
    outputs = [np.zeros(buffer.size, buffer.dtype.numpy) for buffer in kernel.params[2:]]
    interpreted, compiled = run_both(module, kernel, [a, b, *outputs])
    for buffer, expected, actual in zip(kernel.params[2:], interpreted[2:], compiled[2:]):
        assert_bit_identical(actual, expected, f"{dtype} {buffer.name}")


def division_kernel(dtype: DType, n: int) -> Kernel:
    a, b, q, r = (Buffer(name, dtype, (n,)) for name in ("a", "b", "q", "r"))
    i = Var("i")
    x, y = Load(a, Ref(i)), Load(b, Ref(i))
    return Kernel(f"divide_{dtype}", (a, b, q, r), (For(i, n, (Store(q, Ref(i), x / y), Store(r, Ref(i), x % y))),))


@pytest.mark.parametrize("dtype", [DType.i64, DType.i32, DType.i8], ids=str)
def test_integer_division_truncates_and_division_by_zero_gives_zero(dtype):
    low = int(np.iinfo(dtype.numpy).min)
    cases = [(7, 2, 3, 1), (7, -2, -3, 1), (-7, 2, -3, -1), (-7, -2, 3, -1), (6, -3, -2, 0), (-1, 5, 0, -1),
             (7, 0, 0, 0), (-7, 0, 0, 0), (0, 0, 0, 0), (low, -1, low, 0), (low, 1, low, 0)]  # fmt: skip
    a, b, quotient, remainder = (np.array(column, dtype.numpy) for column in zip(*cases))
    kernel = division_kernel(dtype, len(cases))
    compiled = [a, b, np.zeros_like(a), np.zeros_like(a)]
    call(compile_kernels([kernel]), kernel, compiled)
    np.testing.assert_array_equal(compiled[2], quotient)
    np.testing.assert_array_equal(compiled[3], remainder)
    if dtype != DType.i64:  # the interpreter's MIN / -1 goes through a Python int, which int64 cannot hold
        interpreted = [a, b, np.zeros_like(a), np.zeros_like(a)]
        run_kernel(kernel, interpreted)
        assert_bit_identical(compiled[2], interpreted[2], "quotient")
        assert_bit_identical(compiled[3], interpreted[3], "remainder")


@pytest.mark.parametrize("dtype", [DType.i64, DType.i32, DType.i8, DType.u8], ids=str)
def test_integer_power_wraps_like_numpy(dtype):
    n = 12
    base, exponent, out = (Buffer(name, dtype, (n,)) for name in ("base", "exponent", "out"))
    i = Var("i")
    power = Binary("pow", Load(base, Ref(i)), Load(exponent, Ref(i)))
    kernel = Kernel(f"power_{dtype}", (base, exponent, out), (For(i, n, (Store(out, Ref(i), power),)),))
    x = np.array([0, 1, 2, 3, 5, 7, 2, 3, 10, 2, 0, 1], dtype.numpy)
    y = np.array([0, 0, 1, 2, 3, 4, 62, 40, 9, 7, 3, 100], dtype.numpy)
    if dtype.is_signed:
        x[[5, 8]] *= -1
    module = compile_kernels([kernel])
    interpreted, compiled = run_both(module, kernel, [x, y, np.zeros_like(x)])
    assert_bit_identical(compiled[2], interpreted[2], "pow")


def test_fma_call_rounds_once():
    a, b, c, out = (Buffer(name, DType.f32, (2,)) for name in ("a", "b", "c", "out"))
    i = Var("i")
    fused = Call("fma", (Load(a, Ref(i)), Load(b, Ref(i)), Load(c, Ref(i))), DType.f32)
    kernel = Kernel("fma", (a, b, c, out), (For(i, 2, (Store(out, Ref(i), fused),)),))
    near_one = np.float32(1 + 2**-12)
    x = np.array([near_one, 2.0], np.float32)
    z = np.array([-(1 + 2**-11), 1.0], np.float32)
    result = np.zeros(2, np.float32)
    call(compile_kernels([kernel]), kernel, [x, x, z, result])
    np.testing.assert_array_equal(result, np.array([2**-24, 5.0], np.float32))  # x*x+z unfused would give 0


def test_bf16_arithmetic_rounds_after_each_operation_like_ml_dtypes():
    rng = np.random.default_rng(1)
    n = 512
    x = rng.normal(size=n).astype(ml_dtypes.bfloat16)
    y = rng.normal(size=n).astype(ml_dtypes.bfloat16)
    a, b, out = (Buffer(name, DType.bf16, (n,)) for name in ("a", "b", "out"))
    i = Var("i")
    expr = (Load(a, Ref(i)) * Load(b, Ref(i)) + Load(a, Ref(i))) / Load(b, Ref(i))
    kernel = Kernel("bf16_chain", (a, b, out), (For(i, n, (Store(out, Ref(i), expr),), LoopKind.VECTORIZED),))
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, [x, y, np.zeros_like(x)])
    assert_bit_identical(compiled[2], interpreted[2], "bf16 chain")
    expected = ((x.astype(np.float32) * y).astype(ml_dtypes.bfloat16).astype(np.float32) + x).astype(
        ml_dtypes.bfloat16
    ).astype(np.float32) / y  # fmt: skip
    assert_bit_identical(compiled[2], expected.astype(ml_dtypes.bfloat16), "bf16 vs ml_dtypes")
