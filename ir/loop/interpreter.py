"""The kernel-IR interpreter: runs a `Kernel` on numpy arrays, one scalar at a time.

It defines what the kernel IR means (see `ir.loop.nodes`) and checks lowering without any
code generator: every load and store is bounds-checked, every variable must be assigned before
it is read. Loops run in order whatever their annotation, so a schedule whose iterations are
not independent still gets serial results here; GPU schedules need the lockstep mode that the
CUDA issue adds. It is slow (Python per element): tests use small shapes.
"""

from __future__ import annotations

import math
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
    if len(arrays) != len(kernel.params):
        raise InterpreterError(f"kernel {kernel.name} takes {len(kernel.params)} buffers, got {len(arrays)}")
    memory: dict[Buffer, np.ndarray] = {}
    for buffer, array in zip(kernel.params, arrays):
        if array.size != buffer.size or array.dtype != buffer.dtype.numpy:
            raise InterpreterError(
                f"kernel {kernel.name}: {buffer.name} expects {buffer.dtype}[{buffer.size}], "
                f"got {array.dtype}[{array.size}]"
            )
        memory[buffer] = array.reshape(-1)  # a view: stores reach the caller's array
    for buffer in kernel.locals:
        memory[buffer] = np.zeros(buffer.size, buffer.dtype.numpy)
    _Machine(kernel, memory).run(kernel.body)


class _Machine:
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
                    raise InterpreterError(f"kernel {self.kernel.name}: unknown statement {stmt!r}")

    def index(self, buffer: Buffer, index: Expr) -> int:
        position = int(self.eval(index))
        if not 0 <= position < buffer.size:
            raise InterpreterError(
                f"kernel {self.kernel.name}: index {position} out of bounds of {buffer.name}[{buffer.size}]"
            )
        return position

    def eval(self, expr: Expr) -> np.generic:
        match expr:
            case Const(value, dtype):
                return dtype.numpy.type(value)
            case Ref(var):
                if var not in self.env:
                    raise InterpreterError(f"kernel {self.kernel.name}: {var.name} is read before it is assigned")
                return self.env[var]
            case Load(buffer, index):
                return self.memory[buffer][self.index(buffer, index)]
            case Unary(op, x):
                return _unary(op, self.eval(x), x.dtype)
            case Binary(op, a, b):
                return _binary(op, self.eval(a), self.eval(b), a.dtype)
            case Select(condition, a, b):
                return self.eval(a) if self.eval(condition) else self.eval(b)
            case Cast(x, dtype):
                return cast_scalar(self.eval(x), dtype)
            case Call(name, _, _):
                raise InterpreterError(f"kernel {self.kernel.name}: the interpreter has no intrinsic {name!r}")
        raise InterpreterError(f"kernel {self.kernel.name}: unknown expression {expr!r}")


def cast_scalar(value: np.generic, dtype: DType) -> np.generic:
    if dtype == DType.bool:
        return np.bool_(value != 0)
    if dtype.is_integer and DType.from_numpy(np.asarray(value).dtype).is_float:
        # Truncate towards zero; where C leaves it undefined (nan, out of range), saturate as
        # LLVM's fptosi.sat does: nan -> 0, beyond the range -> its nearest end.
        number = float(value)
        if math.isnan(number):
            return dtype.numpy.type(0)
        info = np.iinfo(dtype.numpy)
        return dtype.numpy.type(min(max(math.trunc(number), info.min), info.max) if math.isfinite(number)
                                else (info.max if number > 0 else info.min))  # fmt: skip
    with np.errstate(all="ignore"):
        return np.asarray(value).astype(dtype.numpy)[()]


_MATH = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "floor": np.floor, "ceil": np.ceil,
    "round": np.round, "abs": np.abs, "neg": np.negative, "not": np.logical_not,
}  # fmt: skip


def _unary(op: str, x: np.generic, dtype: DType) -> np.generic:
    with np.errstate(all="ignore"):
        if op == "erf":
            return dtype.numpy.type(math.erf(float(x)))
        return dtype.numpy.type(_MATH[op](x))


def _binary(op: str, a: np.generic, b: np.generic, dtype: DType) -> np.generic:
    with np.errstate(all="ignore"):
        match op:
            case "add":
                return a + b
            case "sub":
                return a - b
            case "mul":
                return a * b
            case "div" if dtype.is_float:
                return a / b
            case "div":  # C: truncate towards zero; x / 0 is 0 (undefined in C; lowering guards it)
                if b == 0:
                    return dtype.numpy.type(0)
                quotient = abs(int(a)) // abs(int(b))
                return cast_scalar(np.int64(quotient if (a < 0) == (b < 0) else -quotient), dtype)
            case "mod":  # C: the dividend's sign
                return dtype.numpy.type(0) if b == 0 and not dtype.is_float else np.fmod(a, b)
            case "max":  # nan wins, as in the graph IR
                return a if np.isnan(a) or a >= b else b
            case "min":
                return a if np.isnan(a) or a <= b else b
            case "pow":
                return np.power(a, b)
            case "lt":
                return np.bool_(a < b)
            case "le":
                return np.bool_(a <= b)
            case "gt":
                return np.bool_(a > b)
            case "ge":
                return np.bool_(a >= b)
            case "eq":
                return np.bool_(a == b)
            case "ne":
                return np.bool_(a != b)
            case "and":
                return np.bool_(a and b)
            case "or":
                return np.bool_(a or b)
            case "xor":
                return np.bool_(a != b)
    raise InterpreterError(f"unknown binary op {op!r}")
