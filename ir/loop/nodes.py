"""The kernel IR: a small loop language that fused groups lower to and that every backend
prints (LLVM IR for the CPU, CUDA C for GPUs).

A `Kernel` has buffer parameters and a body of statements: `For` loops annotated with how they
run (serial, parallel over threads, vectorized, unrolled, bound to a GPU block or thread index),
`Store`s into buffers, scalar `Assign`ments to local variables (accumulators), `If`s, and
`Barrier`s. Expressions are scalar: constants, variables, `Load`s from buffers at a flat
element index, unary and binary arithmetic, `Select`, `Cast`, and target `Call`s. Everything is
a frozen dataclass, so kernels hash, compare and print deterministically; `Var` and `Buffer`
compare by identity, like values in the graph IR.

Semantics shared by every backend and the interpreter (`ir.loop.interpreter`):
- arithmetic happens in the expression's dtype; lowering casts low-precision loads to f32 and
  results back (the backends never widen or narrow on their own);
- integer `div` truncates towards zero and `mod` takes the dividend's sign (C); index
  arithmetic is i64;
- `max`/`min` propagate nan and keep their first operand on a tie (so the sign of a zero
  depends on the operand order; lowering orders them as numpy does);
- comparisons give bool; `and`/`or`/`xor`/`not` take bool;
- a `For` runs `var` over 0, 1, ..., extent - 1; iterations of a parallel, vectorized or GPU
  loop may run in any order or at once, which lowering guarantees is safe;
- a `Load` or `Store` index is the flat, row-major element offset into the buffer.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ir.dtype import DType

# -- buffers and variables -------------------------------------------------------------------


class Scope(enum.Enum):
    GLOBAL = "global"
    """A kernel parameter: memory the runtime owns (inputs, outputs, constants, the arena)."""
    LOCAL = "local"
    """Private to one thread of execution: registers or stack (accumulator tiles)."""
    SHARED = "shared"
    """Shared by the threads of one GPU block."""


@dataclass(frozen=True, eq=False)
class Buffer:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    scope: Scope = Scope.GLOBAL

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Buffer({self.name}: {self.dtype}[{','.join(map(str, self.shape))}] {self.scope.value})"


@dataclass(frozen=True, eq=False)
class Var:
    """A scalar variable: a loop index or a local (an accumulator). Compared by identity."""

    name: str
    dtype: DType = DType.i64

    def __repr__(self) -> str:
        return f"Var({self.name}: {self.dtype})"


# -- expressions -------------------------------------------------------------------------------

UNARY_OPS = frozenset(
    {"neg", "abs", "exp", "log", "sqrt", "tanh", "erf", "sin", "cos", "tan", "asin", "acos", "atan",
     "sinh", "cosh", "asinh", "acosh", "atanh", "floor", "ceil", "round", "not"}
)  # fmt: skip
"""Unary operations; `round` is half to even, `not` takes bool."""

ARITHMETIC_OPS = frozenset({"add", "sub", "mul", "div", "mod", "max", "min", "pow"})
COMPARISON_OPS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
LOGICAL_OPS = frozenset({"and", "or", "xor"})
BINARY_OPS = ARITHMETIC_OPS | COMPARISON_OPS | LOGICAL_OPS


class Expr:
    """Base of scalar expressions; subclasses are frozen dataclasses with a `dtype`.

    Arithmetic operators build expressions (`i * 4 + j`); a Python number on either side
    becomes a constant of the other side's dtype. `==` stays structural equality: compare
    values with `.eq()`/`.lt()`/... ."""

    __slots__ = ()
    dtype: DType

    def _binary(self, op: str, other: Expr | int | float, reverse: bool = False) -> Binary:
        other = other if isinstance(other, Expr) else Const(other, self.dtype)
        return Binary(op, other, self) if reverse else Binary(op, self, other)

    def __add__(self, other):
        return self._binary("add", other)

    def __radd__(self, other):
        return self._binary("add", other, reverse=True)

    def __sub__(self, other):
        return self._binary("sub", other)

    def __rsub__(self, other):
        return self._binary("sub", other, reverse=True)

    def __mul__(self, other):
        return self._binary("mul", other)

    def __rmul__(self, other):
        return self._binary("mul", other, reverse=True)

    def __truediv__(self, other):
        return self._binary("div", other)

    def __floordiv__(self, other):  # index arithmetic: indices are non-negative, so C's division floors
        return self._binary("div", other)

    def __mod__(self, other):
        return self._binary("mod", other)

    def __neg__(self):
        return Unary("neg", self)

    def lt(self, other):
        return self._binary("lt", other)

    def le(self, other):
        return self._binary("le", other)

    def gt(self, other):
        return self._binary("gt", other)

    def ge(self, other):
        return self._binary("ge", other)

    def eq(self, other):
        return self._binary("eq", other)

    def ne(self, other):
        return self._binary("ne", other)

    def max(self, other):
        return self._binary("max", other)

    def min(self, other):
        return self._binary("min", other)

    def cast(self, dtype: DType) -> Expr:
        return self if dtype == self.dtype else Cast(self, dtype)


@dataclass(frozen=True)
class Const(Expr):
    value: int | float | bool
    dtype: DType


@dataclass(frozen=True)
class Ref(Expr):
    """The current value of a variable."""

    var: Var

    @property
    def dtype(self) -> DType:
        return self.var.dtype


@dataclass(frozen=True)
class Load(Expr):
    buffer: Buffer
    index: Expr

    @property
    def dtype(self) -> DType:
        return self.buffer.dtype


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    x: Expr

    def __post_init__(self) -> None:
        if self.op not in UNARY_OPS:
            raise ValueError(f"unknown unary op {self.op!r}")

    @property
    def dtype(self) -> DType:
        return self.x.dtype


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr

    def __post_init__(self) -> None:
        if self.op not in BINARY_OPS:
            raise ValueError(f"unknown binary op {self.op!r}")
        if self.a.dtype != self.b.dtype:
            raise ValueError(f"{self.op}: operands differ in dtype ({self.a.dtype} vs {self.b.dtype}); cast first")

    @property
    def dtype(self) -> DType:
        return DType.bool if self.op in COMPARISON_OPS else self.a.dtype


@dataclass(frozen=True)
class Select(Expr):
    condition: Expr
    a: Expr
    b: Expr

    def __post_init__(self) -> None:
        if self.condition.dtype != DType.bool or self.a.dtype != self.b.dtype:
            raise ValueError(f"select needs a bool condition and equal branch dtypes, got "
                             f"{self.condition.dtype}, {self.a.dtype}, {self.b.dtype}")  # fmt: skip

    @property
    def dtype(self) -> DType:
        return self.a.dtype


@dataclass(frozen=True)
class Cast(Expr):
    x: Expr
    dtype: DType


WARP_SIZE = 32
"""Threads per warp: lane = (linear thread index in the block) % 32."""
WARP_SHUFFLES = frozenset({"shfl_xor", "shfl_down", "shfl_idx"})
"""`Call`s that exchange a value among the 32 lanes of a warp (see `Call`)."""


@dataclass(frozen=True)
class Call(Expr):
    """A target intrinsic; backends map names to their own. The names:

    - `fma(a, b, c)`: a * b + c rounded once (floats);
    - `dot4_u8s8(acc, a, b)` (all i32): acc + sum over the bytes q = 0..3 of u8(byte q of a) *
      s8(byte q of b), wrapping in i32 (byte 0 is the least significant). The int8 GEMM's step: on
      AVX-512 VNNI sixteen lanes of it are one `vpdpbusd`; elsewhere it is plain i32 arithmetic;
    - `shfl_xor(value, mask)`: lane l receives `value` from lane l ^ mask of its warp (its own
      value where that lane would be past 31);
    - `shfl_down(value, delta)`: lane l receives `value` from lane l + delta (its own past 31);
    - `shfl_idx(value, lane)`: every lane receives `value` from lane `lane` % 32.
    - `mma_m16n8k16_f16(a0..a7, b0..b3, c0..c3, index)` and `mma_m16n8k16_bf16(...)`: the warp's
      tensor-core D = A @ B + C (A 16 x 16, B 16 x 8, C and D 16 x 8 in f32), each lane holding
      its fragments by the PTX ISA layout (`ir.loop.lockstep.A_FRAGMENT`, ...): a and b are f16
      (bf16), c f32, `index` an i32 constant 0..3; the result (f32) is element `index` of the
      lane's D fragment. Four calls with equal operands and indices 0..3 are one product.
    - `mma_m16n8k32_s8s8(a0..a3, b0, b1, c0..c3, index)` and `mma_m16n8k32_u8s8(...)`: the int8
      tensor-core D = A @ B + C (A 16 x 32 of s8 or u8, B 32 x 8 of s8, C and D i32, wrapping),
      every operand an i32 word of four bytes along K by the PTX ISA layout
      (`ir.loop.lockstep_int8`); the result (i32) is element `index` of the lane's D fragment.
    - `cp_async(src, elements, valid)`: only as the value of a `Store` into a SHARED buffer; `src`
      is a `Load` of a GLOBAL buffer of the same dtype, `elements` an i32 constant (4, 8 or 16
      bytes' worth), `valid` a bool. Copies that many consecutive elements from `src`'s index to
      the store's (both multiples of `elements`) asynchronously, zeros where `valid` is false
      (reading nothing); they land at a later `cp_async_wait` that covers their group;
    - `cp_async_commit()` and `cp_async_wait(n)` (i32, value 0; the kernel IR has no call statement,
      so they are `Assign`ed to a scratch variable): close this thread's group of copies issued since
      the last commit; wait until at most `n` (a constant) of its committed groups are in flight.
      The copies are then visible to their own thread; a `Barrier` shows them to the block;
    - `ldmatrix_x4(row, index)` and `ldmatrix_x4_trans(row, index)` (i32, warp-collective): `row`
      is a `Load` of a SHARED f16/bf16 buffer at the first of 8 elements (16-byte aligned) that this
      lane supplies, row lane % 8 of the 8 x 8 matrix lane // 8; the result is the lane's register
      `index` (a constant 0..3): of matrix `index`, row lane // 4, columns 2 (lane % 4) and
      2 (lane % 4) + 1 (`_trans`: rows 2 (lane % 4), + 1 of column lane // 4), the bits of the first
      in the low 16 bits. Four calls with equal rows and indices 0..3 are one instruction;
    - `mma_m16n8k16_f16x2(a0..a3, b0, b1, c0..c3, index)` and `mma_m16n8k16_bf16x2(...)`: the MMA
      above with A and B as such registers (i32, two elements each, a0 = A elements 0 and 1, ...).
    - `tf32_round(x)` (f32): x rounded to TF32 (10 mantissa bits, ties away from zero), and
      `mma_m16n8k8_tf32(a0..a3, b0, b1, c0..c3, index)` (f32, warp-collective): the tensor-core
      D = A @ B + C on TF32 values (A 16 x 8, B 8 x 8; `ir.loop.lockstep_tf32` has the layout);
    - `vector_load(src, elements, lane)`: `src` a `Load` of a GLOBAL buffer at the first of
      `elements` (an i32 constant; 4, 8 or 16 bytes' worth) consecutive elements, its index a
      multiple of `elements`; the result (`src`'s dtype) is element `lane` (a constant) of them.
      `elements` `Assign`s with equal `src` and lanes 0.. in a row are one vector access;
    - `vector_store(x0, ..., xn-1)`: only as the value of a `Store` into a GLOBAL buffer of its
      dtype: writes the n elements (4, 8 or 16 bytes) at the store's index, a multiple of n
      (`ir.loop.lockstep_vector`; `backends.cuda.templates_gpu_vector` uses both);
    The shuffles' second operand is i32 and the result has `value`'s dtype; every lane of a warp
    must execute a shuffle or an MMA together (none may be masked off by an `If`), and the block
    holds whole warps."""

    name: str
    args: tuple[Expr, ...]
    dtype: DType


# -- statements --------------------------------------------------------------------------------


class LoopKind(enum.Enum):
    SERIAL = "serial"
    PARALLEL = "parallel"
    """Iterations spread over CPU threads."""
    VECTORIZED = "vectorized"
    """Iterations map to SIMD lanes."""
    UNROLLED = "unrolled"
    BLOCK_X = "block.x"
    BLOCK_Y = "block.y"
    BLOCK_Z = "block.z"
    THREAD_X = "thread.x"
    THREAD_Y = "thread.y"
    THREAD_Z = "thread.z"

    @property
    def is_gpu(self) -> bool:
        return self.value.startswith(("block", "thread"))


class Stmt:
    __slots__ = ()


@dataclass(frozen=True)
class Store(Stmt):
    buffer: Buffer
    index: Expr
    value: Expr

    def __post_init__(self) -> None:
        if self.value.dtype != self.buffer.dtype:
            raise ValueError(f"store of {self.value.dtype} into {self.buffer.name} ({self.buffer.dtype}); cast first")


@dataclass(frozen=True)
class Assign(Stmt):
    """`var = value`; the first assignment declares the variable."""

    var: Var
    value: Expr

    def __post_init__(self) -> None:
        if self.value.dtype != self.var.dtype:
            raise ValueError(f"assignment of {self.value.dtype} to {self.var.name} ({self.var.dtype})")


@dataclass(frozen=True)
class For(Stmt):
    var: Var
    extent: int
    body: tuple[Stmt, ...]
    kind: LoopKind = LoopKind.SERIAL


@dataclass(frozen=True)
class If(Stmt):
    condition: Expr
    then: tuple[Stmt, ...]
    otherwise: tuple[Stmt, ...] = ()


@dataclass(frozen=True)
class Barrier(Stmt):
    """All threads of a GPU block wait here (`__syncthreads`)."""


# -- kernels -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Kernel:
    """One kernel: what a `fused` node of the graph becomes."""

    name: str
    params: tuple[Buffer, ...]
    """Global buffers, in the order the runtime passes them: inputs, then outputs."""
    body: tuple[Stmt, ...]
    locals: tuple[Buffer, ...] = ()
    """Local and shared buffers the body uses."""
    source: str = ""
    """The graph IR the kernel came from, for comments in generated code."""
    outputs: tuple[int, ...] = field(default=())
    """Indices into `params` of the buffers the kernel writes."""
