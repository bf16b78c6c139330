"""The CUDA printer, construct by construct: each kernel-IR expression or statement and the
CUDA C text it becomes (a table, read side by side), and the shape of a printed kernel. No
NVRTC needed; `test_nvrtc` compiles what is printed here."""

from __future__ import annotations

import math

import pytest

from backends.cuda import CudaCodegenError, KernelPrinter, emit_kernel, gpu_schedule
from ir.dtype import DType
from ir.loop import (
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
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
    Unary,
    Var,
)

F32, F64, F16, BF16 = (Buffer(n, d, (8,)) for n, d in (("x", DType.f32), ("d", DType.f64), ("h", DType.f16),
                                                         ("b", DType.bf16)))  # fmt: skip
I64, I32, I8, U8, BOOL = (Buffer(n, d, (8,)) for n, d in (("n", DType.i64), ("m", DType.i32), ("s", DType.i8),
                                                           ("u", DType.u8), ("p", DType.bool)))  # fmt: skip
i = Var("i")
x, y = Load(F32, Ref(i)), Load(F32, Ref(i) + 1)
d, h, b = Load(F64, Ref(i)), Load(F16, Ref(i)), Load(BF16, Ref(i))
n, m, s, u, p = Load(I64, Ref(i)), Load(I32, Ref(i)), Load(I8, Ref(i)), Load(U8, Ref(i)), Load(BOOL, Ref(i))
hf, bf = Cast(h, DType.f32), Cast(b, DType.f32)


def c(value, dtype=DType.f32):
    return Const(value, dtype)


