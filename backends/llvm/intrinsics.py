"""Scalar numerics of the kernel IR on LLVM: how each dtype lives in memory and in registers, its
constants, casts, and the operations that are more than one builder call (NaN-propagating max/min,
guarded integer division, math functions, bf16 rounding).

`backends.llvm.codegen` walks the kernel IR and calls these; everything here is one scalar
operation on an `ir.IRBuilder`, bit-exact with `ir.loop.interpreter` except the math functions
of libm and the f32 exp, tanh and erf of `backends.llvm.math_f32`, which may differ from numpy's
in the last ulps.

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


def _int_to_f64_round_to_odd(builder: ir.IRBuilder, value: ir.Value, source: DType) -> ir.Value:
    """The integer `value` as an f64, rounded to odd: exact up to 53 bits; wider magnitudes keep
    their top 53 bits with the lowest set when anything below was dropped, so a later
    round-to-nearest to a narrower format rounds once, as a direct conversion would."""
    convert = builder.sitofp if source.is_signed else builder.uitofp
    if REGISTER_TYPES[source].width < 64:
        return convert(value, like(value, F64))
    zero = const_like(value, I64, 0)
    negative = builder.icmp_signed("<", value, zero) if source.is_signed else None
    magnitude = builder.select(negative, builder.sub(zero, value), value) if negative is not None else value
    count_zeros = declare(
        builder.module, f"llvm.ctlz.{type_suffix(magnitude.type)}", magnitude.type, magnitude.type, I1
    )
    leading = builder.call(count_zeros, [magnitude, ir.Constant(I1, 0)])
    spare = const_like(value, I64, 64 - 53)
    dropped = builder.select(builder.icmp_unsigned("<", leading, spare), builder.sub(spare, leading), zero)
    kept_mask = builder.shl(const_like(value, I64, -1), dropped)
    lost = builder.and_(magnitude, builder.not_(kept_mask))
    sticky = builder.select(
        builder.icmp_unsigned("!=", lost, zero), builder.shl(const_like(value, I64, 1), dropped), zero
    )
    as_f64 = builder.uitofp(builder.or_(builder.and_(magnitude, kept_mask), sticky), like(value, F64))  # exact
    return builder.select(negative, builder.fneg(as_f64), as_f64) if negative is not None else as_f64


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
        if REGISTER_TYPES[target].width <= 16:
            return _float_to_small_int(builder, value, target)
        name = "fptosi.sat" if target.is_signed else "fptoui.sat"
        kind = like(value, REGISTER_TYPES[target])
        symbol = f"llvm.{name}.{type_suffix(kind)}.{type_suffix(value.type)}"
        function = declare(builder.module, symbol, kind, value.type)
        return builder.call(function, [value])
    if target == DType.bf16:  # rounded once, as ml_dtypes (>= 0.7) converts
        return round_to_bf16(
            builder, _f64_to_f32_round_to_odd(builder, _int_to_f64_round_to_odd(builder, value, source))
        )
    if target.is_float:  # numbers that round differently in f32 and f16 overflow f16 anyway
        convert = builder.sitofp if source.is_signed else builder.uitofp
        return convert(value, like(value, REGISTER_TYPES[target]))
    source_bits, target_bits = REGISTER_TYPES[source].width, REGISTER_TYPES[target].width
    if target_bits < source_bits:
        return builder.trunc(value, like(value, REGISTER_TYPES[target]))
    if target_bits > source_bits:
        extend = builder.sext if source.is_signed else builder.zext
        return extend(value, like(value, REGISTER_TYPES[target]))
    return value  # i8 <-> u8: the same bits


def _float_to_small_int(builder: ir.IRBuilder, value: ir.Value, target: DType) -> ir.Value:
    """fptosi.sat into an integer of at most 16 bits, spelled as clamp, fptosi to i32 and trunc with
    nan -> 0 (the same values): LLVM 22 scalarizes vector `fptosi.sat` on x86 with a branch per lane
    (quantize_linear ran at ~3.6 ns an element), while this stays four vector instructions. The
    bounds are exact in every float type, so the clamp changes no in-range value."""
    info = np.iinfo(target.numpy)
    low, high = (const_like(value, value.type if not isinstance(value.type, ir.VectorType) else value.type.element,
                            float(bound)) for bound in (info.min, info.max))  # fmt: skip
    clamped = builder.select(builder.fcmp_ordered("<", value, low), low, value)
    clamped = builder.select(builder.fcmp_ordered(">", clamped, high), high, clamped)
    whole = builder.fptosi(clamped, like(value, ir.IntType(32)))  # nan's lane is poison: replaced below
    ordered = builder.fcmp_ordered("ord", value, value)
    whole = builder.select(ordered, whole, const_like(value, ir.IntType(32), 0))
    return builder.trunc(whole, like(value, REGISTER_TYPES[target]))


def _float_to_float(builder: ir.IRBuilder, value: ir.Value, source: DType, target: DType) -> ir.Value:
    if target == DType.bf16:  # rounded once, as ml_dtypes (>= 0.7) converts: from f64 through round-to-odd
        as_f32 = _f64_to_f32_round_to_odd(builder, value) if source == DType.f64 else value
        return round_to_bf16(builder, builder.fpext(as_f32, like(value, F32)) if source == DType.f16 else as_f32)
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
    numpy does (erf too: the interpreter's math.erf is f64, rounded once; ours is within 2 ulps of
    it in f32, so within about one ulp of it in f16 and bf16)."""
    if dtype == DType.f16 and name not in EXACT_MATH:
        wide = [builder.fpext(a, like(a, F32)) for a in args]
        return builder.fptrunc(_call_math(builder, name, wide), like(args[0], F16))
    result = _call_math(builder, name, args)
    return round_to_bf16(builder, result) if dtype == DType.bf16 and name not in EXACT_MATH else result


def _call_math(builder: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    from backends.llvm.math_f32 import F32_MATH  # here: that module builds on this one

    kind = args[0].type
    element = kind.element if isinstance(kind, ir.VectorType) else kind
    if element == F32 and name in F32_MATH:  # the same instructions for lanes and scalars
        return F32_MATH[name](builder, args[0])
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
