"""Casts between every pair of dtypes give the interpreter's bits (numpy's and ml_dtypes'
conversions): rounding to nearest even into f16 and bf16 once (from f64 and wide integers too,
where a value just above a tie must not round as the tie), NaN kept, bool as
`!= 0`, float to integer truncating, integers wrapping."""

import ml_dtypes
import numpy as np
import pytest

from ir.dtype import DType
from ir.loop import Buffer, Cast, For, Kernel, Load, LoopKind, Ref, Store, Var
from tests.backends.llvm.harness import assert_bit_identical, call, compile_kernels, run_both

FLOAT_VALUES = [0.0, -0.0, 1.0, -1.5, 2.5, 0.1, 1 / 3, 1e-40, 6e-8, 2.0**-25, 1 + 2.0**-11 + 2.0**-40,
                1 + 2.0**-8 + 2.0**-40, 65519.9, 65520.0, 3e38, 1e300, np.inf, -np.inf, np.nan, -np.nan]  # fmt: skip
TRUNCATED = {  # values whose truncation fits every integer target of that signedness
    True: [0.0, -0.0, 0.7, -0.7, 1.5, -2.5, 99.99, -100.9, 120.9, -128.0, 126.5],
    False: [0.0, -0.0, 0.7, -0.7, 1.5, 99.99, 127.9, 200.5, 255.0, 254.99],
}
INTEGER_VALUES = {
    DType.i64: [
        0,
        1,
        -1,
        127,
        -128,
        255,
        256,
        65504,
        65520,
        2**24 + 1,
        2**25 + 2**17 + 1,
        -(2**63),
        2**63 - 1,
        2**60 + 2**52 + 1,
        -(2**60 + 2**52 + 1),
        2**60 + 2**52,
        2**53 + 2**45 + 1,
        2**62 + 2**54,
    ],
    DType.i32: [0, 1, -1, 127, -128, 255, 256, 65504, 65520, 2**24 + 1, 2**25 + 2**17 + 1, -(2**31), 2**31 - 1],
    DType.i8: [0, 1, -1, 127, -128, 100, -100, 64],
    DType.u8: [0, 1, 127, 128, 200, 255],
    DType.bool: [False, True],
}


def cast_values(source: DType, target: DType) -> np.ndarray:
    if not source.is_float:
        return np.array(INTEGER_VALUES[source], source.numpy)
    values = FLOAT_VALUES if target.is_float or target == DType.bool else TRUNCATED[target.is_signed]
    with np.errstate(over="ignore"):
        return np.array(values, np.float64).astype(source.numpy)


def cast_kernel(source: DType, target: DType, n: int) -> Kernel:
    x, y = Buffer("x", source, (n,)), Buffer("y", target, (n,))
    i = Var("i")
    body = (For(i, n, (Store(y, Ref(i), Cast(Load(x, Ref(i)), target)),), LoopKind.VECTORIZED),)
    return Kernel(f"cast_{source}_to_{target}", (x, y), body)


PAIRS = [(s, t) for s in DType for t in DType if s != t]


@pytest.fixture(scope="module")
def casts():
    kernels = {(s, t): cast_kernel(s, t, cast_values(s, t).size) for s, t in PAIRS}
    return kernels, compile_kernels(list(kernels.values()), "casts")


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_cast_matches_the_interpreter_bit_for_bit(casts, source, target):
    kernels, module = casts
    x = cast_values(source, target)
    interpreted, compiled = run_both(module, kernels[source, target], [x, np.zeros(x.size, target.numpy)])
    assert_bit_identical(compiled[1], interpreted[1], f"{source} -> {target} of {x}")


def random_floats(dtype: np.dtype, n: int, seed: int) -> np.ndarray:
    """Random bit patterns (every exponent, subnormals, infinities, quiet NaNs with payloads);
    signalling NaNs are left out: x86 quiets them in f16 conversions, numpy keeps them."""
    unsigned = np.dtype(f"u{dtype.itemsize}")
    raw = np.random.default_rng(seed).integers(0, np.iinfo(unsigned).max, n, dtype=unsigned, endpoint=True)
    quiet_bit = unsigned.type(1) << unsigned.type(ml_dtypes.finfo(dtype).nmant - 1)
    values = raw.view(dtype)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(values), (raw | quiet_bit).view(dtype), values)


@pytest.mark.parametrize(
    "source, target",
    [
        (DType.f32, DType.bf16),
        (DType.f32, DType.f16),
        (DType.f64, DType.f16),
        (DType.f64, DType.bf16),
        (DType.f64, DType.f32),
        (DType.bf16, DType.f16),
        (DType.f16, DType.bf16),
    ],
    ids=str,
)
def test_float_narrowing_rounds_like_numpy_on_random_bit_patterns(source, target):
    n = 1 << 14
    x = random_floats(source.numpy, n, seed=7)
    if source == DType.f64:  # also values near the ties of the narrow format, where rounding twice would show
        rng = np.random.default_rng(8)
        low, high = (-30, 15) if target == DType.f16 else (-140, 120)  # subnormals to the largest finite
        near = (rng.choice([-1.0, 1.0], n // 2) * 2.0 ** rng.uniform(low, high, n // 2)).astype(target.numpy)
        ulp = np.spacing(near).astype(np.float64)
        x[: n // 2] = near.astype(np.float64) + ulp / 2 * rng.choice([1, -1, 1 + 2**-30, 1 - 2**-30], n // 2)
    kernel = cast_kernel(source, target, n)
    y = np.zeros(n, target.numpy)
    call(compile_kernels([kernel]), kernel, [x, y])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(target.numpy)
    assert_bit_identical(y, expected, f"{source} -> {target}")


def test_bf16_nan_becomes_the_quiet_nan_of_its_sign():
    x = np.array([0x7F800001, 0xFFC00001, 0x7FC12345, 0x7F80FFFF, 0x7F7FFFFF, 0x00008000], np.uint32).view(np.float32)
    kernel = cast_kernel(DType.f32, DType.bf16, x.size)
    y = np.zeros(x.size, ml_dtypes.bfloat16)
    call(compile_kernels([kernel]), kernel, [x, y])
    assert [hex(v) for v in y.view(np.uint16)] == ["0x7fc0", "0xffc0", "0x7fc0", "0x7fc0", "0x7f80", "0x0"]


@pytest.mark.parametrize("source", [DType.f32, DType.f64, DType.f16, DType.bf16])
@pytest.mark.parametrize("target", [DType.i8, DType.u8, DType.i32, DType.i64])
def test_float_to_int_saturates_like_the_interpreter(source, target):
    # C leaves nan and out-of-range conversions undefined; the kernel IR saturates (LLVM's fptosi.sat)
    values = np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, 300.5, -300.5, 2.9, -2.9], np.float64)
    with np.errstate(over="ignore"):
        values = values.astype(source.numpy)
    kernel = cast_kernel(source, target, values.size)
    module = compile_kernels([kernel], f"saturate_{source}_{target}")
    interpreted, compiled = run_both(module, kernel, [values, np.zeros(values.size, target.numpy)])
    assert_bit_identical(compiled[1], interpreted[1], f"{source} -> {target} of {values}")
    info = np.iinfo(target.numpy)
    assert compiled[1][0] == 0 and compiled[1][1] == info.max and compiled[1][2] == info.min
