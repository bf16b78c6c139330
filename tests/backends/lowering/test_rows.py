"""The row templates (reductions, softmax, layer/rms/group norm with per-lane partials) against the
graph interpreter: through the kernel interpreter (tiny shapes, which also bounds-checks every load
and store) and compiled for the CPU (row lengths around the lane counts: 1, 3, 17, 1000; f32, bf16,
f16; keepdims; trailing and non-trailing axes). The kernels sum in lane order, not numpy's, so
float results agree within a bound that grows with the row length: `_row_tolerance`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import compiler
import ir
from backends.lowering import rows
from backends.lowering.expr import const
from backends.lowering.group import lower_group
from ir import DType, GraphBuilder
from ir.loop import Binary, For, LoopKind
from tests.backends.lowering.lowered import assert_close, lower_graph, run_lowered

_RNG = np.random.default_rng(17)


def _graph(op: str, shape, dtype: DType, params: int = 0, **attrs) -> tuple[ir.Graph, list[np.ndarray]]:
    """One `op` node over an input x of `shape` and `params` [last-axis] parameter inputs."""
    builder = GraphBuilder(op)
    x = builder.input("x", shape, dtype)
    extra = [builder.input(f"p{i}", (shape[-1],), dtype) for i in range(params)]
    graph = builder.build(builder.op(op, x, *extra, **attrs))
    arrays = [_RNG.uniform(-3, 3, shape).astype(dtype.numpy)]
    arrays += [_RNG.uniform(0.5, 2, (shape[-1],)).astype(dtype.numpy) for _ in range(params)]
    return graph, arrays


def _row_tolerance(graph: ir.Graph) -> float:
    """How much wider than `assert_close`'s bounds a row result may be: a sum of n terms in another
    order differs by up to ~n ulps of the sum of magnitudes; 1e-5 relative covers ~100 of them."""
    n = max(int(np.prod(node.inputs[0].type.shape[-1:])) for node in graph.nodes)
    return max(1.0, n / 100)


def _outputs(result) -> list[np.ndarray]:
    """A compiled model's outputs as a list (one output comes back bare)."""
    return [np.asarray(a) for a in (result if isinstance(result, (list, tuple)) else [result])]


def _compare(graph: ir.Graph, arrays: list[np.ndarray], actual: list[np.ndarray], what: str) -> None:
    for value, got, expected in zip(graph.outputs, actual, ir.run(graph, arrays)):
        assert_close(got, expected, value.type.dtype, what, scale=_row_tolerance(graph))


ROW_CASES = [
    # op, shape, attrs
    ("sum", (3, 17), dict(axes=(1,), keepdims=False)),
    ("mean", (2, 3, 40), dict(axes=(2,), keepdims=True)),
    ("max", (5, 33), dict(axes=(-1,), keepdims=False)),
    ("min", (2, 3, 4, 9), dict(axes=(2, 3), keepdims=True)),
    ("prod", (4, 35), dict(axes=(1,), keepdims=False)),
    ("sum", (6, 20), dict(axes=(0,), keepdims=False)),  # non-trailing: vectorized across columns
    ("max", (3, 5, 32), dict(axes=(0, 1), keepdims=True)),
    ("sum", (2, 3, 4), dict(axes=(0, 2), keepdims=False)),  # interleaved: the serial nest
    ("sum", (7, 1), dict(axes=(1,), keepdims=False)),
    ("softmax", (3, 40), dict(axis=-1)),
    ("log_softmax", (2, 2, 35), dict(axis=2)),
    ("softmax", (3, 5, 4), dict(axis=1)),  # not the last axis: the serial nest
    ("layer_norm", (4, 37), dict(axis=-1, epsilon=1e-5)),
    ("rms_norm", (2, 3, 36), dict(axis=-1, epsilon=1e-6)),
]


@pytest.mark.parametrize("op, shape, attrs", ROW_CASES, ids=lambda c: str(c))
def test_row_templates_in_the_kernel_interpreter(op, shape, attrs):
    params = 2 if op == "layer_norm" else 1 if op == "rms_norm" else 0
    graph, arrays = _graph(op, shape, DType.f32, params, **attrs)
    _compare(graph, arrays, run_lowered(graph, arrays), f"{op} {shape} {attrs}")