EXPRESSIONS = [
    # constants: in their register type, rounded to their dtype
    (c(1.5), "1.5f"),
    (c(-0.0), "-0.0f"),
    (c(0.1, DType.f64), "0.1"),
    (c(0.1), "0.10000000149011612f"),
    (c(0.1, DType.bf16), "0.10009765625f"),
    (c(math.inf), "__uint_as_float(0x7f800000u)"),
    (c(-math.inf, DType.f64), "__longlong_as_double(0xfff0000000000000ULL)"),
    (c(math.nan), "__uint_as_float(0x7fc00000u)"),
    (c(7, DType.i64), "7"),
    (c(2**40, DType.i64), "1099511627776LL"),
    (c(-(2**63), DType.i64), "(-9223372036854775807LL - 1)"),
    (c(-(2**31), DType.i32), "(-2147483647 - 1)"),
    (c(-5, DType.i8), "(int8_t)-5"),
    (c(True, DType.bool), "true"),
    # loads: f16/bf16 widen exactly to float
    (x, "x[i]"),
    (h, "kiln_load(h[i])"),
    (b, "kiln_load(b[i])"),
    # arithmetic: C precedence, parentheses only where needed
    (x + y * x, "x[i] + x[i + 1] * x[i]"),
    ((x + y) * x, "(x[i] + x[i + 1]) * x[i]"),
    (x - (y - x), "x[i] - (x[i + 1] - x[i])"),
    (x / c(2.0), "x[i] / 2.0f"),
    (Binary("mod", x, y), "fmodf(x[i], x[i + 1])"),
    (Binary("mod", d, d), "fmod(d[i], d[i])"),
    (Binary("pow", x, y), "powf(x[i], x[i + 1])"),
    (-x, "-x[i]"),
    (-(x + y), "-(x[i] + x[i + 1])"),
    (Unary("neg", -x), "-(-x[i])"),  # not "--", C's decrement
    (-c(-2.5), "-(-2.5f)"),
    # f16/bf16 arithmetic: in float, rounded after every operation
    (Binary("add", hf, hf).cast(DType.f16), "kiln_round_f16(kiln_load(h[i]) + kiln_load(h[i]))"),
    (Binary("mul", b, b), "kiln_round_bf16(kiln_load(b[i]) * kiln_load(b[i]))"),
    (Unary("exp", b), "kiln_round_bf16(expf(kiln_load(b[i])))"),
    (Unary("floor", b), "floorf(kiln_load(b[i]))"),
    (Binary("mod", b, b), "fmodf(kiln_load(b[i]), kiln_load(b[i]))"),
    # max/min keep NaN and the first operand on ties
    (x.max(y), "kiln_max<float>(x[i], x[i + 1])"),
    (n.min(c(0, DType.i64)), "kiln_min<int64_t>(n[i], 0)"),
    (b.max(b), "kiln_max<float>(kiln_load(b[i]), kiln_load(b[i]))"),
    # math: float names take an f; round is half to even; erf goes through f64
    (Unary("tanh", x), "tanhf(x[i])"),
    (Unary("round", x), "rintf(x[i])"),
    (Unary("round", d), "rint(d[i])"),
    (Unary("abs", x), "fabsf(x[i])"),
    (Unary("erf", x), "(float)erf((double)x[i])"),
    (Unary("erf", b), "kiln_f64_to_bf16(erf((double)kiln_load(b[i])))"),
    (Unary("erf", h), "kiln_f64_to_f16(erf((double)kiln_load(h[i])))"),
    (Call("fma", (x, y, x), DType.f32), "fmaf(x[i], x[i + 1], x[i])"),
    (Call("fma", (b, b, b), DType.bf16), "kiln_round_bf16(fmaf(kiln_load(b[i]), kiln_load(b[i]), kiln_load(b[i])))"),
    # integers: guarded division unless the divisor is a safe constant; small types wrap
    (n / m.cast(DType.i64), "kiln_div<int64_t>(n[i], (int64_t)m[i])"),
    (n % n, "kiln_mod<int64_t>(n[i], n[i])"),
    (n / 64, "n[i] / 64"),
    ((n + 1) % 8, "(n[i] + 1) % 8"),
    (n / -1, "kiln_div<int64_t>(n[i], -1)"),
    (Binary("pow", m, m), "kiln_ipow<int32_t>(m[i], m[i])"),
    (s + s, "(int8_t)(s[i] + s[i])"),
    (u * u, "(uint8_t)(u[i] * u[i])"),
    (-s, "kiln_negate<int8_t>(s[i])"),
    (Unary("abs", m), "kiln_abs<int32_t>(m[i])"),
    (Unary("abs", u), "u[i]"),
    (Unary("floor", n), "n[i]"),
    (c(3, DType.i64) * c(2**31 - 1, DType.i64), "(int64_t)3 * 2147483647"),
    (Binary("and", m, m), "m[i] & m[i]"),
    # comparisons and logic
    (x.lt(y), "x[i] < x[i + 1]"),
    (n.ne(c(0, DType.i64)), "n[i] != 0"),
    (Binary("and", p, x.gt(y)), "p[i] && x[i] > x[i + 1]"),
    (Binary("or", p, Binary("and", p, p)), "p[i] || p[i] && p[i]"),
    (Binary("and", Binary("or", p, p), p), "(p[i] || p[i]) && p[i]"),
    (Binary("xor", p, p), "p[i] != p[i]"),
    (Binary("eq", Binary("xor", p, p), p), "p[i] != p[i] == p[i]"),  # C: left to right
    (Unary("not", p), "!p[i]"),
    (Unary("not", x.lt(y)), "!(x[i] < x[i + 1])"),
    # select: only the chosen side is evaluated
    (Select(n.lt(c(0, DType.i64)), c(0.0), x), "n[i] < 0 ? 0.0f : x[i]"),
    (Select(p, x, y) + x, "(p[i] ? x[i] : x[i + 1]) + x[i]"),
    # casts, as ir.loop.interpreter.cast_scalar
    (Cast(x, DType.f64), "(double)x[i]"),
    (Cast(d, DType.f32), "(float)d[i]"),
    (Cast(x, DType.bf16), "kiln_round_bf16(x[i])"),
    (Cast(d, DType.bf16), "kiln_f64_to_bf16(d[i])"),  # rounded once
    (Cast(x, DType.f16), "kiln_round_f16(x[i])"),
    (Cast(d, DType.f16), "kiln_f64_to_f16(d[i])"),
    (Cast(b, DType.f16), "kiln_bf16_to_f16(kiln_load(b[i]))"),
    (hf, "kiln_load(h[i])"),
    (Cast(x, DType.i32), "kiln_to_i32(x[i])"),
    (Cast(d, DType.i64), "kiln_to_i64(d[i])"),
    (Cast(b, DType.u8), "kiln_to_u8(kiln_load(b[i]))"),
    (Cast(x + y, DType.i8), "kiln_to_i8(x[i] + x[i + 1])"),
    (Cast(n, DType.f32), "(float)n[i]"),
    (Cast(n, DType.bf16), "kiln_i64_to_bf16(n[i])"),
    (Cast(n, DType.i32), "(int32_t)n[i]"),
    (Cast(n + 1, DType.i32), "(int32_t)(n[i] + 1)"),
    (Cast(x, DType.bool), "x[i] != 0"),
    (Cast(p, DType.f32), "(float)p[i]"),
    (Cast(p, DType.i64), "(int64_t)p[i]"),
]


@pytest.mark.parametrize(("expr", "expected"), EXPRESSIONS, ids=[text for _, text in EXPRESSIONS])
def test_expression_prints_as(expr, expected):
    kernel = Kernel("k", (F32, F64, F16, BF16, I64, I32, I8, U8, BOOL), ())
    assert KernelPrinter(kernel).expr(expr) == expected


