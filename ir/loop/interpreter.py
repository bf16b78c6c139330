"""The kernel-IR interpreter: runs a `Kernel` on numpy arrays, one scalar at a time.

It defines what the kernel IR means (see `ir.loop.nodes`) and checks lowering without any
code generator: every load and store is bounds-checked, every variable must be assigned before
it is read. Loops run in order whatever their annotation, so a schedule whose iterations are
not independent still gets serial results here; GPU schedules (shared memory, barriers, warp
shuffles) run in `ir.loop.lockstep`, which shares this module's expression walker (`Evaluator`)
and its semantics (`unary`, `binary`, `cast_values`, written once on numpy arrays: a scalar is
the 0-d case). It is slow (Python per element): tests use small shapes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from ir.dtype import DType
from ir.errors import InterpreterError
from ir.loop.nodes import (
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Load,
    Ref,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)


def run_kernel(kernel: Kernel, arrays: Sequence[np.ndarray]) -> None:
    """Run `kernel` with `arrays` as its parameters (in order); outputs are written in place."""
    memory = bind_params(kernel, arrays)
    for buffer in kernel.locals:
        memory[buffer] = np.zeros(buffer.size, buffer.dtype.numpy)
    _Machine(kernel, memory).run(kernel.body)


def bind_params(kernel: Kernel, arrays: Sequence[np.ndarray]) -> dict[Buffer, np.ndarray]:
    """The kernel's parameters bound to `arrays` (flat views: stores reach the caller's arrays),
    after checking their number, sizes and dtypes."""
    if len(arrays) != len(kernel.params):
        raise InterpreterError(f"kernel {kernel.name} takes {len(kernel.params)} buffers, got {len(arrays)}")
    memory: dict[Buffer, np.ndarray] = {}
    for buffer, array in zip(kernel.params, arrays):
        if array.size != buffer.size or array.dtype != buffer.dtype.numpy:
            raise InterpreterError(
                f"kernel {kernel.name}: {buffer.name} expects {buffer.dtype}[{buffer.size}], "
                f"got {array.dtype}[{array.size}]"
            )
        memory[buffer] = array.reshape(-1)
    return memory


class Evaluator:
    """The one walker over expressions; a machine supplies what depends on how it runs threads:
    variables (`ref`), memory (`load`), `select` (which side is evaluated) and intrinsics (`call`)."""

    kernel: Kernel

    def eval(self, expr: Expr):
        match expr:
            case Const(value, dtype):
                return dtype.numpy.type(value)
            case Ref(var):
                return self.ref(var)
            case Load(buffer, index):
                return self.load(buffer, index)
            case Unary(op, x):
                return unary(op, self.eval(x), x.dtype)
            case Binary(op, a, b):
                return binary(op, self.eval(a), self.eval(b), a.dtype)
            case Select(condition, a, b):
                return self.select(condition, a, b)
            case Cast(x, dtype):
                return cast_values(self.eval(x), dtype)
            case Call():
                return self.call(expr)
        raise self.fail(f"unknown expression {expr!r}")

    def fail(self, message: str) -> InterpreterError:
        return InterpreterError(f"kernel {self.kernel.name}: {message}")

    def ref(self, var: Var):
        raise NotImplementedError

    def load(self, buffer: Buffer, index: Expr):
        raise NotImplementedError

    def select(self, condition: Expr, a: Expr, b: Expr):
        raise NotImplementedError

    def call(self, expr: Call):
        if expr.name == "fma" and expr.dtype in (DType.f32, DType.f16, DType.bf16) and len(expr.args) == 3:
            return fma(*(self.eval(arg) for arg in expr.args), expr.dtype)
        if expr.name == "dot4_u8s8" and expr.dtype == DType.i32 and all(a.dtype == DType.i32 for a in expr.args):
            return dot4_u8s8(*(self.eval(arg) for arg in expr.args))
        raise self.fail(f"the interpreter has no intrinsic {expr.name}<{expr.dtype}>")


class _Machine(Evaluator):
    def __init__(self, kernel: Kernel, memory: dict[Buffer, np.ndarray]) -> None:
        self.kernel = kernel
        self.memory = memory
        self.env: dict[Var, np.generic] = {}

    def run(self, body: Sequence[Stmt]) -> None:
        for stmt in body:
            match stmt:
                case Store(buffer, index, value):
                    self.memory[buffer][self.index(buffer, index)] = self.eval(value)
                case Assign(var, value):
                    self.env[var] = self.eval(value)
                case For(var, extent, loop_body, _):
                    for i in range(extent):
                        self.env[var] = np.int64(i)
                        self.run(loop_body)
                case If(condition, then, otherwise):
                    self.run(then if self.eval(condition) else otherwise)
                case Barrier():
                    pass  # one thread at a time: every barrier is already reached
                case _:
                    raise self.fail(f"unknown statement {stmt!r}")

    def index(self, buffer: Buffer, index: Expr) -> int:
        position = int(self.eval(index))
        if not 0 <= position < buffer.size:
            raise self.fail(f"index {position} out of bounds of {buffer.name}[{buffer.size}]")
        return position

    def ref(self, var: Var) -> np.generic:
        if var not in self.env:
            raise self.fail(f"{var.name} is read before it is assigned")
        return self.env[var]

    def load(self, buffer: Buffer, index: Expr) -> np.generic:
        return self.memory[buffer][self.index(buffer, index)]

    def select(self, condition: Expr, a: Expr, b: Expr) -> np.generic:
        return self.eval(a) if self.eval(condition) else self.eval(b)


# -- semantics: numpy arrays of any shape (a 0-d array or a numpy scalar is one element) -----


def _like(values, dtype: DType):
    """`values` as `dtype`: an array, or a numpy scalar where they are 0-d."""
    return np.asarray(values).astype(dtype.numpy, copy=False)[()]


def cast_values(value, dtype: DType):
    """`value` converted to `dtype`: C's conversions, with saturation where C is undefined."""
    value = np.asarray(value)
    if dtype == DType.bool:
        return (value != 0)[()]
    if dtype.is_integer and DType.from_numpy(value.dtype).is_float:
        # Truncate towards zero; where C leaves it undefined (nan, out of range), saturate as
        # LLVM's fptosi.sat does: nan -> 0, beyond the range -> its nearest end.
        info = np.iinfo(dtype.numpy)
        low, high = float(info.min), float(info.max) + 1  # high is exact: a power of two
        with np.errstate(all="ignore"):
            whole = np.trunc(value.astype(np.float64))
            inside = (whole >= low) & (whole < high)  # false on nan
            result = np.where(inside, whole, 0).astype(dtype.numpy)
            result = np.where(whole >= high, info.max, np.where(whole < low, info.min, result))
        return _like(result, dtype)
    with np.errstate(all="ignore"):
        return _like(value, dtype)