def test_group_norm_in_the_kernel_interpreter():
    builder = GraphBuilder("gn")
    x = builder.input("x", (2, 6, 5, 7), DType.f32)
    w, b = builder.input("w", (6,), DType.f32), builder.input("b", (6,), DType.f32)
    graph = builder.build(builder.group_norm(x, w, b, num_groups=3, epsilon=1e-5))
    arrays = [_RNG.uniform(-3, 3, (2, 6, 5, 7)).astype(np.float32), *_RNG.uniform(0.5, 2, (2, 6)).astype(np.float32)]
    _compare(graph, arrays, run_lowered(graph, arrays), "group_norm")


def _vectorized_loops(kernel) -> int:
    def walk(body):
        for stmt in body:
            if isinstance(stmt, For):
                yield stmt
                yield from walk(stmt.body)

    return sum(loop.kind is LoopKind.VECTORIZED for loop in walk(kernel.body))


@pytest.mark.parametrize("op, vectorized", [("sum", 1), ("softmax", 4), ("layer_norm", 3), ("rms_norm", 2)])
def test_rows_are_one_parallel_loop_with_vectorized_partials(op, vectorized):
    attrs = dict(axes=(1,), keepdims=False) if op == "sum" else dict(axis=-1)
    if op.endswith("norm"):
        attrs["epsilon"] = 1e-5
    graph, _ = _graph(op, (8, 256), DType.f32, 1 if op == "rms_norm" else 2 if op == "layer_norm" else 0, **attrs)
    fused, _ = lower_graph(graph)
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    kernel = lower_group(node, "k")
    assert len(kernel.body) == 1 and kernel.body[0].kind is LoopKind.PARALLEL and kernel.body[0].extent == 8
    assert _vectorized_loops(kernel) == vectorized


# -- compiled for the CPU --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 17, 1000])
@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16, DType.f16])
@pytest.mark.parametrize("op", ["sum", "max", "softmax", "log_softmax", "layer_norm", "rms_norm"])
def test_rows_on_the_cpu_target(op, dtype, n):
    if op in ("sum", "max"):
        attrs = dict(axes=(1,), keepdims=op == "max")
    else:
        attrs = dict(axis=-1) | (dict(epsilon=1e-5) if op.endswith("norm") else {})
    params = 2 if op == "layer_norm" else 1 if op == "rms_norm" else 0
    graph, arrays = _graph(op, (5, n), dtype, params, **attrs)
    fast = compiler.compile(graph, target="cpu", threads=2)
    _compare(graph, arrays, _outputs(fast(*arrays)), f"{op} {dtype} n={n}")


@pytest.mark.parametrize("shape, axes", [((300, 48), (0,)), ((3, 70, 20), (1,)), ((4, 5, 64), (0, 1))])
def test_reductions_over_leading_axes_on_the_cpu_target(shape, axes):
    graph, arrays = _graph("sum", shape, DType.f32, axes=axes, keepdims=True)
    fast = compiler.compile(graph, target="cpu", threads=2)
    _compare(graph, arrays, _outputs(fast(*arrays)), f"sum {shape} {axes}")


def test_softmax_of_fully_masked_rows_is_nan_and_integer_sums_are_exact():
    builder = GraphBuilder("rows")
    x = builder.input("x", (3, 200), DType.f32)
    i = builder.input("i", (3, 200), DType.i32)
    graph = builder.build(builder.softmax(x, axis=-1), builder.sum(i, axes=(1,), keepdims=False))
    data = _RNG.uniform(-3, 3, (3, 200)).astype(np.float32)
    data[1] = -np.inf
    data[2, 7] = np.nan
    arrays = [data, _RNG.integers(-1000, 1000, (3, 200)).astype(np.int32)]
    fast = compiler.compile(graph, target="cpu")
    soft, total = _outputs(fast(*arrays))
    expected_soft, expected_total = ir.run(graph, arrays)
    assert np.isnan(soft[1:]).all() and not np.isnan(soft[0]).any()
    assert_close(soft, expected_soft, DType.f32, "softmax")
    np.testing.assert_array_equal(total, expected_total)


