"""Math functions (LLVM intrinsics and libm calls) against the interpreter (numpy's own
implementations and Python's math.erf). libm and numpy may round differently in the last
place, so these compare in ulps: at most `TOLERANCE_ULPS` for f32 and f64 (both are within ~2
ulps of the exact value), one ulp for f16 and bf16 (a correctly rounded f32 value rounds to the
same narrow value except next to a tie); f64 erf is libm's and exact, the others are Kiln's own
f32 erf (its accuracy is tests/backends/llvm/test_math_f32.py's).
NaNs must appear in the same places."""

import numpy as np
import pytest

from ir.dtype import DType
from ir.loop import Binary, Buffer, For, Kernel, Load, LoopKind, Ref, Store, Unary, Var
from tests.backends.llvm.harness import compile_kernels, run_both, ulp_distance

UNARY = ["exp", "log", "sin", "cos", "tanh", "erf", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh",
         "acosh", "atanh"]  # fmt: skip
FLOATS = [DType.f64, DType.f32, DType.f16, DType.bf16]
TOLERANCE_ULPS = {DType.f64: 2, DType.f32: 2, DType.f16: 1, DType.bf16: 1}
SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 10.0, -10.0, 100.0, 1e-30, np.inf, -np.inf, np.nan, 0.999, 1.001]


def inputs(dtype: DType, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = np.concatenate([SPECIALS, rng.normal(0, 2, n - len(SPECIALS) - 40), rng.uniform(-1, 1, 40)])
    y = np.concatenate([SPECIALS[::-1], rng.uniform(-4, 4, n - len(SPECIALS))])
    return x.astype(dtype.numpy), y.astype(dtype.numpy)


def math_kernel(dtype: DType, n: int) -> Kernel:
    a, b = Buffer("a", dtype, (n,)), Buffer("b", dtype, (n,))
    i = Var("i")
    x, y = Load(a, Ref(i)), Load(b, Ref(i))
    exprs = {op: Unary(op, x) for op in UNARY} | {"pow": Binary("pow", x, y)}
    outputs = [Buffer(f"out_{op}", dtype, (n,)) for op in exprs]
    body = tuple(Store(out, Ref(i), e) for out, e in zip(outputs, exprs.values()))
    return Kernel(f"math_{dtype}", (a, b, *outputs), (For(i, n, body, LoopKind.VECTORIZED),))


@pytest.fixture(scope="module")
def math_module():
    kernels = {dtype: math_kernel(dtype, inputs(dtype)[0].size) for dtype in FLOATS}
    return kernels, compile_kernels(list(kernels.values()), "math")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_math_functions_match_the_interpreter_within_ulps(math_module, dtype):
    kernels, module = math_module
    kernel = kernels[dtype]
    x, y = inputs(dtype)
    outputs = [np.zeros(x.size, dtype.numpy) for _ in kernel.params[2:]]
    interpreted, compiled = run_both(module, kernel, [x, y, *outputs])
    for buffer, expected, actual in zip(kernel.params[2:], interpreted[2:], compiled[2:]):
        distance = ulp_distance(actual, expected)
        limit = 0 if buffer.name == "out_erf" and dtype == DType.f64 else TOLERANCE_ULPS[dtype]
        worst = int(np.argmax(distance))
        assert distance.max() <= limit, (
            f"{dtype} {buffer.name}: {distance.max()} ulps at x={x[worst]}, y={y[worst]}: "
            f"got {actual[worst]}, expected {expected[worst]}"
        )
