"""`dot4_u8s8` (acc + the sum over bytes q of u8(a_q) * s8(b_q), wrapping in i32) as LLVM IR, in the
forms the x86 hosts offer, each exact; `backends.llvm.codegen` picks one per host:

- `vpdpbusd` (VNNI): one instruction per register of i32 lanes. AVX-512 VNNI (with VL) has it on
  xmm, ymm and zmm; AVX-VNNI (`+avxvnni`, the VEX encoding on AVX2-level hosts: Alder Lake, Zen 5)
  on xmm and ymm only. Both are reached through the same LLVM intrinsics; LLVM picks the encoding.
- `vpmaddwd` (AVX2 without VNNI): the bytes widened to i16 and multiplied in pairs, each pair
  summed exactly into i32. Not `vpmaddubsw`, whose u8 x s8 pair sums saturate at i16
  (255 * 127 * 2 = 64770 > 32767), so it would be wrong where both pairs are large. Widening within
  each word keeps the lanes where they are: for a word of bytes (x0, x1, x2, x3), read as two i16,
  `x & 0x00FF00FF` holds x0 and x2 zero-extended, `(x >> 8) & 0x00FF00FF` holds x1 and x3; for the
  signed side `(x << 8) >>a 8` per i16 holds x0 and x2 sign-extended, `x >>a 8` x1 and x3. Two
  `vpmaddwd` then give x0 y0 + x2 y2 and x1 y1 + x3 y3 in each i32 lane (each below 2^16 in
  magnitude, no overflow), and two adds finish it: shifts, ands, multiply-adds, no shuffles.
- plain i32 arithmetic: each byte extracted, widened and multiplied (any other host).

Every form wraps in i32 as the instruction does, so all equal `ir.loop.interpreter` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from backends.llvm.intrinsics import I8, I16, I32, const_like, declare, like, splat

Emit = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value], ir.Value]


def has_avx512_vnni(features: str) -> bool:
    """`vpdpbusd` on xmm, ymm and zmm registers (AVX-512 VNNI with its 128/256-bit forms)."""
    return {"+avx512vnni", "+avx512vl", "+avx512f"} <= set(features.split(","))


def has_avx_vnni(features: str) -> bool:
    """`vpdpbusd` on xmm and ymm registers, VEX-encoded (AVX-VNNI)."""
    return "+avxvnni" in features.split(",")


def has_avx2(features: str) -> bool:
    return "+avx2" in features.split(",")


def vpdpbusd(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value, widest: int) -> ir.Value:
    """The VNNI form on registers of up to `widest` i32 lanes (16: zmm, 8: ymm)."""

    def instruction(acc: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        lanes = acc.type.count
        as_bytes = ir.VectorType(I8, 4 * lanes)
        function = declare(builder.module, f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", acc.type, acc.type,
                           as_bytes, as_bytes)  # fmt: skip
        return builder.call(function, [acc, builder.bitcast(a, as_bytes), builder.bitcast(b, as_bytes)])

    return _in_registers(builder, acc, a, b, instruction, widest)


def vpmaddwd(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
    """The AVX2 form of the module doc: bytes widened to i16 in place, two `vpmaddwd`, two adds."""

    def instruction(acc: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        lanes = acc.type.count
        halves = ir.VectorType(I16, 2 * lanes)
        name = "llvm.x86.avx2.pmadd.wd" if lanes == 8 else "llvm.x86.sse2.pmadd.wd"
        multiply_add = declare(builder.module, name, acc.type, halves, halves)
        low_bytes = const_like(a, I32, 0x00FF00FF)
        a_even = builder.bitcast(builder.and_(a, low_bytes), halves)  # a0, a2 zero-extended
        a_odd = builder.bitcast(builder.and_(builder.lshr(a, const_like(a, I32, 8)), low_bytes), halves)
        b_halves, eight = builder.bitcast(b, halves), splat(halves, 8)
        b_even = builder.ashr(builder.shl(b_halves, eight), eight)  # b0, b2 sign-extended
        b_odd = builder.ashr(b_halves, eight)  # b1, b3 sign-extended
        acc = builder.add(acc, builder.call(multiply_add, [a_even, b_even]))
        return builder.add(acc, builder.call(multiply_add, [a_odd, b_odd]))

    return _in_registers(builder, acc, a, b, instruction, 8)


def arithmetic(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
    """The portable form: each byte extracted, widened (u8 zero-, s8 sign-extended) and multiplied;
    each product is below 2^15 in magnitude, the sums wrap in i32 as the instruction's do."""
    for q in range(4):
        a_byte, b_byte = (
            builder.trunc(builder.lshr(x, const_like(x, I32, 8 * q)) if q else x, like(x, I8)) for x in (a, b)
        )
        product = builder.mul(builder.zext(a_byte, like(a, I32)), builder.sext(b_byte, like(b, I32)))
        acc = builder.add(acc, product)
    return acc


def _in_registers(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value, instruction: Emit,
                  widest: int) -> ir.Value:  # fmt: skip
    """`instruction` (on vectors of 4 .. `widest` i32 lanes, powers of two) applied to scalars (lane 0
    of an xmm register), to vectors it takes whole, and to wider vectors cut into pieces of `widest`
    lanes and joined again. A lane count that does not split so (the lowering never asks for one)
    takes the plain arithmetic."""
    if not isinstance(acc.type, ir.VectorType):
        wide = ir.VectorType(I32, 4)
        operands = [builder.insert_element(ir.Constant(wide, None), x, ir.Constant(I32, 0)) for x in (acc, a, b)]
        return builder.extract_element(instruction(*operands), ir.Constant(I32, 0))
    lanes = acc.type.count
    if lanes in (4, 8, 16) and lanes <= widest:
        return instruction(acc, a, b)
    if lanes % widest or (lanes // widest) & (lanes // widest - 1):
        return arithmetic(builder, acc, a, b)
    pieces = []
    for start in range(0, lanes, widest):
        part = ir.Constant(ir.VectorType(I32, widest), list(range(start, start + widest)))
        cut = [builder.shuffle_vector(x, ir.Constant(x.type, ir.Undefined), part) for x in (acc, a, b)]
        pieces.append(instruction(*cut))
    while len(pieces) > 1:  # a power of two of them: joined pairwise
        joined = ir.VectorType(I32, 2 * pieces[0].type.count)
        everything = ir.Constant(joined, list(range(joined.count)))
        pieces = [builder.shuffle_vector(x, y, everything) for x, y in zip(pieces[::2], pieces[1::2])]
    return pieces[0]
