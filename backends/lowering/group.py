"""Lowering one fused group (the body of a `fused` node) to one kernel.

Every value of the body is either *inlined*, computed where it is read as an expression of
its inputs' elements (elementwise ops through `scalar.SCALAR`, movement ops through
`indexing.INDEXING`), or *materialized* into a buffer by a loop nest (`templates.TEMPLATES`:
reductions, contractions, norms, ...; and inlinable values read more than once, so that no
expression is recomputed per read). A materialized value that is a group output is written
straight into the output parameter. When a template's result feeds, through inlinable ops
only, exactly one group output of the same shape, that output's expression is applied to the
template's result as it is stored (the epilogue: bias, activation, residual), and the
intermediate never reaches memory. Composite ops (attention) are expanded into their
decomposition first, unless a template lowers them whole (`templates_attention`; `keep_whole`).

Values are read in their storage dtype; each op computes in its compute dtype (f32 for
f16/bf16, as the graph interpreter does) and rounds its result to its declared dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from backends.lowering.expr import Names, Unflattened, const, flat_index, unflatten
from backends.lowering.indexing import INDEXING, broadcast_index, split_element
from backends.lowering.scalar import ARANGE, SCALAR
from ir import DType, Graph, GraphBuilder, KilnError, Node, OpKind, Value, get_op
from ir.loop import Assign, Buffer, Expr, For, Kernel, Load, LoopKind, Ref, Scope, Select, Stmt, Store, Var


class LoweringError(KilnError):
    """A fused group that the lowering cannot turn into a kernel."""


def compute_dtype(dtype: DType) -> DType:
    """The dtype arithmetic happens in: f32 for f16 and bf16 (the interpreter's rule)."""
    return DType.f32 if dtype in (DType.f16, DType.bf16) else dtype


class EpilogueMismatch(Exception):
    """An epilogue read its producer at another position: it cannot be applied at the store."""


class GroupLowering:
    """Builds the kernel of one group; `templates` call back into `element` and `store`."""

    def __init__(self, body: Graph, name: str, source: str = "", keep_whole: Collection[str] | None = None) -> None:
        """`keep_whole`: the composite ops left in the body for a template that lowers them whole
        (the GPU's attention template); by default those that `template_table` has a template for."""
        self.body = expand_composites(body, keep=whole_templates() if keep_whole is None else keep_whole)
        self.name, self.source = name, source
        self.names = Names()
        self.producers = self.body.producers
        self.buffers: dict[Value, Buffer] = {}
        self.locals: list[Buffer] = []
        self.statements: list[Stmt] = []
        self.written: set[int] = set()  # positions of the outputs already stored
        self.overrides: dict[Value, tuple[Expr | None, Expr]] = {}
        """value -> (flat offset, expression): the value's element at that offset is the expression
        (a template's result being stored, seen by its epilogue); at any offset when it is None
        (a caller that proved every read is at the held element's position: `backends.cuda.epilogue_scatter`)."""
        self.params = [self._buffer(v, f"in_{v.name or 'x'}") for v in self.body.inputs]
        self.buffers.update(zip(self.body.inputs, self.params))
        self.outputs: list[Buffer] = [self._buffer(v, f"out{i}") for i, v in enumerate(self.body.outputs)]
        self.uses = _count_uses(self.body)

    # -- buffers and loops ------------------------------------------------------------------

    def _buffer(self, value: Value, stem: str, scope: Scope = Scope.GLOBAL) -> Buffer:
        return Buffer(self.names.fresh(_identifier(stem)), value.type.dtype, value.type.shape or (1,), scope)

    def var(self, stem: str, dtype: DType = DType.i64) -> Var:
        return Var(self.names.fresh(stem), dtype)

    def loops(
        self, shape: Sequence[int], body, kind: LoopKind = LoopKind.SERIAL, vectorize: bool = False
    ) -> list[Stmt]:
        """A loop nest over `shape`; `body(index)` gives the innermost statements. The outermost
        loop gets `kind` (scalars: the body runs once). With `vectorize` (nests that compute one
        element per iteration), the innermost loop of a nest of two or more loops is VECTORIZED
        when it runs at least `_MIN_VECTOR` times; a single loop whose extent is a multiple of a
        `_VECTOR_CHUNKS` size is split into an outer loop (of `kind`, so the nest can still be
        the one parallel loop of the ABI) over a vectorized inner chunk; other single loops stay
        whole for LLVM's own vectorizer."""
        if vectorize and len(shape) == 1:
            chunk = next((c for c in _VECTOR_CHUNKS if shape[0] % c == 0 and shape[0] >= 2 * c), None)
            if chunk is not None:
                outer, inner = self.var("i"), self.var("v")
                element = Ref(outer) * const(chunk, DType.i64) + Ref(inner)
                nest = For(inner, chunk, tuple(body([element])), LoopKind.VECTORIZED)
                return [For(outer, shape[0] // chunk, (nest,), kind)]
        index_vars = [self.var("i") for _ in shape]
        statements = body([Ref(v) for v in index_vars])
        innermost = len(shape) - 1
        for depth, (var, extent) in reversed(list(enumerate(zip(index_vars, shape)))):
            loop_kind = kind if depth == 0 else LoopKind.SERIAL
            if vectorize and depth == innermost > 0 and extent >= _MIN_VECTOR:
                loop_kind = LoopKind.VECTORIZED
            statements = [For(var, extent, tuple(statements), loop_kind)]
        return statements

    def output_buffer(self, value: Value) -> Buffer:
        """Where a materialized value goes: its output parameter, or a local buffer."""
        if value in self.buffers:
            return self.buffers[value]
        if value in self.body.outputs and value not in self.body.inputs:
            position = self.body.outputs.index(value)
            buffer = self.outputs[position]
            self.written.add(position)
        else:
            buffer = self._buffer(value, "t", Scope.LOCAL)
            self.locals.append(buffer)
        self.buffers[value] = buffer
        return buffer

    # -- elements ---------------------------------------------------------------------------

    def element(self, value: Value, index: Sequence[Expr]) -> Expr:
        """The element of `value` at `index`, in its storage dtype."""
        if value in self.overrides:
            at, expr = self.overrides[value]
            if at is not None and flat_index(index, value.type.shape) != at:
                raise EpilogueMismatch
            return expr
        if value in self.buffers:
            return Load(self.buffers[value], flat_index(index, value.type.shape))
        index = tuple(index) if not isinstance(index, Unflattened) else index
        node = self.producers.get(value)
        if node is None:
            raise LoweringError(f"{self.name}: value {value!r} has no producer in the group")
        return self._inline(node, value, index)

    def compute(self, value: Value, index: Sequence[Expr]) -> Expr:
        """The element of `value` at `index` in its compute dtype."""
        return self.element(value, index).cast(compute_dtype(value.type.dtype))

    def _inline(self, node: Node, value: Value, index: tuple[Expr, ...]) -> Expr:
        dtype = value.type.dtype
        if node.op == "const":
            return self._constant(node, value, index)
        if node.op in INDEXING:
            return INDEXING[node.op](self.element, node, index)
        if node.op == "split":
            return split_element(self.element, node, node.outputs.index(value), index)
        if node.op == "arange":
            return ARANGE(index[0], node.attrs, compute_dtype(dtype)).cast(dtype)
        if node.op in SCALAR:
            operands = [self.compute(v, _operand_index(node, k, index)) for k, v in enumerate(node.inputs)]
            if node.op == "cast":  # straight to the target: through f32 first would round twice into f16/bf16
                return operands[0].cast(dtype)
            return SCALAR[node.op](operands, node.attrs, compute_dtype(dtype)).cast(dtype)
        raise LoweringError(f"{self.name}: {node.op} must be computed into a buffer, not inlined")

    def _constant(self, node: Node, value: Value, index: tuple[Expr, ...]) -> Expr:
        """A constant inside the body: fusion copies in scalars only, but a composite's
        decomposition may make an array (attention's causal mask), and a kernel has no parameter
        for it. A splat is its value; a lower-triangular 0/1 matrix is the comparison `j <= i`."""
        array = self.body.constants[node.attrs["name"]]
        dtype = value.type.dtype
        elements = np.ascontiguousarray(array.reshape(-1))
        rows = elements.view(np.uint8).reshape(elements.size, -1)
        if elements.size and (rows == rows[0]).all():  # bitwise: a nan splat is one too
            return const(elements[0].item(), dtype)
        if array.ndim >= 2 and np.array_equal(array, np.broadcast_to(np.tril(np.ones(array.shape[-2:])), array.shape)):
            below = index[-1].le(index[-2])
            return below if dtype == DType.bool else Select(below, const(1, dtype), const(0, dtype))
        raise LoweringError(f"{self.name}: a constant of {array.size} elements inside a group body")

    # -- stores -----------------------------------------------------------------------------

    def store(self, value: Value, index: Sequence[Expr], expr: Expr) -> list[Stmt]:
        """Statements that record `expr` (compute dtype) as `value` at `index`: into the value's
        buffer, or, with an epilogue, into the output the epilogue computes."""
        expr = expr.cast(value.type.dtype)
        epilogue = self.epilogues.get(value)
        if epilogue is not None:
            offset = flat_index(index, value.type.shape)
            self.overrides[value] = (offset, expr)
            # The epilogue's element at the same offset (its chain keeps the element order).
            at = index if epilogue.type.shape == value.type.shape else unflatten(offset, epilogue.type.shape)
            try:
                result = self.element(epilogue, at)
            finally:
                del self.overrides[value]
            buffer = self.outputs[self.body.outputs.index(epilogue)]
            return [Store(buffer, flat_index(at, epilogue.type.shape), result)]
        buffer = self.buffers[value]
        return [Store(buffer, flat_index(index, value.type.shape), expr)]

    def scratch(self, shape: Sequence[int], dtype: DType) -> Buffer:
        """A local buffer for a template's own intermediate (one that reads back what it wrote)."""
        buffer = Buffer(self.names.fresh("t"), dtype, tuple(shape) or (1,), Scope.LOCAL)
        self.locals.append(buffer)
        return buffer

    def accumulate(self, stem: str, dtype: DType, initial: Expr) -> tuple[Var, Stmt]:
        acc = self.var(stem, dtype)
        return acc, Assign(acc, initial)

    # -- the kernel -------------------------------------------------------------------------

    def kernel(self) -> Kernel:
        templates = template_table()
        self.epilogues: dict[Value, Value] = {}
        for node in self.body.nodes:
            if node.op == "const" or (inlinable(node) and not self._shared(node)):
                continue
            if inlinable(node):  # read more than once: compute it once
                for value in node.outputs:
                    buffer = self.output_buffer(value)
                    self.statements += self.loops(
                        value.type.shape, lambda index, n=node, v=value, b=buffer: [
                            Store(b, flat_index(index, v.type.shape), self._inline(n, v, tuple(index)))],
                        vectorize=True,
                    )  # fmt: skip
                continue
            template = templates.get(node.op)
            if template is None:
                raise LoweringError(f"{self.name}: no lowering for {node.op}")
            for value in node.outputs:
                epilogue = self._epilogue_of(value)
                if epilogue is not None:
                    self.epilogues[value] = epilogue
                    self.written.add(self.body.outputs.index(epilogue))
                else:
                    self.output_buffer(value)
            self.statements += template(self, node)
        for position, value in enumerate(self.body.outputs):
            if position in self.written:
                continue
            buffer = self.outputs[position]
            self.statements += self.loops(
                value.type.shape,
                lambda index, v=value, b=buffer: [Store(b, flat_index(index, v.type.shape), self.element(v, index))],
                vectorize=True,
            )
        statements = self.statements
        if len(statements) == 1 and isinstance(statements[0], For):  # one loop nest: spread it over threads
            statements = [_with_kind(statements[0], LoopKind.PARALLEL)]
        params = (*self.params, *self.outputs)
        outputs = tuple(range(len(self.params), len(params)))
        return Kernel(self.name, params, tuple(statements), tuple(self.locals), self.source, outputs)

    def _shared(self, node: Node) -> bool:
        """An inlinable node read by more than one op (or returned and read): worth a buffer,
        unless it is cheap to recompute (a movement op or a scalar)."""
        if get_op(node.op).kind is OpKind.MOVEMENT or node.outputs[0].type.numel == 1:
            return False
        return any(self.uses.get(v, 0) > 1 for v in node.outputs)

    def _epilogue_of(self, value: Value) -> Value | None:
        """The group output computed from `value` by a single-reader chain of inlinable ops of
        as many elements (shape-preserving, or reshapes that keep the element order), if any,
        and if each of its elements reads `value` only at the same flat position."""
        current = value
        while True:
            if current in self.body.outputs:
                break
            readers = [n for n in self.body.nodes if current in n.inputs]
            if len(readers) != 1 or self.uses.get(current, 0) != 1:
                return None
            reader = readers[0]
            if not inlinable(reader) or len(reader.outputs) != 1 or reader.outputs[0].type.numel != value.type.numel:
                return None
            current = reader.outputs[0]
        if current is value or self.body.outputs.count(current) != 1 or self.uses.get(current, 0) > 1:
            return None
        # Try it: reading `value` anywhere but at the stored position disqualifies it.
        probe = [Ref(self.var("probe")) for _ in value.type.shape]
        offset = flat_index(probe, value.type.shape)
        self.overrides[value] = (offset, const(0, value.type.dtype))
        at = probe if current.type.shape == value.type.shape else unflatten(offset, current.type.shape)
        try:
            self.element(current, at)
        except (EpilogueMismatch, LoweringError):
            return None
        finally:
            del self.overrides[value]
        return current


_MIN_VECTOR = 4
"""Innermost loops shorter than this stay serial: too few lanes to pay for vector code."""
_VECTOR_CHUNKS = (64, 16)
"""Chunks a single loop is split into: four or one AVX-512 vectors of f32."""


def inlinable(node: Node) -> bool:
    return node.op in SCALAR or node.op in INDEXING or node.op in ("split", "arange")


def _operand_index(node: Node, position: int, index: tuple[Expr, ...]) -> list[Expr]:
    """Where an elementwise op reads operand `position` for the output element at `index`:
    numpy broadcasting, except batch_norm's [C] parameters, which follow channel axis 1."""
    if node.op == "batch_norm" and position > 0:
        return [index[1]]
    return broadcast_index(index, node.inputs[position].type.shape)


def _count_uses(body: Graph) -> dict[Value, int]:
    uses: dict[Value, int] = {}
    for node in body.nodes:
        for value in node.inputs:
            uses[value] = uses.get(value, 0) + 1
    for value in body.outputs:
        uses[value] = uses.get(value, 0) + 1
    return uses


def _with_kind(loop: For, kind: LoopKind) -> For:
    return For(loop.var, loop.extent, loop.body, kind)


def _identifier(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in text)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"v{cleaned}"


Template = Callable[[GroupLowering, Node], list[Stmt]]
"""A template: the statements that compute a node's outputs into their buffers (`templates`)."""


def template_table() -> dict[str, Template]:
    """Op -> template: `templates.TEMPLATES` (imported here, late, because the templates import
    this module)."""
    from backends.lowering.templates import TEMPLATES

    return TEMPLATES


def whole_templates() -> frozenset[str]:
    """The composite ops a template lowers whole: `expand_composites` leaves them in the body."""
    return frozenset(op for op in template_table() if _composite(op))


def _composite(op: str) -> bool:
    definition = get_op(op)
    return definition.decompose is not None and definition.reference is None


def expand_composites(body: Graph, keep: Collection[str] = ()) -> Graph:
    """The body with composite ops (attention) replaced by their decompositions, computed in
    the compute dtype of their inputs; the ops in `keep` stay whole, for their templates."""
    if not any(_composite(n.op) and n.op not in keep for n in body.nodes):
        return body
    builder = GraphBuilder(body.name)
    builder.adopt_inputs(body.inputs)
    env = {v: v for v in body.inputs}
    for node in body.nodes:
        definition = get_op(node.op)
        inputs = [env[v] for v in node.inputs]
        if node.op == "const":
            builder.append(node, body.constants[node.attrs["name"]])
            env[node.outputs[0]] = node.outputs[0]
        elif _composite(node.op) and node.op not in keep:
            # The interpreter runs a decomposition on its f32 compute arrays and rounds only
            # the results: so do its pieces here, not each in the op's f16/bf16.
            wide = [_cast(builder, v, compute_dtype(v.type.dtype)) for v in inputs]
            results = definition.decompose(builder, *wide, **node.attrs)
            results = results if isinstance(results, tuple) else (results,)
            env.update((v, _cast(builder, r, v.type.dtype)) for v, r in zip(node.outputs, results))
        else:
            results = builder.op(node.op, *inputs, source=node.source, **node.attrs)
            env.update(zip(node.outputs, results if isinstance(results, tuple) else (results,)))
    return builder.build(*(env[v] for v in body.outputs))


def _cast(builder: GraphBuilder, value: Value, dtype: DType) -> Value:
    return value if value.type.dtype == dtype else builder.cast(value, dtype=dtype)


def lower_group(node: Node, name: str) -> Kernel:
    """The kernel of a `fused` node."""
    from ir.printer import print_graph

    body = node.attrs["body"]
    return GroupLowering(body, name, print_graph(body, max_constant_elements=4)).kernel()
