"""The CUDA printer's part for the tile-movement intrinsics of the kernel IR (`ir.loop.nodes.Call`):
`cp_async` (the value of a `Store` into shared memory), `cp_async_commit`, `cp_async_wait`,
`ldmatrix_x4(_trans)`, and the tensor-core MMA on the packed registers ldmatrix gives.
`backends.cuda.codegen` calls these hooks; each prints a call of a `prelude.h` helper (inline PTX
on the device, a host twin for the emulator), never PTX itself.

Four `Assign`s of one ldmatrix (same row, registers 0..3, in a row) print as one helper call that
fills all four, as do the four of one packed MMA (`mma_m16n8k16_f16x2`, `_bf16x2`): the device
does each with one instruction.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from backends.cuda.c_syntax import ATOM
from ir.dtype import DType
from ir.loop.nodes import Assign, Buffer, Call, Const, Expr, For, If, Kernel, Load, Ref, Scope, Stmt, Store, Var

if TYPE_CHECKING:
    from backends.cuda.codegen import KernelPrinter

LDMATRIX = {"ldmatrix_x4": "kiln_ldmatrix_x4", "ldmatrix_x4_trans": "kiln_ldmatrix_x4_trans"}
"""Fragment loads and the prelude helper each becomes (`_at` for a single register)."""
PACKED_MMA = {"mma_m16n8k16_f16x2": "kiln_mma_m16n8k16_f16x2", "mma_m16n8k16_bf16x2": "kiln_mma_m16n8k16_bf16x2"}
"""Tensor-core products on packed registers and the prelude helper each becomes (`_x4`: all of D)."""
REGISTERS = 4


@functools.lru_cache(maxsize=64)
def sixteen_byte_rows(kernel: Kernel) -> frozenset[Buffer]:
    """The shared buffers of `kernel` that cp.async writes or ldmatrix reads: declared 16-byte aligned."""
    found: set[Buffer] = set()
    for stmt in _statements(kernel.body):
        value = stmt.value if isinstance(stmt, Store | Assign) else None
        if isinstance(value, Call) and value.name == "cp_async":
            found.add(stmt.buffer)
        elif isinstance(value, Call) and value.name in LDMATRIX and isinstance(value.args[0], Load):
            found.add(value.args[0].buffer)
    return frozenset(found)


def _statements(body: Sequence[Stmt]) -> Iterator[Stmt]:
    for stmt in body:
        yield stmt
        if isinstance(stmt, For):
            yield from _statements(stmt.body)
        elif isinstance(stmt, If):
            yield from _statements(stmt.then)
            yield from _statements(stmt.otherwise)


def print_async_copy(p: KernelPrinter, stmt: Store) -> bool:
    """Print `stmt` if it is a `cp_async` store (`kiln_cp_async<BYTES>(&dst[i], &src[j], valid)`)."""
    copy = stmt.value
    if not isinstance(copy, Call) or copy.name != "cp_async":
        return False
    src, elements, valid = copy.args
    if (not isinstance(src, Load) or not isinstance(elements, Const) or stmt.buffer.scope is not Scope.SHARED
            or src.buffer.scope is not Scope.GLOBAL or src.buffer.dtype != stmt.buffer.dtype
            or valid.dtype != DType.bool):  # fmt: skip
        raise p.fail(f"cp_async copies a global buffer's elements into a shared one of the same dtype: {stmt!r}")
    size = int(elements.value) * stmt.buffer.dtype.itemsize
    if size not in (4, 8, 16):
        raise p.fail(f"cp_async copies 4, 8 or 16 bytes, not {size}")
    target = f"&{p.name(stmt.buffer)}[{p.expr(stmt.index)}]"
    p.line(f"kiln_cp_async<{size}>({target}, &{p.name(src.buffer)}[{p.expr(src.index)}], {p.expr(valid)});")
    return True


def print_tile_call(p: KernelPrinter, expr: Call) -> tuple[str, int] | None:
    """The C text of a tile-movement call used as an expression, or None for other calls."""
    match expr.name:
        case "cp_async_commit":
            return "kiln_cp_async_commit()", ATOM
        case "cp_async_wait":
            (pending,) = expr.args
            if not isinstance(pending, Const):
                raise p.fail("cp_async_wait takes a constant count of groups left in flight")
            return f"kiln_cp_async_wait<{int(pending.value)}>()", ATOM
        case "cp_async":
            raise p.fail("cp_async is the value of a Store into shared memory, nothing else")
        case name if name in LDMATRIX:
            row, index = _ldmatrix_operands(p, expr)
            return f"{LDMATRIX[name]}_at({_address(p, row)}, {p.expr(index)})", ATOM
        case name if name in PACKED_MMA:
            if [a.dtype for a in expr.args] != [DType.i32] * 6 + [DType.f32] * 4 + [
                DType.i32
            ] or expr.dtype != DType.f32:
                raise p.fail(f"{name} takes 6 i32 registers, 4 f32 and an i32 index, and gives f32")
            return f"{PACKED_MMA[name]}({', '.join(p.expr(a) for a in expr.args)})", ATOM
    return None


def collective_group(statements: Sequence[Stmt], position: int) -> int:
    """How many statements from `position` are the four `Assign`s of one ldmatrix or packed MMA
    (same operands, registers or D elements 0..3 in order, reading none of the variables
    assigned), which print as one call; 0 if they are not."""
    group = statements[position : position + REGISTERS]
    if len(group) < REGISTERS or not all(isinstance(s, Assign) and isinstance(s.value, Call) for s in group):
        return 0
    calls = [s.value for s in group]
    first = calls[0]
    if first.name not in LDMATRIX and first.name not in PACKED_MMA:
        return 0
    if any(c.name != first.name or c.args[:-1] != first.args[:-1] for c in calls):
        return 0
    if [c.args[-1] for c in calls] != [Const(e, DType.i32) for e in range(REGISTERS)]:
        return 0
    assigned = {s.var for s in group}
    return 0 if any(var in assigned for arg in first.args for var in _variables(arg)) else REGISTERS


def print_collective(p: KernelPrinter, group: Sequence[Stmt]) -> None:
    """One call for the group `collective_group` found: the outputs by reference, then the operands."""
    call = group[0].value
    p.expr(call)  # validates the operands
    outputs = ", ".join(p.name(s.var) for s in group)
    if call.name in LDMATRIX:
        row, _ = _ldmatrix_operands(p, call)
        p.line(f"{LDMATRIX[call.name]}({outputs}, {_address(p, row)});")
    else:
        p.line(f"{PACKED_MMA[call.name]}_x4({outputs}, {', '.join(p.expr(a) for a in call.args[:-1])});")


def _ldmatrix_operands(p: KernelPrinter, expr: Call) -> tuple[Load, Expr]:
    row, index = expr.args
    if (not isinstance(row, Load) or row.buffer.scope is not Scope.SHARED
            or row.buffer.dtype not in (DType.f16, DType.bf16) or expr.dtype != DType.i32):  # fmt: skip
        raise p.fail(f"{expr.name} reads a row of a shared f16/bf16 buffer into i32 registers: {expr!r}")
    return row, index


def _address(p: KernelPrinter, load: Load) -> str:
    return f"&{p.name(load.buffer)}[{p.expr(load.index)}]"


def _variables(expr: Expr) -> Iterator[Var]:
    if isinstance(expr, Ref):
        yield expr.var
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if isinstance(value, Expr):
            yield from _variables(value)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, Expr):
                    yield from _variables(item)
