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
    function = declare(builder.module, f"llvm.{name}.{_SUFFIX[kind]}", kind, *(a.type for a in args))
    return builder.call(function, args)


# -- memory and registers ----------------------------------------------------------------------


def widen(builder: ir.IRBuilder, stored: ir.Value, dtype: DType) -> ir.Value:
    """A value loaded from memory, in its register form."""
    match dtype:
        case DType.bf16:  # a bf16 is the upper half of the f32 with the same value
            return builder.bitcast(builder.shl(builder.zext(stored, I32), ir.Constant(I32, 16)), F32)
        case DType.bool:  # any non-zero byte is true, as in numpy
            return builder.icmp_unsigned("!=", stored, ir.Constant(I8, 0))
    return stored


def narrow(builder: ir.IRBuilder, value: ir.Value, dtype: DType) -> ir.Value:
    """A register value in its memory form."""
    match dtype:
        case DType.bf16:  # exact: registers hold bf16-representable floats
            return builder.trunc(builder.lshr(builder.bitcast(value, I32), ir.Constant(I32, 16)), I16)
        case DType.bool:
            return builder.zext(value, I8)
    return value


def round_to_bf16(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """The f32 `value` rounded to the nearest bf16, ties to even; a NaN becomes the quiet NaN
    of its sign (ml_dtypes' rule). The result is still an f32."""
    bits = builder.bitcast(value, I32)
    lowest_kept = builder.and_(builder.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
    # Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
    # dropped half is above the tie, or at the tie with an odd kept part.
    rounded = builder.and_(builder.add(builder.add(bits, ir.Constant(I32, 0x7FFF)), lowest_kept), _mask(0xFFFF0000))
    quiet_nan = builder.or_(builder.and_(bits, _mask(0x80000000)), ir.Constant(I32, 0x7FC00000))
    is_nan = builder.fcmp_unordered("uno", value, value)
    return builder.bitcast(builder.select(is_nan, quiet_nan, rounded), F32)


def _mask(bits: int) -> ir.Constant:
    return ir.Constant(I32, bits - (1 << 32) if bits >= 1 << 31 else bits)


def _f64_to_f32_round_to_odd(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """f64 -> f32 rounding towards zero with the lowest bit set when inexact ("round to odd").
    Rounding that f32 to any format of at most 22 significand bits (f16) then rounds exactly
    like a direct conversion, which x86 lacks for f16 (it would call __truncdfhf2)."""
    nearest = builder.fptrunc(value, F32)
    back = builder.fpext(nearest, F64)
    bits = builder.bitcast(nearest, I32)
    away = builder.fcmp_ordered(">", call_intrinsic(builder, "fabs", back), call_intrinsic(builder, "fabs", value))
    toward_zero = builder.select(away, builder.sub(bits, ir.Constant(I32, 1)), bits)  # sign-magnitude: one ulp in
    odd = builder.or_(toward_zero, ir.Constant(I32, 1))
    inexact = builder.fcmp_ordered("!=", back, value)  # false for NaN, which stays as it is
    return builder.bitcast(builder.select(inexact, odd, bits), F32)


# -- casts -------------------------------------------------------------------------------------


def cast(builder: ir.IRBuilder, value: ir.Value, source: DType, target: DType) -> ir.Value:
    """`value` of `source` converted as `ir.loop.interpreter.cast_scalar` does: to bool is
    `!= 0`, float to integer truncates (saturating, where C leaves it undefined), integers wrap."""
    if source == target:
        return value
    if target == DType.bool:
        if source.is_float:  # NaN != 0
            return builder.fcmp_unordered("!=", value, ir.Constant(value.type, 0.0))
        return builder.icmp_unsigned("!=", value, ir.Constant(value.type, 0))
    if source.is_float and target.is_float:
        return _float_to_float(builder, value, source, target)
    if source.is_float:
        if source == DType.f16:
            value = builder.fpext(value, F32)
        name = "fptosi.sat" if target.is_signed else "fptoui.sat"
        kind = REGISTER_TYPES[target]
        function = declare(builder.module, f"llvm.{name}.{_SUFFIX[kind]}.{_SUFFIX[value.type]}", kind, value.type)
        return builder.call(function, [value])
    if target.is_float:
        # Numbers that round differently in f32 and f16 overflow f16 anyway; ml_dtypes converts
        # integers to bf16 through f32, so rounding twice here matches it.
        convert = builder.sitofp if source.is_signed else builder.uitofp
        result = convert(value, REGISTER_TYPES[target])
        return round_to_bf16(builder, result) if target == DType.bf16 else result
    source_bits, target_bits = value.type.width, REGISTER_TYPES[target].width
    if target_bits < source_bits:
        return builder.trunc(value, REGISTER_TYPES[target])
    if target_bits > source_bits:
        extend = builder.sext if source.is_signed else builder.zext
        return extend(value, REGISTER_TYPES[target])
    return value  # i8 <-> u8: the same bits


def _float_to_float(builder: ir.IRBuilder, value: ir.Value, source: DType, target: DType) -> ir.Value:
    if target == DType.bf16:  # via f32, as ml_dtypes converts (also from f64: rounded twice)
        as_f32 = value if source == DType.bf16 else _float_to_float(builder, value, source, DType.f32)
        return round_to_bf16(builder, as_f32)
    if source == DType.f64 and target == DType.f16:
        return builder.fptrunc(_f64_to_f32_round_to_odd(builder, value), F16)
    if source == DType.bf16 and target == DType.f16:  # ml_dtypes turns a NaN into the quiet NaN of its sign
        sign = builder.trunc(builder.lshr(builder.bitcast(value, I32), ir.Constant(I32, 16)), I16)
        quiet_nan = builder.or_(builder.and_(sign, ir.Constant(I16, -0x8000)), ir.Constant(I16, 0x7E00))
        is_nan = builder.fcmp_unordered("uno", value, value)
        return builder.select(is_nan, builder.bitcast(quiet_nan, F16), builder.fptrunc(value, F16))
    width = {F16: 16, F32: 32, F64: 64}
    have, want = value.type, REGISTER_TYPES[target]
    if width[want] > width[have]:
        return builder.fpext(value, want)
    return builder.fptrunc(value, want) if width[want] < width[have] else value


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
    zero, one = ir.Constant(a.type, 0), ir.Constant(a.type, 1)
    by_zero = builder.icmp_unsigned("==", b, zero)
    if not dtype.is_signed:
        result = (builder.urem if remainder else builder.udiv)(a, builder.select(by_zero, one, b))
        return builder.select(by_zero, zero, result)
    by_minus_one = builder.icmp_signed("==", b, ir.Constant(a.type, -1))
    safe = builder.select(builder.or_(by_zero, by_minus_one), one, b)
    if remainder:  # x % 1 == 0 covers both guarded cases
        return builder.srem(a, safe)
    quotient = builder.select(by_minus_one, builder.sub(zero, a), builder.sdiv(a, safe))
    return builder.select(by_zero, zero, quotient)


def integer_power(builder: ir.IRBuilder, base: ir.Value, exponent: ir.Value, dtype: DType) -> ir.Value:
    """`base ** exponent` by squaring, wrapping like numpy; a negative exponent (an error in
    numpy) gives 1. The loop lives in a small internal function per integer type."""
    kind = base.type
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
        wide = [builder.fpext(a, F32) for a in args]
        return builder.fptrunc(_call_math(builder, name, wide), F16)
    result = _call_math(builder, name, args)
    return round_to_bf16(builder, result) if dtype == DType.bf16 and name not in EXACT_MATH else result


def _call_math(builder: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    if name in _LLVM_MATH:
        return call_intrinsic(builder, _LLVM_MATH[name], *args)
    kind = args[0].type
    symbol = name if kind == F64 else f"{name}f"  # libm: tanh(double), tanhf(float)
    function = declare(builder.module, symbol, kind, *(a.type for a in args))
    function.attributes.add("nounwind")
    return builder.call(function, args)
