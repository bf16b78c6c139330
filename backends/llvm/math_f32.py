"""f32 exp, tanh and erf written in LLVM IR, for scalars and vectors alike.

libm's expf is a call per element, which stops a vectorized loop cold; these are straight-line
code, so the lanes of a vectorized loop and its scalar remainder compute the same bits. exp and
tanh stay within 1 ulp of the correctly rounded result over the whole f32 range, erf within 1.5
(tests/backends/llvm/test_vectorize.py and test_math_f32.py measure it). `intrinsics.math_function`
calls them for f32, and for f16 and bf16, which compute in f32 and round.

exp's last step, times 2**n, is one `vscalefps` on AVX-512 hosts (exact, NaN-propagating, so
NaN needs no handling of its own) and two multiplications by integer-built powers of two
elsewhere: the same correctly rounded product, so the two paths give the same bits. Measured on
one AVX-512 core, 64K exps: 0.34 -> 0.24 ns per element.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from llvmlite import ir

from backends.llvm.intrinsics import F32, I32, call_intrinsic, const_like, declare, like
from runtime.cpu import host_target

_LOG2E = float(np.float32(1.4426950408889634))
_LN2_HI = float(np.float32(0.6931471805599453))
_LN2_LO = float(np.float32(0.6931471805599453 - _LN2_HI))
_EXP_POLY = (0.49999985098838806, 0.1666650027036667, 0.04166988283395767, 0.00837108213454485,
             0.0013743576128035784)  # fmt: skip
"""(exp(r) - 1 - r) / r**2 for |r| <= ln2/2, least-squares fitted in f64 and rounded to f32
(relative error of 1 + r + r**2 * p(r) below 0.05 ulp)."""
_EXP_RANGE = (-104.0, 89.0)
"""exp is 0 below and inf above (in f32); clamping there keeps 2**n finite in the scaling."""
_TANH_POLY = (-0.3333333134651184, 0.13333286345005035, -0.05396066978573799, 0.021810639649629593,
              -0.008614767342805862, 0.0029951983597129583, -0.0006467471248470247)  # fmt: skip
"""(tanh(x) - x) / x**3 as a polynomial in x**2 for |x| <= 0.75, fitted like `_EXP_POLY`."""
_TANH_SMALL = 0.75


def _fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    return call_intrinsic(builder, "fma", a, b, c)


def _horner(builder: ir.IRBuilder, x: ir.Value, coefficients: Sequence[float]) -> ir.Value:
    """c0 + x * (c1 + x * (...)), one fma per coefficient."""
    result = const_like(x, F32, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        result = _fma(builder, result, x, const_like(x, F32, c))
    return result


def exp_f32(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x for f32 (or a vector of f32): x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite: the first
    fma is exact), exp(r) by a polynomial, then times 2**n (`_times_power_of_two`), rounded once
    also where the result is subnormal. NaN in, NaN out."""

    def f(value: float) -> ir.Constant:
        return const_like(x, F32, value)

    low, high = _EXP_RANGE
    clamped = builder.select(builder.fcmp_ordered(">", x, f(high)), f(high), x)  # a NaN stays (false)
    clamped = builder.select(builder.fcmp_ordered("<", clamped, f(low)), f(low), clamped)
    n = call_intrinsic(builder, "roundeven", builder.fmul(clamped, f(_LOG2E)))
    r = _fma(builder, n, f(-_LN2_HI), clamped)
    r = _fma(builder, n, f(-_LN2_LO), r)
    r_squared_p = builder.fmul(builder.fmul(r, r), _horner(builder, r, _EXP_POLY))
    poly = builder.fadd(f(1.0), builder.fadd(r, r_squared_p))
    return _times_power_of_two(builder, poly, n)


def _times_power_of_two(builder: ir.IRBuilder, x: ir.Value, n: ir.Value) -> ir.Value:
    """x * 2**n for an integral f32 n in -150..128 (or NaN), rounded once."""
    if "+avx512f" in host_target()["features"].split(","):
        return _scalef(builder, x, n)

    def i(value: int) -> ir.Constant:
        return const_like(x, I32, value)

    # NaN converts to no integer (poison): computed as 0, replaced at the end
    ordered = builder.fcmp_ordered("ord", n, n)
    k = builder.fptosi(builder.select(ordered, n, const_like(x, F32, 0.0)), like(x, I32))
    # two steps, so that 2**k never overflows on its own and a subnormal result rounds once
    k_half = builder.ashr(k, i(1))
    scales = [
        builder.bitcast(builder.shl(builder.add(e, i(127)), i(23)), x.type) for e in (k_half, builder.sub(k, k_half))
    ]
    result = builder.fmul(builder.fmul(x, scales[0]), scales[1])
    return builder.select(ordered, result, builder.fadd(n, n))


_V16 = ir.VectorType(F32, 16)
_LANES16 = ir.VectorType(I32, 16)


