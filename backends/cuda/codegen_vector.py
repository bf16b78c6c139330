"""The CUDA printer's part for the vector accesses of the kernel IR (`ir.loop.nodes.Call`):
`vector_load` and `vector_store` (`backends.cuda.templates_gpu_vector` makes them).
`backends.cuda.codegen` calls these hooks; each prints a call of a `prelude.h` helper (a
`uint32_t`/`uint2`/`uint4` access on the device, an alignment-checked copy on the host).

The n `Assign`s of one vector load (same source, lanes 0..n-1, in a row) print as one call
that fills all n registers: `kiln_load_vector(&x[i], v0, v1, v2, v3);`. A lone lane prints as
`kiln_load_vector_at<n>(&x[i], lane)`; a vector store as `kiln_store_vector(&y[i], a, b, c, d);`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from backends.cuda.c_syntax import ATOM
from ir.dtype import DType
from ir.loop.lockstep_vector import ACCESS_BYTES
from ir.loop.nodes import Assign, Call, Const, Load, Scope, Stmt, Store

if TYPE_CHECKING:
    from backends.cuda.codegen import KernelPrinter


def vector_group(statements: Sequence[Stmt], position: int) -> int:
    """How many statements from `position` are the `Assign`s of one whole vector load (equal
    source and count, lanes 0..n-1 in order), which print as one call; 0 if they are not."""
    first = statements[position]
    if not isinstance(first, Assign) or not isinstance(first.value, Call) or first.value.name != "vector_load":
        return 0
    src, elements, _ = first.value.args
    if not isinstance(elements, Const):
        return 0
    count = int(elements.value)
    group = statements[position : position + count]
    if len(group) < count:
        return 0
    for lane, stmt in enumerate(group):
        if (not isinstance(stmt, Assign) or not isinstance(stmt.value, Call) or stmt.value.name != "vector_load"
                or stmt.value.args != (src, elements, Const(lane, DType.i32))):  # fmt: skip
            return 0
    return count


def print_vector_loads(p: KernelPrinter, group: Sequence[Stmt]) -> None:
    """One call for the group `vector_group` found: the source's address, then the registers."""
    src = _load_operands(p, group[0].value)
    registers = ", ".join(p.name(stmt.var) for stmt in group)
    p.line(f"kiln_load_vector(&{p.name(src.buffer)}[{p.expr(src.index)}], {registers});")


def print_vector_store(p: KernelPrinter, stmt: Store) -> bool:
    """Print `stmt` if it is a vector store (`kiln_store_vector(&y[i], x0, ..., xn-1)`)."""
    vector = stmt.value
    if not isinstance(vector, Call) or vector.name != "vector_store":
        return False
    buffer = stmt.buffer
    if (buffer.scope is not Scope.GLOBAL or any(x.dtype != buffer.dtype for x in vector.args)
            or len(vector.args) * buffer.dtype.itemsize not in ACCESS_BYTES):  # fmt: skip
        raise p.fail(f"vector_store writes 4, 8 or 16 bytes of its elements into a global buffer: {stmt!r}")
    values = ", ".join(p.expr(x) for x in vector.args)
    p.line(f"kiln_store_vector(&{p.name(buffer)}[{p.expr(stmt.index)}], {values});")
    return True


def print_vector_call(p: KernelPrinter, expr: Call) -> tuple[str, int] | None:
    """The C text of a vector call used as an expression (a lone lane), or None for other calls."""
    match expr.name:
        case "vector_load":
            src = _load_operands(p, expr)
            count, lane = (int(a.value) for a in expr.args[1:])
            return f"kiln_load_vector_at<{count}>(&{p.name(src.buffer)}[{p.expr(src.index)}], {lane})", ATOM
        case "vector_store":
            raise p.fail("vector_store is the value of a Store into a global buffer, nothing else")
    return None


def _load_operands(p: KernelPrinter, expr: Call) -> Load:
    src, elements, lane = expr.args
    if (not isinstance(src, Load) or src.buffer.scope is not Scope.GLOBAL or not isinstance(elements, Const)
            or not isinstance(lane, Const) or expr.dtype != src.dtype
            or int(elements.value) * src.dtype.itemsize not in ACCESS_BYTES):  # fmt: skip
        raise p.fail(f"vector_load reads a constant lane of a 4-, 8- or 16-byte vector of a global buffer: {expr!r}")
    return src
