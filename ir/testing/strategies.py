"""Hypothesis strategies for the graph IR: random well-typed graphs drawn from the op table, and
input arrays for them.

`graphs()` is what every property test of a pass, the printer or a backend draws from: 1-3
inputs of broadcast-compatible shapes, constants, then nodes applying ops from `ir.OPS` (all
but `const`, which constants cover) to values drawn so far, so values are shared; the graph
returns its last value and some others. Everything is built through `GraphBuilder`, and an op
is only applied after its own shape rule accepted the drawn operands, so every graph is valid.
How an op's operands and attributes are drawn lives in `ir.testing.drawing` (generically)
and `ir.testing.operands` (per op).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ir.builder import GraphBuilder
from ir.dtype import DType
from ir.errors import ShapeError
from ir.graph import Graph, Value
from ir.ops import OPS
from ir.testing.drawing import Drawing, Skip
from ir.testing.operands import sampler_for
from ir.types import Shape

DEFAULT_DTYPES = frozenset({DType.f32, DType.f16, DType.bf16, DType.i32, DType.i64, DType.bool})
MAX_ELEMENTS = 2048
"""Values larger than this are not built (tile of expand of matmul ...), so interpreting stays fast."""

_INPUT_NAMES = ("x", "y", "z")

QUANTIZING_OPS = frozenset({"quantize_linear", "unpack_bytes"})
"""Ops whose results (i8, u8) are drawn whatever `dtypes` says, so that every graph may hold a
quantization: only `dequantize_linear`, `matmul_integer` and `conv_integer` read such values
(`ir.testing.operands`)."""


def drawable_ops() -> list[str]:
    """Every op the strategy may draw: the whole table except `const` (constants are drawn apart)
    and regions such as `fused`, whose bodies passes make from drawn graphs."""
    return sorted(name for name in OPS if name != "const" and not OPS[name].is_region)


@st.composite
def graphs(
    draw: st.DrawFn,
    *,
    max_nodes: int = 8,
    ops: Iterable[str] | None = None,
    dtypes: Iterable[DType] = DEFAULT_DTYPES,
    max_rank: int = 4,
    max_dim: int = 5,
    max_inputs: int = 3,
    constants: bool = True,
) -> Graph:
    """A random valid graph.

    ops: the op names to draw nodes from (default: `drawable_ops()`).
    dtypes: the element types of inputs, constants and node results (f32 is drawn most often);
        index operands of gather/scatter are i64 or i32 whatever this says.
    max_rank, max_dim: bounds of the input shapes (each dimension is 1..max_dim).
    constants: whether the graph may hold constants (without them, ops that need weights or
        indices are drawn only where values built so far fit).
    """
    dtypes = frozenset(dtypes)
    names = sorted(ops) if ops is not None else drawable_ops()
    unknown = [n for n in names if n not in OPS or n == "const"]
    if unknown or not names or not dtypes:
        raise ValueError(f"graphs(): cannot draw ops {unknown or names} with dtypes {sorted(map(str, dtypes))}")
    builder = GraphBuilder("drawn")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    drawing = Drawing(draw, builder, [], dtypes, max_dim, rng, constants)

    # Ranks in this order of preference: hypothesis favours (and shrinks to) the first, and
    # matrices say more than the scalars that integers(0, max_rank) would favour.
    rank = draw(st.sampled_from([r for r in (2, 3, 1, 4, 0) if r <= max_rank] or [max_rank]))
    base = tuple(draw(st.integers(1, max_dim)) for _ in range(rank))
    main_dtype = _draw_dtype(draw, dtypes)
    for name in _INPUT_NAMES[: draw(st.integers(1, max_inputs))]:
        dtype = main_dtype if draw(st.integers(0, 2)) else _draw_dtype(draw, dtypes)
        drawing.pool.append(builder.input(name, _broadcast_compatible(draw, base), dtype))
    for _ in range(draw(st.integers(0, 2)) if constants else 0):
        dtype = main_dtype if draw(st.booleans()) else _draw_dtype(draw, dtypes)
        drawing.pool.append(drawing.constant(_broadcast_compatible(draw, base), dtype))

    made: list[Value] = []
    read: set[Value] = set()
    wanted = draw(st.integers(1, max_nodes))
    for _ in range(4 * max_nodes):  # ops that do not fit are skipped; give up on a graph eventually
        if len(made) >= wanted:
            break
        inputs, outputs = _apply_some_op(draw, drawing, names)
        read.update(inputs)
        made += outputs
        drawing.pool += outputs
    return builder.build(*_draw_outputs(draw, drawing.pool, made, read))


def _draw_dtype(draw: st.DrawFn, dtypes: frozenset[DType]) -> DType:
    if DType.f32 in dtypes and draw(st.integers(0, 3)) != 3:
        return DType.f32  # mostly f32, as models are; shrinks to f32
    return draw(st.sampled_from(sorted(dtypes, key=lambda t: t.value)))


def _broadcast_compatible(draw: st.DrawFn, base: Shape) -> Shape:
    """A suffix of `base`, some dimensions replaced by 1: broadcasts with every other such shape."""
    suffix = base[draw(st.integers(0, len(base))) :]  # mostly all of it
    return tuple(1 if draw(st.integers(0, 3)) == 0 else n for n in suffix)


def _apply_some_op(draw: st.DrawFn, drawing: Drawing, names: list[str]) -> tuple[list[Value], list[Value]]:
    """Apply one drawn op to drawn operands: (inputs, outputs), none when the op did not fit them."""
    op = OPS[draw(st.sampled_from(names))]
    try:
        inputs, attrs = sampler_for(op)(drawing, op)
        normalized = op.normalize_attrs(attrs)
        types = op.infer_types(tuple(v.type for v in inputs), normalized)
    except (Skip, ShapeError):
        return [], []
    allowed = drawing.dtypes | ({DType.i8, DType.u8} if op.name in QUANTIZING_OPS else set())
    if any(t.dtype not in allowed or t.numel > MAX_ELEMENTS or 0 in t.shape for t in types):
        return [], []  # zero-size values would make reductions like max undefined downstream
    source = f"model.py:{draw(st.integers(1, 99))}" if draw(st.integers(0, 7)) == 0 else None
    result = drawing.builder.op(op.name, *inputs, source=source, **attrs)
    return inputs, list(result) if isinstance(result, tuple) else [result]


def _draw_outputs(draw: st.DrawFn, pool: list[Value], made: list[Value], read: set[Value]) -> list[Value]:
    """The last value made, and some others; rarely an input or a value returned twice."""
    if not made:
        return [pool[0]]
    unread = [v for v in made[:-1] if v not in read]
    outputs = [v for v in unread if draw(st.booleans())] + [made[-1]]
    if draw(st.integers(0, 9)) == 0:
        outputs.append(draw(st.sampled_from(pool)))
    return outputs


def input_arrays(graph: Graph) -> st.SearchStrategy[list[np.ndarray]]:
    """Arrays for the graph's inputs: floats in [-3, 3], ints in [-5, 5] (u8: [0, 5]), any bools."""
    return st.tuples(*(_array_of(v.type.shape, v.type.dtype) for v in graph.inputs)).map(list)


inputs_for = input_arrays


def _array_of(shape: Shape, dtype: DType) -> st.SearchStrategy[np.ndarray]:
    if dtype == DType.bool:
        return hnp.arrays(np.bool_, shape)
    if dtype.is_integer:
        return hnp.arrays(dtype.numpy, shape, elements=st.integers(0 if not dtype.is_signed else -5, 5))
    # Drawn as f32 (f64 for f64) and rounded, since hypothesis knows no bf16.
    wide = np.float64 if dtype == DType.f64 else np.float32
    elements = st.floats(-3, 3, width=64 if dtype == DType.f64 else 32)
    return hnp.arrays(wide, shape, elements=elements).map(lambda a: a.astype(dtype.numpy))


@st.composite
def graphs_with_inputs(draw: st.DrawFn, **graph_options) -> tuple[Graph, list[np.ndarray]]:
    """A graph from `graphs(**graph_options)` and arrays for its inputs."""
    graph = draw(graphs(**graph_options))
    return graph, draw(input_arrays(graph))
