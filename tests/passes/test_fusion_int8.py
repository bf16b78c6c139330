"""Fusion's two rules for int8 graphs (`passes.fusion_groups`): a weight-only int8 weight's
dequantization joins the GEMM that reads it (and nothing else), and sibling reductions (min and
max of one value over the same axes, as ONNX's DynamicQuantizeLinear imports) share one kernel.
Fusion stays exact (the fused graph equals the unfused one bit for bit in the interpreter), and on
the CPU the fused DynamicQuantizeLinear equals the interpreter with fewer kernels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import ir
from ir import DType, Graph, GraphBuilder
from ir.testing import assert_equivalent
from passes import make_pass
from passes.fusion_groups import RULES, GroupKind, find_groups
from passes.quantize import Quantize

FUSE = make_pass("fuse")


def _ops(graph: Graph) -> list[set[str]]:
    """The ops of each group, consts left out."""
    return [{n.op for n in group.nodes} for group in find_groups(graph)]


def dynamic_quantize_linear(shape: tuple[int, ...], axes: tuple[int, ...]) -> Graph:
    """ONNX's DynamicQuantizeLinear as it imports (uint8, asymmetric): separate min and max of x
    with 0 included, scale = (max - min) / 255, zero point = saturate(round(-min / scale)), then
    q = quantize_linear(x, scale, zero point); all three are outputs. `axes` () reduces all of x
    (ONNX's per-tensor form); a trailing axis makes it per row."""
    builder = GraphBuilder("dynamic_quantize_linear")
    x = builder.input("x", shape, DType.f32)
    keep = bool(axes)
    zero = builder.constant(np.float32(0), "zero")
    low = builder.minimum(builder.min(x, axes=axes, keepdims=keep), zero)
    high = builder.maximum(builder.max(x, axes=axes, keepdims=keep), zero)
    scale = builder.div(builder.sub(high, low), builder.constant(np.float32(255), "u8_range"))
    point = builder.quantize_linear(builder.neg(low), scale, builder.constant(np.uint8(0), "zero_u8"))
    return builder.build(scale, point, builder.quantize_linear(x, scale, point))  # the fused node's order


# -- the weight's dequantizing prologue ---------------------------------------------------------


def _linear(trans_b: bool = True) -> Graph:
    rng = np.random.default_rng(0)
    builder = GraphBuilder("linear")
    x = builder.input("x", (3, 16), DType.f32)
    w = rng.standard_normal((8, 16) if trans_b else (16, 8)).astype(np.float32)
    y = builder.gemm(x, builder.constant(w, "w"), builder.constant(np.ones(8, np.float32), "b"), trans_b=trans_b)
    return builder.build(builder.relu(y))


@pytest.mark.parametrize("trans_b", [True, False])
def test_a_weight_only_int8_weight_is_dequantized_inside_its_gemm(trans_b):
    quantized = Quantize(mode="weight", keep_first_last=False).run(_linear(trans_b))
    assert _ops(quantized) == [{"dequantize_linear", "gemm", "relu"}]
    fused = FUSE.run(quantized)
    assert_equivalent(quantized, fused)
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    assert [v.type.dtype for v in node.inputs].count(DType.i8) == 1  # the kernel reads the int8 weight


def _dequantized(activation: bool = False, shared: bool = False, returned: bool = False) -> Graph:
    """x @ dequantize_linear(q, s, 0), q a constant or (`activation`) an input; with `shared` a
    second matmul reads the dequantized weight too, with `returned` the graph returns it."""
    builder = GraphBuilder("dequantized")
    x = builder.input("x", (4, 8), DType.f32)
    q = builder.input("q", (8, 6), DType.i8) if activation else builder.constant(np.ones((8, 6), np.int8), "q")
    w = builder.dequantize_linear(q, builder.constant(np.float32(0.5), "s"), builder.constant(np.int8(0), "z"))
    outputs = [builder.matmul(x, w)]
    if shared:
        outputs.append(builder.matmul(builder.input("x2", (2, 8), DType.f32), w))
    if returned:
        outputs.append(w)
    return builder.build(*outputs)


def test_the_prologue_is_only_a_constant_weight_that_one_gemm_reads():
    assert _ops(_dequantized()) == [{"dequantize_linear", "matmul"}]
    for graph in (_dequantized(activation=True), _dequantized(shared=True), _dequantized(returned=True)):
        groups = _ops(graph)
        assert {"dequantize_linear"} in groups, groups  # an activation, a weight read twice or returned
        assert_equivalent(graph, FUSE.run(graph))


# -- sibling reductions -------------------------------------------------------------------------


def test_dynamic_quantize_linear_is_one_group():
    groups = find_groups(dynamic_quantize_linear((4, 32), ()))
    assert [g.kind for g in groups] == [GroupKind.REDUCTION]
    assert {"min", "max", "quantize_linear"} <= {n.op for n in groups[0].nodes}


def test_reductions_of_other_values_or_axes_stay_apart():
    builder = GraphBuilder("apart")
    x, y = builder.input("x", (4, 6), DType.f32), builder.input("y", (4, 6), DType.f32)
    low_x = builder.min(x, axes=(1,))
    high_y = builder.max(y, axes=(1,))
    low_columns = builder.min(x, axes=(0,))
    graph = builder.build(builder.sub(high_y, low_x), low_columns)
    assert sum(g.kind is GroupKind.REDUCTION for g in find_groups(graph)) == 3


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    ops=st.tuples(*(st.sampled_from(["min", "max", "sum", "mean"]),) * 2),
    data=st.data(),
)
def test_sibling_reductions_fuse_exactly(shape, ops, data):
    """Two reductions of one value over the same drawn axes, combined after: one group, and the
    fused graph equals the unfused one bit for bit."""
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    keep = data.draw(st.booleans())
    builder = GraphBuilder("siblings")
    x = builder.input("x", tuple(shape), DType.f32)
    first, second = (builder.op(op, x, axes=axes, keepdims=keep) for op in ops)
    graph = builder.build(builder.add(builder.mul(first, second), second))
    assert [g.kind for g in find_groups(graph)] == [GroupKind.REDUCTION]
    inputs = [data.draw(st.sampled_from([-1.0, 0.5, 2.0])) * np.arange(np.prod(shape), dtype=np.float32)]
    inputs[0] = inputs[0].reshape(shape)
    for got, want in zip(ir.run(FUSE.run(graph), inputs), ir.run(graph, inputs), strict=True):
        np.testing.assert_array_equal(got, want)


def test_dynamic_quantize_linear_on_the_cpu_is_exact_with_fewer_kernels(monkeypatch):
    """min and max in one group: the CPU's kernels for it go from 7 to 5 (what remains: one nest per
    reduction, the scalar outputs and the quantizing loop; `backends.cpu.split` makes each a kernel)."""
    graph = dynamic_quantize_linear((6, 40), ())
    x = np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32)
    fused = compiler.compile(graph, target="cpu")
    for got, want in zip(fused(x), ir.run(graph, [x]), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    monkeypatch.delitem(RULES, (GroupKind.REDUCTION, GroupKind.REDUCTION))
    apart = compiler.compile(graph, target="cpu")
    assert len(fused.kernels) < len(apart.kernels), (list(fused.kernels), list(apart.kernels))