# -- the per-row work ------------------------------------------------------------------------------


def _loops(body, inside_vectorized=False):
    """(loop, whether it is inside a vectorized loop) for every For of `body`, outermost first."""
    for stmt in body:
        if isinstance(stmt, For):
            yield stmt, inside_vectorized
            yield from _loops(stmt.body, inside_vectorized or stmt.kind is LoopKind.VECTORIZED)


def _divisions(node) -> int:
    """The `div` operations in an expression or statement of the kernel IR."""
    if isinstance(node, Binary):
        return (node.op == "div") + _divisions(node.a) + _divisions(node.b)
    if isinstance(node, tuple):
        return sum(_divisions(item) for item in node)
    if isinstance(node, For):
        return _divisions(node.body)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return sum(_divisions(getattr(node, f.name)) for f in dataclasses.fields(node))
    return 0


@pytest.mark.parametrize("op, params", [("softmax", 0), ("layer_norm", 2), ("rms_norm", 1)])
def test_row_writes_multiply_by_a_reciprocal_taken_once_per_row(op, params):
    """A 16-lane division costs ~10x a multiplication: none is left in the vectorized loops."""
    attrs = dict(axis=-1) | (dict(epsilon=1e-5) if op.endswith("norm") else {})
    graph, _ = _graph(op, (8, 256), DType.f32, params, **attrs)
    fused, _ = lower_graph(graph)
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    kernel = lower_group(node, "k")
    vectorized = [loop for loop, _ in _loops(kernel.body) if loop.kind is LoopKind.VECTORIZED]
    assert vectorized and all(_divisions(statement) == 0 for loop in vectorized for statement in loop.body)
    (row,) = kernel.body
    assert _divisions(tuple(s for s in row.body if not isinstance(s, For))) >= 1  # the reciprocal, per row


def _leaves(expr) -> list[int]:
    if isinstance(expr, Binary):
        return _leaves(expr.a) + _leaves(expr.b)
    return [int(expr.value)]


@pytest.mark.parametrize("count", [1, 2, 5, 7, 16, 64])
def test_partials_fold_by_halves_and_each_is_used_once(count):
    """Partial k meets partial k + count/2 first (whole vectors added before any shuffle)."""
    values = [const(k, DType.i64) for k in range(count)]
    folded = rows._fold("add", values)
    assert sorted(_leaves(folded)) == list(range(count))
    if count >= 4 and count & (count - 1) == 0:
        firsts = [sorted(_leaves(e)) for e in _pairs(folded)]
        assert all(b - a == count // 2 for a, b in firsts), firsts


def _pairs(expr):
    """The innermost Binary nodes (two leaves each)."""
    if isinstance(expr.a, Binary):
        yield from _pairs(expr.a)
        yield from _pairs(expr.b)
    else:
        yield expr


def test_row_reductions_and_norms_on_the_cpu_target_at_benchmark_width():
    """Rows of 1024 (the benchmark's): 64 lanes of partials, 16 steps each, the reciprocal writes."""
    for op, params, attrs in [("softmax", 0, dict(axis=-1)), ("layer_norm", 2, dict(axis=-1, epsilon=1e-5)),
                              ("group_norm", 2, dict(num_groups=2, epsilon=1e-5))]:  # fmt: skip
        shape = (6, 4, 512) if op == "group_norm" else (6, 1024)
        builder = GraphBuilder(op)
        x = builder.input("x", shape, DType.f32)
        extra = [
            builder.input(f"p{i}", (shape[1] if op == "group_norm" else shape[-1],), DType.f32) for i in range(params)
        ]
        graph = builder.build(builder.op(op, x, *extra, **attrs))
        arrays = [_RNG.uniform(-3, 3, shape).astype(np.float32)]
        arrays += [_RNG.uniform(0.5, 2, v.type.shape).astype(np.float32) for v in graph.inputs[1:]]
        fast = compiler.compile(graph, target="cpu", threads=2)
        _compare(graph, arrays, _outputs(fast(*arrays)), f"{op} {shape}")