def _printed_body(body, *buffers: Buffer, locals_=()) -> str:
    source = emit_kernel(Kernel("k", buffers, tuple(body), tuple(locals_)))
    return source[source.index(") {\n", source.index("__launch_bounds__")) + 4 :]


def test_statements_print_as_c():
    j, acc = Var("j"), Var("acc", DType.f32)
    shared = Buffer("tile", DType.f32, (4, 8), Scope.SHARED)
    local = Buffer("row", DType.bf16, (8,), Scope.LOCAL)
    block, thread = Var("block"), Var("thread")
    body = [
        For(block, 2, (
            For(thread, 64, (
                Assign(acc, Const(0.0, DType.f32)),
                For(j, 8, (Assign(acc, Ref(acc) + Load(F32, Ref(j))),), LoopKind.UNROLLED),
                Store(shared, Ref(thread) % 32, Ref(acc)),
                Barrier(),
                If(Ref(thread).eq(Const(0, DType.i64)), (Store(local, Ref(block), Ref(acc).cast(DType.bf16)),),
                   (Store(BF16, Ref(thread) % 8, Load(local, Const(0, DType.i64))),)),
            ), LoopKind.THREAD_X),
        ), LoopKind.BLOCK_X),
        For(j, 3, (Store(F32, Ref(j), Const(1.0, DType.f32)),)),
    ]  # fmt: skip
    assert (
        _printed_body(body, F32, BF16, locals_=(shared, local))
        == """\
  __shared__ float tile[32];
  __nv_bfloat16 row[8];
  // scalars (accumulators, positions)
  float acc;
  {  // block.x: block in 0..2
    const int64_t block = blockIdx.x;
    {  // thread.x: thread in 0..64
      const int64_t thread = threadIdx.x;
      acc = 0.0f;
      #pragma unroll
      for (int64_t j = 0; j < 8; ++j) {
        acc = acc + x[j];
      }
      tile[thread % 32] = acc;
      __syncthreads();
      if (thread == 0) {
        row[block] = kiln_store_bf16(kiln_round_bf16(acc));
      } else {
        b[thread % 8] = kiln_store_bf16(kiln_load(row[0]));
      }
    }
  }
  #pragma unroll 1
  for (int64_t j = 0; j < 3; ++j) {
    x[j] = 1.0f;
  }
}
"""
    )


def test_a_kernel_starts_with_its_graph_and_kernel_ir_and_takes_typed_restrict_parameters():
    source, target = Buffer("in_x", DType.f16, (100,)), Buffer("out0", DType.f16, (100,))
    i = Var("i")
    copy = For(i, 100, (Store(target, Ref(i), Load(source, Ref(i))),), LoopKind.PARALLEL)
    kernel = Kernel("fused_copy", (source, target), (copy,), source="graph @copy(...) {\n}\n", outputs=(1,))
    text = emit_kernel(gpu_schedule(kernel, threads_per_block=64)[0])
    assert text.startswith("// Kiln kernel fused_copy: grid (2, 1, 1), block (64, 1, 1)\n// from:\n//   graph @copy")
    assert "// kernel IR:\n//   kernel fused_copy(in in_x: f16[100], out out0: f16[100]) {\n" in text
    assert '#include "prelude.h"\n' in text
    assert (
        'extern "C" __global__ void __launch_bounds__(64, 1) fused_copy(\n'
        "    const __half* __restrict__ in_x,\n    __half* __restrict__ out0) {\n"
    ) in text
    assert "      i = block * 64 + thread;\n      if (i < 100) {\n" in text


def test_names_are_unique_and_clear_of_c_keywords():
    first, second, keyword = Var("i"), Var("i"), Var("float", DType.f32)
    buffer = Buffer("k", DType.f32, (4,))  # the kernel's own name
    body = [For(first, 2, (For(second, 2, (Store(buffer, Ref(first) * 2 + Ref(second), Const(0.0, DType.f32)),)),)),
            Assign(keyword, Const(1.0, DType.f32))]  # fmt: skip
    text = _printed_body(body, buffer)
    assert "k_2[i * 2 + i_2] = 0.0f;" in text
    assert "float_2 = 1.0f;" in text


def test_an_unscheduled_parallel_loop_is_refused():
    i = Var("i")
    kernel = Kernel("k", (F32,), (For(i, 8, (Store(F32, Ref(i), Const(0.0, DType.f32)),), LoopKind.PARALLEL),))
    with pytest.raises(CudaCodegenError, match="kernel k: loop i is parallel; schedule the kernel for the GPU first"):
        emit_kernel(kernel)


def test_an_unknown_intrinsic_is_refused():
    kernel = Kernel("k", (F32,), (Store(F32, Const(0, DType.i64), Call("shfl", (x,), DType.f32)),))
    with pytest.raises(CudaCodegenError, match="no CUDA intrinsic shfl<f32>"):
        emit_kernel(kernel)