cast_scalar = cast_values
"""The former name, for callers that convert one value."""

_MATH = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "floor": np.floor, "ceil": np.ceil,
    "round": np.round, "abs": np.abs, "neg": np.negative, "not": np.logical_not,
}  # fmt: skip
_ERF = np.frompyfunc(lambda v: math.erf(float(v)), 1, 1)  # in f64 (Python's), then rounded


def unary(op: str, x, dtype: DType):
    with np.errstate(all="ignore"):
        if op == "erf":
            return _like(np.asarray(_ERF(x), np.float64), dtype)
        return _like(_MATH[op](x), dtype)


_DIRECT = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge, "eq": operator.eq, "ne": operator.ne, "and": np.logical_and,
    "or": np.logical_or, "xor": operator.ne,
}  # fmt: skip
"""Operations numpy computes as the kernel IR does, on operands of one dtype (numpy keeps it; integers
wrap). Comparisons give bool; `and`/`or`/`xor` take bool."""


def binary(op: str, a, b, dtype: DType):
    with np.errstate(all="ignore"):
        direct = _DIRECT.get(op)
        if direct is not None:
            return direct(a, b)
        match op:
            case "div" if dtype.is_float:
                return a / b
            case "div" | "mod" if not dtype.is_float:  # C: truncating; the remainder has the dividend's sign
                zero = np.equal(b, 0)
                divisor = np.where(zero, 1, b).astype(dtype.numpy)  # x / 0 and x % 0 are 0 (lowering guards them)
                remainder = np.fmod(a, divisor)
                # a - remainder is a multiple of the divisor: floor division is exact; MIN / -1 wraps to MIN
                result = remainder if op == "mod" else np.floor_divide(np.subtract(a, remainder), divisor)
                return _like(np.where(zero, 0, result), dtype)
            case "mod":
                return np.fmod(a, b)
            case "max":  # nan wins, a tie keeps the first operand, as in the graph IR
                return np.where(np.not_equal(a, a) | np.greater_equal(a, b), a, b)[()]
            case "min":
                return np.where(np.not_equal(a, a) | np.less_equal(a, b), a, b)[()]
            case "pow":
                return np.power(a, b)
    raise InterpreterError(f"unknown binary op {op!r}")


def fma(a, b, c, dtype: DType):
    """a * b + c rounded once to `dtype` (f32, or f16/bf16 computed as f32 and rounded, as the
    printers do): the product of two f32 is exact in f64, their sum with c is made exact as
    s + e (TwoSum), and s is rounded to odd where e is not zero, so the one rounding to f32
    that follows is the correct one."""
    wide = [np.asarray(x).astype(np.float64) for x in (a, b, c)]
    with np.errstate(all="ignore"):
        product = wide[0] * wide[1]
        total = product + wide[2]
        part = total - product
        error = (product - (total - part)) + (wide[2] - part)
        bits = total.view(np.int64)
        even = (bits & 1) == 0
        nudge = np.isfinite(total) & (error != 0) & even
        total = np.where(nudge, np.nextafter(total, np.where(error > 0, np.inf, -np.inf)), total)
        single = total.astype(np.float32)
    return _like(single, dtype)


def dot4_u8s8(acc, a, b):
    """acc + sum over the 4 bytes q of u8(byte q of a) * s8(byte q of b), wrapping in i32 (what
    `vpdpbusd` does per lane). The products and their sum are exact in i64; the one wrap is at the end."""
    total = np.asarray(acc).astype(np.int64)
    a_bits, b_bits = (np.asarray(x).astype(np.int32).view(np.uint32).astype(np.int64) for x in (a, b))
    for q in range(4):
        unsigned = (a_bits >> (8 * q)) & 0xFF
        signed = ((b_bits >> (8 * q)) & 0xFF) ^ 0x80
        total = total + unsigned * (signed - 0x80)
    return _like(total.astype(np.uint64).astype(np.uint32).view(np.int32), DType.i32)