def _scalef(builder: ir.IRBuilder, x: ir.Value, n: ir.Value) -> ir.Value:
    """`vscalefps` (x * 2**floor(n), one rounding) on 16-lane pieces of `x` and `n`: a scalar is
    lane 0 of one, a shorter vector the first lanes of one, a longer one split in 16s and joined."""
    scalef = declare(builder.module, "llvm.x86.avx512.mask.scalef.ps.512", _V16, _V16, _V16, _V16,
                     ir.IntType(16), I32)  # fmt: skip
    count = x.type.count if isinstance(x.type, ir.VectorType) else 0
    undefined = ir.Constant(x.type, ir.Undefined)

    def pieces(value: ir.Value) -> list[ir.Value]:
        if count == 0:
            return [builder.insert_element(ir.Constant(_V16, ir.Undefined), value, ir.Constant(I32, 0))]
        if count <= 16:  # lanes past `count` are lane 0 again: any value would do
            return [builder.shuffle_vector(value, undefined, _mask([*range(count), *[0] * (16 - count)]))]
        return [builder.shuffle_vector(value, undefined, _mask(range(p, p + 16))) for p in range(0, count, 16)]

    # rounding 4: the current mode (MXCSR), round to nearest even
    arguments = (_V16(ir.Undefined), ir.Constant(ir.IntType(16), -1), ir.Constant(I32, 4))
    results = [builder.call(scalef, [a, b, *arguments]) for a, b in zip(pieces(x), pieces(n), strict=True)]
    if count == 0:
        return builder.extract_element(results[0], ir.Constant(I32, 0))
    if count <= 16:
        return results[0] if count == 16 else builder.shuffle_vector(results[0], results[0], _mask(range(count)))
    while len(results) > 1:  # concatenate pairwise: 4 x 16 -> 2 x 32 -> 64
        width = results[0].type.count
        joined = _mask(range(2 * width))
        results = [builder.shuffle_vector(a, b, joined) for a, b in zip(results[::2], results[1::2], strict=True)]
    return results[0]


def _mask(lanes: Sequence[int] | range) -> ir.Constant:
    lanes = list(lanes)
    return ir.Constant(ir.VectorType(I32, len(lanes)), lanes)


def tanh_f32(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh for f32: an odd polynomial near 0, 1 - 2 / (e**2|x| + 1) beyond (with the sign of x),
    which saturates to 1 where e**2|x| overflows. NaN in, NaN out."""
    magnitude = call_intrinsic(builder, "fabs", x)
    square = builder.fmul(x, x)
    small = builder.fadd(x, builder.fmul(builder.fmul(x, square), _horner(builder, square, _TANH_POLY)))
    grown = exp_f32(builder, builder.fadd(magnitude, magnitude))
    one = const_like(x, F32, 1.0)
    large = builder.fsub(one, builder.fdiv(const_like(x, F32, 2.0), builder.fadd(grown, one)))
    large = call_intrinsic(builder, "copysign", large, x)
    use_small = builder.fcmp_unordered("ult", magnitude, const_like(x, F32, _TANH_SMALL))  # NaN: small path
    return builder.select(use_small, small, large)


_ERF_SMALL = 1.0
"""|x| below this takes the odd polynomial; at and above, 1 - erfc, where erfc(1) / erf(1) = 0.19
scales the relative error of erfc down in the result."""
_ERF_SMALL_POLY = (0.12837916612625122, -0.3761262595653534, 0.1128358468413353, -0.026853805407881737,
                   0.00518831517547369, -0.0008010089513845742, 7.853531860746443e-05)  # fmt: skip
"""erf(x) / x - 1 as a polynomial in x**2 for |x| <= 1, fitted for the least maximal relative error
of erf in f64 and rounded to f32 (0.1 ulp); erf(x) = x + x * p(x**2), so that the rounding of the
leading coefficient (2 / sqrt(pi) - 1) reaches the result scaled by 0.13."""
_ERF_LARGE_POLY = (-0.00010802742326632142, 0.28411462903022766, 0.2656703293323517, 0.3223946690559387,
                   -0.036772359162569046, 0.45175403356552124, -0.35597115755081177, 0.05192406848073006,
                   0.01710672490298748)  # fmt: skip
"""erfc(a) * e**(a**2) as a polynomial in t = 1 / (1 + a / 2) for 1 <= a <= 4, fitted like
`_ERF_SMALL_POLY` (relative error 0.13 ulp); a smooth function of t where it is a steep one of a."""
_ERF_ONE = 4.0
"""erf(|x|) rounds to 1 in f32 from 3.92 on: larger |x| are computed as 4 (finite e**(-a**2))."""


def erf_f32(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """erf for f32 (or a vector of f32): x + x * p(x**2) for |x| < 1; beyond, with a = min(|x|, 4),
    1 - e**(-a**2) * q(1 / (1 + a / 2)) with the sign of x (`exp_f32` for the exponential; a**2
    rounded in f32 changes erfc by a relative a**2 * 2**-24, which reaches the result scaled
    by erfc / erf: under 0.1 ulp). Both sides are computed and one is selected, as vector code
    must. Within 2 ulps of the exact value (tests/backends/llvm/test_math_f32.py). NaN in, NaN out
    (through the polynomial side); erf(+-inf) = +-1."""

    def f(value: float) -> ir.Constant:
        return const_like(x, F32, value)

    magnitude = call_intrinsic(builder, "fabs", x)
    small = _fma(builder, x, _horner(builder, builder.fmul(x, x), _ERF_SMALL_POLY), x)
    a = builder.select(builder.fcmp_ordered(">", magnitude, f(_ERF_ONE)), f(_ERF_ONE), magnitude)
    a = builder.select(builder.fcmp_ordered("<", a, f(_ERF_SMALL)), f(_ERF_SMALL), a)  # the unused lanes of small x
    t = builder.fdiv(f(1.0), _fma(builder, a, f(0.5), f(1.0)))
    tail = builder.fmul(exp_f32(builder, builder.fneg(builder.fmul(a, a))), _horner(builder, t, _ERF_LARGE_POLY))
    large = call_intrinsic(builder, "copysign", builder.fsub(f(1.0), tail), x)
    use_small = builder.fcmp_unordered("ult", magnitude, f(_ERF_SMALL))  # NaN: the polynomial, which keeps it
    return builder.select(use_small, small, large)


F32_MATH = {"exp": exp_f32, "tanh": tanh_f32, "erf": erf_f32}
"""The math functions of f32 computed by code of ours, by kernel-IR name."""
