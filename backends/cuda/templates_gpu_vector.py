"""The vector form of the GPU pointwise template (`backends.cuda.templates_gpu`): a thread takes V
consecutive output elements (V = 16 bytes / the widest buffer's element: four f32, eight f16 or
bf16) and moves each contiguous operand and each output with one 4-, 8- or 16-byte access, the
kernel IR's `vector_load` and `vector_store` (`ir.loop.nodes.Call`). `plan_vectors` decides, on
the index expressions themselves, with the analysis of `backends.cuda.gemm_staging` (`linear`,
`multiple_of`): it builds the V elements' expressions at the vector's offset `o` (a multiple of V),
pairs their loads in tree order, and vectorizes only when every load is either

- contiguous: element j reads index + j of the same buffer, and the index is a multiple of V
  (buffers start 16-byte aligned: the runtime's allocations), read unconditionally (not inside a
  `Select`'s branch, where it may be out of bounds); or
- uniform: every element reads the same index (a broadcast scalar, or a row value broadcast along
  a last axis that a vector never crosses): it stays a plain load;

and every output is written at o + j. Anything else (transposes, gathers, a padding, a slice at an
unaligned offset, outputs of other sizes) leaves the one-element template as it was.

The elements are indexed so that the analysis can see through them: when the output's last axis
(of extent N > 1) is a multiple of V a vector never crosses a row, so element j's index is the
vector's with j added on that axis (o % N is a multiple of V), which a row vector broadcast
along the rows reads contiguously; otherwise element j is `unflatten(o + j)`, which only reads
of the output's own layout (offset o + j) pass. The elements past the last whole vector (fewer
than V) are written one at a time by the thread after it (the caller's tail).

Why a `Call` rather than V plain loads that the printer merges: the decision is the schedule's,
recorded in the kernel IR, and the lockstep interpreter then checks what the device requires
(a vector at a multiple of its size, wholly inside its buffer) instead of trusting the printer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from backends.cuda.gemm_staging import linear, multiple_of
from backends.lowering.expr import Unflattened, flat_index, unflatten
from backends.lowering.group import GroupLowering
from ir import DType, Value
from ir.loop import Assign, Call, Const, Expr, Load, Ref, Scope, Select, Stmt, Store, Var
from ir.loop.lockstep_vector import ACCESS_BYTES

WIDEST_BYTES = 16
"""The widest access a thread makes: ld/st.global.v4.b32. Narrower operands of a wider output
move in 4 or 8 bytes (`ACCESS_BYTES`)."""


@dataclass(frozen=True)
class VectorPlan:
    """What a thread of the vector template does at its first element (a multiple of `width`)."""

    width: int
    statements: tuple[Stmt, ...]
    """The vector loads, then one vector store per output."""


def plan_vectors(lowering: GroupLowering, offset: Var) -> VectorPlan | None:
    """The vector form of the pointwise group of `lowering` at the thread's first element
    `offset` (a multiple of the width), or None where it is not provably safe."""
    outputs = lowering.body.outputs
    count = outputs[0].type.numel
    if any(v.type.numel != count for v in outputs):
        return None
    widest = max(b.dtype.itemsize for b in (*lowering.params, *lowering.outputs))
    width = WIDEST_BYTES // widest
    if count < width:
        return None
    loads: dict[Load, list[Var]] = {}  # each vector's first element -> its V registers
    stores: list[Stmt] = []
    for value, buffer in zip(outputs, lowering.outputs):
        indices, known = _element_indices(value, Ref(offset), width)
        elements = [lowering.element(value, index) for index in indices]
        if not _vector_at(indices, value, width, known):
            return None
        replaced = _vectorize_loads(lowering, elements, width, known, loads)
        if replaced is None:
            return None
        stores.append(Store(buffer, flat_index(indices[0], value.type.shape), Call("vector_store", tuple(replaced),
                                                                                    buffer.dtype)))  # fmt: skip
    assigns = [
        Assign(var, Call("vector_load", (load, Const(width, DType.i32), Const(lane, DType.i32)), load.dtype))
        for load, registers in loads.items()
        for lane, var in enumerate(registers)
    ]
    return VectorPlan(width, (*assigns, *stores))


def _element_indices(value: Value, offset: Expr, width: int) -> tuple[list[Unflattened], dict[Expr, int]]:
    """The indices in `value` of elements offset + j (j < width), and the atoms known to be
    multiples of `width` in them (see the module doc)."""
    shape = value.type.shape
    base = unflatten(offset, shape)
    known: dict[Expr, int] = {offset: width}
    axes = [a for a, size in enumerate(shape) if size != 1]
    last = axes[-1] if axes else None
    if last is not None and (last == axes[0] or shape[last] % width == 0):
        known[base[last]] = width  # o itself (the only axis) or o % N, N a multiple of V
        indices = []
        for j in range(width):
            index = list(base)
            index[last] = base[last] + j if j else base[last]
            indices.append(Unflattened(index, offset + j if j else offset, shape))
        return indices, known
    return [unflatten(offset + j if j else offset, shape) for j in range(width)], known


def _vector_at(indices: list[Unflattened], value: Value, width: int, known: dict[Expr, int]) -> bool:
    """Whether the elements at `indices` of `value` are consecutive from a multiple of `width`."""
    offsets = [flat_index(index, value.type.shape) for index in indices]
    return _consecutive([linear(o) for o in offsets]) and multiple_of(offsets[0], width, known)


def _consecutive(forms: list[tuple[dict[Expr, int], int]]) -> bool:
    terms, constant = forms[0]
    return all(form == (terms, constant + j) for j, form in enumerate(forms))


def _uniform(forms: list[tuple[dict[Expr, int], int]]) -> bool:
    return all(form == forms[0] for form in forms)


def _vectorize_loads(lowering: GroupLowering, elements: list[Expr], width: int, known: dict[Expr, int],
                     loads: dict[Load, list[Var]]) -> list[Expr] | None:  # fmt: skip
    """`elements` with their contiguous loads read from vector registers (added to `loads`), or
    None when a load is neither contiguous nor uniform (see the module doc)."""
    found = [list(_loads(e, conditional=False)) for e in elements]
    if any(len(f) != len(found[0]) for f in found):
        return None
    replacements: list[dict[Expr, Expr]] = [{} for _ in elements]
    for position, (first, conditional) in enumerate(found[0]):
        lane_loads = [f[position][0] for f in found]
        if any(load.buffer is not first.buffer or _has_load(load.index) for load in lane_loads):
            return None
        forms = [linear(load.index) for load in lane_loads]
        if _uniform(forms):
            continue
        bytes_ = width * first.buffer.dtype.itemsize
        if (conditional or first.buffer.scope is not Scope.GLOBAL or bytes_ not in ACCESS_BYTES
                or not _consecutive(forms) or not multiple_of(first.index, width, known)):  # fmt: skip
            return None
        if first not in loads:
            loads[first] = [lowering.var(f"v_{first.buffer.name}_", first.dtype) for _ in range(width)]
        for lane, load in enumerate(lane_loads):
            replacements[lane][load] = Ref(loads[first][lane])
    return [_substitute(e, r) for e, r in zip(elements, replacements)]


def _loads(expr: Expr, conditional: bool) -> Iterator[tuple[Load, bool]]:
    """The loads of `expr` in tree order, each with whether it is read only under a `Select`."""
    if isinstance(expr, Load):
        yield expr, conditional
        return
    if isinstance(expr, Select):
        yield from _loads(expr.condition, conditional)
        yield from _loads(expr.a, True)
        yield from _loads(expr.b, True)
        return
    for child in _children(expr):
        yield from _loads(child, conditional)


def _has_load(expr: Expr) -> bool:
    return isinstance(expr, Load) or any(_has_load(child) for child in _children(expr))


def _children(expr: Expr) -> Iterator[Expr]:
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if isinstance(value, Expr):
            yield value
        elif isinstance(value, tuple):
            yield from (item for item in value if isinstance(item, Expr))


def _substitute(expr: Expr, replacements: dict[Expr, Expr]) -> Expr:
    """`expr` with every subexpression in `replacements` replaced."""
    if expr in replacements:
        return replacements[expr]
    if not replacements or isinstance(expr, Load | Ref | Const):
        return expr
    changes = {}
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if isinstance(value, Expr):
            changes[field.name] = _substitute(value, replacements)
        elif isinstance(value, tuple) and any(isinstance(item, Expr) for item in value):
            changes[field.name] = tuple(_substitute(item, replacements) if isinstance(item, Expr) else item
                                        for item in value)  # fmt: skip
    return dataclasses.replace(expr, **changes) if changes else expr
