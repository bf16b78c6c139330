"""Scalar numerics of the kernel IR on LLVM: how each dtype lives in memory and in registers, its
constants, casts, and the operations that are more than one builder call (NaN-propagating max/min,
guarded integer division, math functions, bf16 rounding).

`backends.llvm.codegen` walks the kernel IR and calls these; everything here is one scalar
operation on an `ir.IRBuilder`, bit-exact with `ir.loop.interpreter` except the math functions
of libm, which may differ from numpy's in the last ulps.

Representations (memory / register):
- f64, f32: double / double, float / float;
- f16: half / half; LLVM computes half arithmetic in float and rounds once per operation, which
  is what numpy does, and converts with F16C on x86;
- bf16: i16 / float holding a bf16-representable value. llvmlite's IR builder has no `bfloat`
  type, so bf16 is widened by a shift on load and rounded to nearest even (NaN kept, quieted,
  sign kept, as ml_dtypes does) after every operation whose float result may not be a bf16;
- integers: iN / iN (u8 is i8 with unsigned division, comparisons and widening);
- bool: i8 holding 0/1 / i1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from llvmlite import ir

from ir.dtype import DType

I1, I8, I16, I32, I64 = (ir.IntType(bits) for bits in (1, 8, 16, 32, 64))
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()

STORAGE_TYPES: dict[DType, ir.Type] = {
    DType.f64: F64, DType.f32: F32, DType.f16: F16, DType.bf16: I16,
    DType.i64: I64, DType.i32: I32, DType.i8: I8, DType.u8: I8, DType.bool: I8,
}  # fmt: skip
REGISTER_TYPES: dict[DType, ir.Type] = {**STORAGE_TYPES, DType.bf16: F32, DType.bool: I1}

_SUFFIX = {F64: "f64", F32: "f32", F16: "f16", I1: "i1", I8: "i8", I16: "i16", I32: "i32", I64: "i64"}


# -- scalars and vectors -----------------------------------------------------------------------
# Every operation below takes scalars or vectors (the lanes of a vectorized loop,
# `backends.llvm.vectorize`) alike: types and constants are made "like" the operand.


def like(value: ir.Value, element: ir.Type) -> ir.Type:
    """`element`, or a vector of it with as many lanes as `value` has."""
    return ir.VectorType(element, value.type.count) if isinstance(value.type, ir.VectorType) else element


def splat(kind: ir.Type, value: int | float) -> ir.Constant:
    """The constant `value` of `kind`, in every lane when `kind` is a vector."""
    return ir.Constant(kind, [value] * kind.count) if isinstance(kind, ir.VectorType) else ir.Constant(kind, value)


def const_like(value: ir.Value, element: ir.Type, constant_value: int | float) -> ir.Constant:
    return splat(like(value, element), constant_value)


def type_suffix(kind: ir.Type) -> str:
    """The overload suffix of an LLVM intrinsic: f32, v16f32, ..."""
    if isinstance(kind, ir.VectorType):
        return f"v{kind.count}{_SUFFIX[kind.element]}"
    return _SUFFIX[kind]


def constant(dtype: DType, value: int | float | bool) -> ir.Constant:
    """`value` rounded to `dtype` exactly as numpy rounds it (`dtype.numpy.type(value)`)."""
    if dtype.is_float:
        return ir.Constant(REGISTER_TYPES[dtype], float(np.asarray(dtype.numpy.type(value)).astype(np.float64)))
    if dtype == DType.bool:
        return ir.Constant(I1, int(bool(value)))
    bits = REGISTER_TYPES[dtype].width
    wrapped = int(value) % (1 << bits)  # LLVM reads integer constants as signed
    return ir.Constant(REGISTER_TYPES[dtype], wrapped - (1 << bits) if wrapped >= 1 << (bits - 1) else wrapped)


# -- declarations ------------------------------------------------------------------------------


def declare(module: ir.Module, name: str, return_type: ir.Type, *argument_types: ir.Type) -> ir.Function:
    """The function `name` of `module`, declared on first use."""
    kind = ir.FunctionType(return_type, argument_types)
    existing = module.globals.get(name)
    if existing is None:
        return ir.Function(module, kind, name)
    if existing.ftype != kind:  # a kernel named like a library function
        raise ValueError(f"{name} is already defined in module {module.name!r} as {existing.ftype}")
    return existing


def call_intrinsic(builder: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """`llvm.<name>.<type of the first argument>` applied to `args`, returning that type."""
    kind = args[0].type
    function = declare(builder.module, f"llvm.{name}.{type_suffix(kind)}", kind, *(a.type for a in args))
    return builder.call(function, args)


# -- memory and registers ----------------------------------------------------------------------


def widen(builder: ir.IRBuilder, stored: ir.Value, dtype: DType) -> ir.Value:
    """A value loaded from memory, in its register form."""
    match dtype:
        case DType.bf16:  # a bf16 is the upper half of the f32 with the same value
            wide = builder.zext(stored, like(stored, I32))
            return builder.bitcast(builder.shl(wide, const_like(stored, I32, 16)), like(stored, F32))
        case DType.bool:  # any non-zero byte is true, as in numpy
            return builder.icmp_unsigned("!=", stored, const_like(stored, I8, 0))
    return stored


def narrow(builder: ir.IRBuilder, value: ir.Value, dtype: DType) -> ir.Value:
    """A register value in its memory form."""
    match dtype:
        case DType.bf16:  # exact: registers hold bf16-representable floats
            bits = builder.bitcast(value, like(value, I32))
            return builder.trunc(builder.lshr(bits, const_like(value, I32, 16)), like(value, I16))
        case DType.bool:
            return builder.zext(value, like(value, I8))
    return value


def round_to_bf16(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """The f32 `value` rounded to the nearest bf16, ties to even; a NaN becomes the quiet NaN
    of its sign (ml_dtypes' rule). The result is still an f32."""
    bits = builder.bitcast(value, like(value, I32))
    lowest_kept = builder.and_(builder.lshr(bits, const_like(value, I32, 16)), const_like(value, I32, 1))
    # Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
    # dropped half is above the tie, or at the tie with an odd kept part.
    rounded = builder.add(builder.add(bits, const_like(value, I32, 0x7FFF)), lowest_kept)
    rounded = builder.and_(rounded, _mask(value, 0xFFFF0000))
    quiet_nan = builder.or_(builder.and_(bits, _mask(value, 0x80000000)), const_like(value, I32, 0x7FC00000))
    is_nan = builder.fcmp_unordered("uno", value, value)
    return builder.bitcast(builder.select(is_nan, quiet_nan, rounded), like(value, F32))


def _mask(value: ir.Value, bits: int) -> ir.Constant:
    """The 32-bit pattern `bits` as an i32 constant shaped like `value`."""
    return const_like(value, I32, bits - (1 << 32) if bits >= 1 << 31 else bits)


def _f64_to_f32_round_to_odd(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """f64 -> f32 rounding towards zero with the lowest bit set when inexact ("round to odd").
    Rounding that f32 to any format of at most 22 significand bits (f16) then rounds exactly
    like a direct conversion, which x86 lacks for f16 (it would call __truncdfhf2)."""
    nearest = builder.fptrunc(value, like(value, F32))
    back = builder.fpext(nearest, like(value, F64))
    bits = builder.bitcast(nearest, like(value, I32))
    away = builder.fcmp_ordered(">", call_intrinsic(builder, "fabs", back), call_intrinsic(builder, "fabs", value))
    one = const_like(value, I32, 1)
    toward_zero = builder.select(away, builder.sub(bits, one), bits)  # sign-magnitude: one ulp in
    odd = builder.or_(toward_zero, one)
    inexact = builder.fcmp_ordered("!=", back, value)  # false for NaN, which stays as it is
    return builder.bitcast(builder.select(inexact, odd, bits), like(value, F32))


# -- casts -------------------------------------------------------------------------------------


def cast(builder: ir.IRBuilder, value: ir.Value, source: DType, target: DType) -> ir.Value:
    """`value` of `source` converted as `ir.loop.interpreter.cast_scalar` does: to bool is
    `!= 0`, float to integer truncates (saturating, where C leaves it undefined), integers wrap."""
    if source == target:
        return value
    if target == DType.bool:
        if source.is_float:  # NaN != 0
            return builder.fcmp_unordered("!=", value, splat(value.type, 0.0))
        return builder.icmp_unsigned("!=", value, splat(value.type, 0))
    if source.is_float and target.is_float:
        return _float_to_float(builder, value, source, target)
    if source.is_float:
        if source == DType.f16:
            value = builder.fpext(value, like(value, F32))
        name = "fptosi.sat" if target.is_signed else "fptoui.sat"
        kind = like(value, REGISTER_TYPES[target])
        symbol = f"llvm.{name}.{type_suffix(kind)}.{type_suffix(value.type)}"
        function = declare(builder.module, symbol, kind, value.type)
        return builder.call(function, [value])
    if target.is_float:
        # Numbers that round differently in f32 and f16 overflow f16 anyway; ml_dtypes converts
        # integers to bf16 through f32, so rounding twice here matches it.
        convert = builder.sitofp if source.is_signed else builder.uitofp
        result = convert(value, like(value, REGISTER_TYPES[target]))
        return round_to_bf16(builder, result) if target == DType.bf16 else result
    source_bits, target_bits = REGISTER_TYPES[source].width, REGISTER_TYPES[target].width
    if target_bits < source_bits:
        return builder.trunc(value, like(value, REGISTER_TYPES[target]))
    if target_bits > source_bits:
        extend = builder.sext if source.is_signed else builder.zext
        return extend(value, like(value, REGISTER_TYPES[target]))
    return value  # i8 <-> u8: the same bits


def _float_to_float(builder: ir.IRBuilder, value: ir.Value, source: DType, target: DType) -> ir.Value:
    if target == DType.bf16:  # via f32, as ml_dtypes converts (also from f64: rounded twice)
        as_f32 = value if source == DType.bf16 else _float_to_float(builder, value, source, DType.f32)
        return round_to_bf16(builder, as_f32)
    if source == DType.f64 and target == DType.f16:
        return builder.fptrunc(_f64_to_f32_round_to_odd(builder, value), like(value, F16))
    if source == DType.bf16 and target == DType.f16:  # ml_dtypes turns a NaN into the quiet NaN of its sign
        bits = builder.lshr(builder.bitcast(value, like(value, I32)), const_like(value, I32, 16))
        sign = builder.trunc(bits, like(value, I16))
        quiet_nan = builder.or_(builder.and_(sign, const_like(value, I16, -0x8000)), const_like(value, I16, 0x7E00))
        is_nan = builder.fcmp_unordered("uno", value, value)
        half = like(value, F16)
        return builder.select(is_nan, builder.bitcast(quiet_nan, half), builder.fptrunc(value, half))
    width = {F16: 16, F32: 32, F64: 64}
    have, want = REGISTER_TYPES[source], REGISTER_TYPES[target]
    if width[want] > width[have]:
        return builder.fpext(value, like(value, want))
    return builder.fptrunc(value, like(value, want)) if width[want] < width[have] else value


# -- operations --------------------------------------------------------------------------------


def maximum(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, dtype: DType, minimum: bool = False) -> ir.Value:
    """`a if isnan(a) or a >= b else b` (or `<=` for the minimum): a NaN on either side wins and
    ties keep `a`, like the interpreter; LLVM's maxnum would drop NaNs."""
    if dtype.is_float:
        keep_a = builder.or_(builder.fcmp_unordered("uno", a, a), builder.fcmp_ordered("<=" if minimum else ">=", a, b))
    else:
        compare = builder.icmp_signed if dtype.is_signed else builder.icmp_unsigned
        keep_a = compare("<=" if minimum else ">=", a, b)
    return builder.select(keep_a, a, b)


def integer_divide(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, dtype: DType, remainder: bool = False):
    """C division (truncating) or remainder (the dividend's sign), with x / 0 = x % 0 = 0 and
    MIN / -1 = MIN (it wraps), where LLVM's sdiv/srem would be undefined."""
    zero, one = splat(a.type, 0), splat(a.type, 1)
    by_zero = builder.icmp_unsigned("==", b, zero)
    if not dtype.is_signed:
        result = (builder.urem if remainder else builder.udiv)(a, builder.select(by_zero, one, b))
        return builder.select(by_zero, zero, result)
    by_minus_one = builder.icmp_signed("==", b, splat(a.type, -1))
    safe = builder.select(builder.or_(by_zero, by_minus_one), one, b)
    if remainder:  # x % 1 == 0 covers both guarded cases
        return builder.srem(a, safe)
    quotient = builder.select(by_minus_one, builder.sub(zero, a), builder.sdiv(a, safe))
    return builder.select(by_zero, zero, quotient)


def integer_power(builder: ir.IRBuilder, base: ir.Value, exponent: ir.Value, dtype: DType) -> ir.Value:
    """`base ** exponent` by squaring, wrapping like numpy; a negative exponent (an error in
    numpy) gives 1. The loop lives in a small internal function per integer type."""
    kind = base.type
    if isinstance(kind, ir.VectorType):  # the loop runs per lane
        result = ir.Constant(kind, ir.Undefined)
        for lane in range(kind.count):
            at = ir.Constant(I32, lane)
            scalars = (builder.extract_element(base, at), builder.extract_element(exponent, at))
            result = builder.insert_element(result, integer_power(builder, *scalars, dtype), at)
        return result
    name = f"kiln.ipow.{_SUFFIX[kind]}.{'s' if dtype.is_signed else 'u'}"
    if name not in builder.module.globals:
        _define_integer_power(declare(builder.module, name, kind, kind, kind), dtype.is_signed)
    return builder.call(builder.module.globals[name], [base, exponent])


def _define_integer_power(function: ir.Function, signed: bool) -> None:
    function.linkage = "internal"
    function.attributes.add("alwaysinline")
    base, exponent = function.args
    kind = base.type
    entry, loop, step, done = (function.append_basic_block(n) for n in ("entry", "loop", "step", "done"))
    builder = ir.IRBuilder(entry)
    builder.branch(loop)
    builder.position_at_end(loop)
    result, power, rest = (builder.phi(kind, name=n) for n in ("result", "power", "rest"))
    compare = builder.icmp_signed if signed else builder.icmp_unsigned
    builder.cbranch(compare(">", rest, ir.Constant(kind, 0)), step, done)
    builder.position_at_end(step)
    odd = builder.trunc(rest, I1)
    next_result = builder.select(odd, builder.mul(result, power), result)
    next_power, next_rest = builder.mul(power, power), builder.lshr(rest, ir.Constant(kind, 1))
    builder.branch(loop)
    for phi, first, following in ((result, ir.Constant(kind, 1), next_result), (power, base, next_power),
                                  (rest, exponent, next_rest)):  # fmt: skip
        phi.add_incoming(first, entry)
        phi.add_incoming(following, step)
    builder.position_at_end(done)
    builder.ret(result)


# Math functions. The LLVM intrinsics become instructions (sqrt, floor, ...) or libm calls (exp,
# sin, pow); the rest are libm calls by name, resolved by the JIT from the process.
_LLVM_MATH = {"sqrt": "sqrt", "exp": "exp", "log": "log", "sin": "sin", "cos": "cos", "floor": "floor",
              "ceil": "ceil", "round": "roundeven", "abs": "fabs", "pow": "pow"}  # fmt: skip
_LIBM_MATH = frozenset({"tanh", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "erf"})
MATH_FUNCTIONS = frozenset(_LLVM_MATH) | _LIBM_MATH
EXACT_MATH = frozenset({"floor", "ceil", "round", "abs"})
"""Results that are representable in the argument's format: no rounding to bf16 after them."""


def math_function(builder: ir.IRBuilder, name: str, args: list[ir.Value], dtype: DType) -> ir.Value:
    """The float function `name` of `args` in `dtype`. f16 and bf16 compute in f32 and round, as
    numpy does; erf computes in f64 and rounds, as the interpreter (Python's math.erf) does."""
    if name == "erf":
        wide = [cast(builder, a, dtype, DType.f64) for a in args]
        return cast(builder, _call_math(builder, name, wide), DType.f64, dtype)
    if dtype == DType.f16 and name not in EXACT_MATH:
        wide = [builder.fpext(a, like(a, F32)) for a in args]
        return builder.fptrunc(_call_math(builder, name, wide), like(args[0], F16))
    result = _call_math(builder, name, args)
    return round_to_bf16(builder, result) if dtype == DType.bf16 and name not in EXACT_MATH else result


def _call_math(builder: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    kind = args[0].type
    element = kind.element if isinstance(kind, ir.VectorType) else kind
    if element == F32 and name in _OWN_F32_MATH:  # the same instructions for lanes and scalars
        return _OWN_F32_MATH[name](builder, args[0])
    if name in _LLVM_MATH:  # on vectors LLVM calls libm per lane where the target has no instruction
        return call_intrinsic(builder, _LLVM_MATH[name], *args)
    symbol = name if element == F64 else f"{name}f"  # libm: tanh(double), tanhf(float)
    function = declare(builder.module, symbol, element, *(element for _ in args))
    function.attributes.add("nounwind")
    if not isinstance(kind, ir.VectorType):
        return builder.call(function, args)
    result = ir.Constant(kind, ir.Undefined)  # libm has no vector entry points: one call per lane
    for lane in range(kind.count):
        at = ir.Constant(I32, lane)
        scalar = builder.call(function, [builder.extract_element(a, at) for a in args])
        result = builder.insert_element(result, scalar, at)
    return result


# -- f32 exp and tanh in LLVM IR -----------------------------------------------------------------
# libm's expf is a call per element, which stops a vectorized loop cold; these are straight-line
# code that works on scalars and vectors alike, so the lanes of a vectorized loop and its scalar
# remainder compute the same bits. Both stay within 2 ulps of the exact result over the whole
# f32 range (tests/backends/llvm/test_vectorize.py measures it).

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
    fma is exact), exp(r) by a polynomial, then times 2**n in two steps so that subnormal
    results round once and 2**n never overflows on its own. NaN in, NaN out."""

    def f(value: float) -> ir.Constant:
        return const_like(x, F32, value)

    def i(value: int) -> ir.Constant:
        return const_like(x, I32, value)

    low, high = _EXP_RANGE
    ordered = builder.fcmp_ordered("ord", x, x)
    clamped = builder.select(builder.fcmp_ordered(">", x, f(high)), f(high), x)
    clamped = builder.select(builder.fcmp_ordered("<", clamped, f(low)), f(low), clamped)
    clamped = builder.select(ordered, clamped, f(0.0))  # NaN converts to no integer: computed as 0, replaced last
    n = call_intrinsic(builder, "roundeven", builder.fmul(clamped, f(_LOG2E)))
    r = _fma(builder, n, f(-_LN2_HI), clamped)
    r = _fma(builder, n, f(-_LN2_LO), r)
    r_squared_p = builder.fmul(builder.fmul(r, r), _horner(builder, r, _EXP_POLY))
    poly = builder.fadd(f(1.0), builder.fadd(r, r_squared_p))
    k = builder.fptosi(n, like(x, I32))  # -150..129
    k_half = builder.ashr(k, i(1))
    scales = [
        builder.bitcast(builder.shl(builder.add(e, i(127)), i(23)), x.type) for e in (k_half, builder.sub(k, k_half))
    ]
    result = builder.fmul(builder.fmul(poly, scales[0]), scales[1])
    return builder.select(ordered, result, builder.fadd(x, x))


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


_OWN_F32_MATH = {"exp": exp_f32, "tanh": tanh_f32}
