"""The f32 math of `backends.llvm.math_f32`: erf against float64 math.erf over about a million points
(random bit patterns, and dense near the two pieces' boundary and where erf saturates) and the
special values; f16 and bf16 erf go through it and round once; erf is vector code, not a libm call
per lane; exp's two ways of scaling by 2**n (vscalefps on AVX-512, integer-built powers of two
elsewhere) give the same bits. (exp and tanh accuracy: test_vectorize.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends.llvm import emit_module
from ir.dtype import DType
from ir.loop import Buffer, For, Kernel, Load, LoopKind, Ref, Store, Unary, Var
from runtime.cpu import host_target, limit_isa
from tests.backends.llvm.harness import assert_bit_identical, call, compile_kernels, ulp_distance

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _kernel(op: str, dtype: DType, n: int, kind: LoopKind = LoopKind.VECTORIZED) -> Kernel:
    x, y = Buffer("x", dtype, (n,)), Buffer("y", dtype, (n,))
    i = Var("i")
    body = (Store(y, Ref(i), Unary(op, Load(x, Ref(i)))),)
    return Kernel(f"{op}_{dtype}_{kind.value}", (x, y), (For(i, n, body, kind),))


def _run(dtype: DType, x: np.ndarray, op: str = "erf", kind: LoopKind = LoopKind.VECTORIZED) -> np.ndarray:
    kernel = _kernel(op, dtype, x.size, kind)
    y = np.zeros_like(x)
    call(compile_kernels([kernel]), kernel, [x, y])
    return y


def test_f32_erf_is_within_2_ulps_of_float64_over_a_million_points():
    rng = np.random.default_rng(17)
    bit_patterns = rng.integers(0, 1 << 32, 1 << 19, dtype=np.uint64).astype(np.uint32).view(np.float32)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, np.nextafter(1.0, 0.0), 4.0, 3.9, 3.92, 1e-40,
                -1e-40, 1e-30, 5e-8, 0.5, 2.0, 10.0, -10.0, 3.4e38, -3.4e38]  # fmt: skip
    dense = [rng.uniform(-5, 5, 1 << 18), rng.uniform(0.9, 1.1, 1 << 16), rng.uniform(-1e-3, 1e-3, 1 << 14), specials]
    x = np.concatenate([bit_patterns, *(np.asarray(part, np.float32) for part in dense)])
    y = _run(DType.f32, x)
    with np.errstate(invalid="ignore"):  # signalling NaNs among the bit patterns
        exact = _erf(x.astype(np.float64))
    # within 1.5 ulps of the correctly rounded f32: at most 2 ulps of the exact value
    distance = ulp_distance(y, exact.astype(np.float32))
    worst = int(np.argmax(distance))
    assert distance.max() <= 1, f"erf({x[worst]!r}) = {y[worst]!r}, exact {exact[worst]!r}"
    assert np.isnan(y[np.isnan(x)]).all()
    assert (y[x == np.inf] == 1).all() and (y[x == -np.inf] == -1).all()
    assert np.signbit(y[(x == 0) & np.signbit(x)]).all()  # erf(-0) = -0
    assert (np.abs(y[np.isfinite(x)]) <= 1).all()


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16], ids=str)
def test_low_precision_erf_rounds_the_f32_one(dtype):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-4.5, 4.5, 4000), [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype.numpy)
    y = _run(dtype, x)
    exact = _erf(x.astype(np.float64)).astype(dtype.numpy)
    distance = ulp_distance(y, exact)
    assert distance.max() <= 1, x[int(np.argmax(distance))]


def test_vectorized_erf_calls_no_library_function():
    text = emit_module([_kernel("erf", DType.f32, 64)], "erf")
    assert "<64 x float>" in text and not [
        line for line in text.splitlines() if line.startswith("declare") and "erf" in line
    ]


def _exp_inputs() -> np.ndarray:
    rng = np.random.default_rng(23)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72283, 88.72284, 89.0, -87.33655, -103.27893, -103.97208,
                -104.0, -150.0, 1e-40, 3.4e38, -3.4e38]  # fmt: skip
    parts = [rng.uniform(-105, 90, 1 << 15), rng.uniform(-1, 1, 1 << 12), specials]
    return np.concatenate([np.asarray(part, np.float32) for part in parts])


@pytest.mark.skipif("+avx512f" not in host_target()["features"].split(","), reason="the host has no AVX-512")
@pytest.mark.parametrize("kind", [LoopKind.VECTORIZED, LoopKind.SERIAL], ids=lambda k: k.value)
def test_exp_scales_by_vscalefps_on_avx512_with_the_bits_of_the_avx2_code(kind):
    x = _exp_inputs()
    native = _run(DType.f32, x, "exp", kind)
    with limit_isa("avx2"):
        portable = _run(DType.f32, x, "exp", kind)
    assert_bit_identical(native, portable, "exp")
    assert "llvm.x86.avx512.mask.scalef.ps.512" in emit_module([_kernel("exp", DType.f32, 64, kind)], "exp")
