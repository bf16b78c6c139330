"""The C side of the CUDA printer (`backends.cuda.codegen`): C types per dtype, operators with
their precedence, math and intrinsic names, loop pragmas, and the names no identifier may take.
Tables only; the printer reads them."""

from __future__ import annotations

import re

from ir.dtype import DType
from ir.loop.nodes import LoopKind

STORAGE_TYPES: dict[DType, str] = {
    DType.f64: "double", DType.f32: "float", DType.f16: "__half", DType.bf16: "__nv_bfloat16",
    DType.i64: "int64_t", DType.i32: "int32_t", DType.i8: "int8_t", DType.u8: "uint8_t", DType.bool: "bool",
}  # fmt: skip
"""The C type of a buffer element: bf16 and f16 as their 16-bit CUDA types, bool one byte."""
REGISTER_TYPES: dict[DType, str] = {**STORAGE_TYPES, DType.f16: "float", DType.bf16: "float"}
"""The C type of a scalar of each dtype: f16 and bf16 compute in float, rounded per operation."""

LOW_PRECISION_ROUND = {DType.f16: "kiln_round_f16", DType.bf16: "kiln_round_bf16"}
SMALL_INTEGERS = frozenset({DType.i8, DType.u8})
"""C promotes these to int before arithmetic: results are cast back so that they wrap."""

# C operator precedence (higher binds tighter); every printed expression carries its own.
ATOM, UNARY, MULTIPLICATIVE, ADDITIVE, RELATIONAL, EQUALITY = 16, 15, 13, 12, 10, 9
BITWISE_AND, BITWISE_XOR, BITWISE_OR, LOGICAL_AND, LOGICAL_OR, CONDITIONAL = 8, 7, 6, 5, 4, 3

INFIX: dict[str, tuple[str, int]] = {
    "add": ("+", ADDITIVE), "sub": ("-", ADDITIVE), "mul": ("*", MULTIPLICATIVE), "div": ("/", MULTIPLICATIVE),
    "lt": ("<", RELATIONAL), "le": ("<=", RELATIONAL), "gt": (">", RELATIONAL), "ge": (">=", RELATIONAL),
    "eq": ("==", EQUALITY), "ne": ("!=", EQUALITY),
}  # fmt: skip
LOGICAL: dict[str, tuple[str, int]] = {
    "and": ("&&", LOGICAL_AND),
    "or": ("||", LOGICAL_OR),
    "xor": ("!=", EQUALITY),
}
"""Logical ops on bool; on integers they are bitwise (`BITWISE`)."""
BITWISE: dict[str, tuple[str, int]] = {
    "and": ("&", BITWISE_AND),
    "or": ("|", BITWISE_OR),
    "xor": ("^", BITWISE_XOR),
}

SAME_NAMED = ("exp", "log", "sqrt", "tanh", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh",
               "acosh", "atanh", "floor", "ceil")  # fmt: skip
MATH = {name: name for name in SAME_NAMED} | {"round": "rint", "abs": "fabs"}
"""Float functions by their double name (`rint` rounds half to even); float adds an `f`."""
EXACT_MATH = frozenset({"floor", "ceil", "round", "abs"})
"""Results representable in the argument's format: no rounding to f16/bf16 after them."""
CALLS = {"fma": "fma"}
"""Target intrinsics (`Call` names) on floats and the C function each becomes (float adds an `f`)."""
INTEGER_CALLS = {"dot4_u8s8": "kiln_dp4a"}
"""i32 intrinsics, printed as calls of the prelude's helpers (dot4_u8s8: one dp4a on the device)."""
SHUFFLES = {"shfl_xor": "kiln_shfl_xor", "shfl_down": "kiln_shfl_down", "shfl_idx": "kiln_shfl_idx"}
"""Warp shuffles (`ir.loop.nodes.WARP_SHUFFLES`) and the prelude function each becomes."""
MMA = {"mma_m16n8k16_f16": ("kiln_mma_m16n8k16_f16", DType.f16),
       "mma_m16n8k16_bf16": ("kiln_mma_m16n8k16_bf16", DType.bf16)}  # fmt: skip
"""Tensor-core `Call`s: the prelude function each becomes and the dtype of its A and B operands."""
MMA_INT8 = {"mma_m16n8k32_s8s8": "kiln_mma_s8_s8s8", "mma_m16n8k32_u8s8": "kiln_mma_s8_u8s8"}
"""The int8 tensor-core `Call`s (`ir.loop.lockstep_int8`; all operands i32 words) and their prelude function."""
MMA_TF32 = {"mma_m16n8k8_tf32": "kiln_mma_m16n8k8_tf32"}
"""The TF32 tensor-core `Call` (`ir.loop.lockstep_tf32`: 4 A, 2 B, 4 C in f32, D's index) and its prelude function."""
TF32_ROUND = {"tf32_round": "kiln_tf32_round"}
"""f32 -> TF32 as an f32 (cvt.rna.tf32.f32), the MMA's operands' rounding, and its prelude function."""
SHUFFLED_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16, DType.i64, DType.i32})
"""What a shuffle carries: f16 and bf16 as their float registers."""

GPU_INDICES = {
    LoopKind.BLOCK_X: "blockIdx.x", LoopKind.BLOCK_Y: "blockIdx.y", LoopKind.BLOCK_Z: "blockIdx.z",
    LoopKind.THREAD_X: "threadIdx.x", LoopKind.THREAD_Y: "threadIdx.y", LoopKind.THREAD_Z: "threadIdx.z",
}  # fmt: skip
UNROLL = {
    LoopKind.SERIAL: "#pragma unroll 1",
    LoopKind.VECTORIZED: "#pragma unroll 1",
    LoopKind.UNROLLED: "#pragma unroll",
}
"""Loops the schedule runs on one thread. It decides what is unrolled: left to itself, NVVM
unrolls the naive nests of whole kernels on one thread for seconds of compile time."""

RESERVED = frozenset((
    "auto", "bool", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
    "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return", "short",
    "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile",
    "while", "class", "delete", "new", "operator", "private", "protected", "public", "template", "this", "throw",
    "try", "namespace", "using", "true", "false", "blockIdx", "threadIdx", "blockDim", "gridDim", "warpSize",
    "half"
))  # fmt: skip
"""C and C++ keywords and CUDA's built-in names: no variable or buffer may take them."""
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
