"""Regions: `fused` nodes hold their body graph; they print, parse, verify and interpret."""

import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder, ShapeError, VerificationError
from ir.ops.region import inline
from ir.testing import assert_equivalent


def pointwise_body(dtype=DType.f32, name="fused_0"):
    b = GraphBuilder(name)
    a = b.input("a", (3,), dtype)
    half = b.constant(np.array(0.5, dtype.numpy), "half")
    return b.build(b.relu(b.mul(b.exp(a), half)))


def graph_with_region(dtype=DType.f32):
    b = GraphBuilder("g")
    x = b.input("x", (3,), dtype)
    fused = b.op("fused", b.neg(x), body=pointwise_body(dtype), kind="pointwise")
    return b.build(b.add(fused, x))


def unfused(dtype=DType.f32):
    b = GraphBuilder("g")
    x = b.input("x", (3,), dtype)
    half = b.constant(np.array(0.5, dtype.numpy), "half")
    return b.build(b.add(b.relu(b.mul(b.exp(b.neg(x)), half)), x))


EXPECTED_TEXT = """\
graph @g(%x: f32[3]) -> (f32[3]) {
  %0 = neg(%x) : f32[3]
  %1 = fused(%0) {body=graph @fused_0(%a: f32[3]) -> (f32[3]) {
    %half = const @half : f32[]
    %0 = exp(%a) : f32[3]
    %1 = mul(%0, %half) : f32[3]
    %2 = relu(%1) : f32[3]
    return %2
  }

  constants {
    @half : f32[] = [0.5]
  }, kind="pointwise"} : f32[3]
  %2 = add(%1, %x) : f32[3]
  return %2
}
"""


def test_a_region_prints_its_body_nested_and_parses_back():
    graph = graph_with_region()
    assert str(graph) == EXPECTED_TEXT
    assert str(ir.parse_graph(EXPECTED_TEXT)) == EXPECTED_TEXT
    ir.verify(ir.parse_graph(EXPECTED_TEXT))


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16, DType.bf16])
@pytest.mark.parametrize("oracle", [False, True])
def test_the_interpreter_runs_a_body_value_for_value(dtype, oracle):
    x = np.array([-3.0, 0.25, 7.5], dtype.numpy)
    (fused,) = ir.run(graph_with_region(dtype), [x], oracle=oracle)
    (plain,) = ir.run(unfused(dtype), [x], oracle=oracle)
    assert fused.dtype == plain.dtype
    np.testing.assert_array_equal(fused, plain)  # bit-exact: intermediates round as they did unfused


def test_the_signature_must_match_the_body():
    b = GraphBuilder("g")
    x = b.input("x", (4,))
    with pytest.raises(ShapeError, match=r"the body @fused_0 takes \(f32\[3\]\), given \(f32\[4\]\)"):
        b.op("fused", x, body=pointwise_body(), kind="pointwise")


def test_the_verifier_looks_inside_bodies():
    body = pointwise_body()
    broken = ir.Graph(body.name, body.inputs, body.outputs, body.nodes[:1] + body.nodes[2:], body.constants)
    graph = graph_with_region()
    node = graph.nodes[1]
    attrs = ir.get_op("fused").normalize_attrs({"body": broken, "kind": "pointwise"})
    bad = ir.Node("fused", node.inputs, attrs, node.outputs)
    graph = ir.Graph("g", graph.inputs, graph.outputs, (graph.nodes[0], bad, graph.nodes[2]))
    with pytest.raises(VerificationError, match=r"in body @fused_0: .*uses a value but nothing defines it"):
        ir.verify(graph)


def test_costs_count_the_body_flops_and_only_the_region_bytes():
    from ir.summary import summarize

    region = summarize(graph_with_region())
    plain = summarize(unfused())
    assert region.flops == plain.flops
    assert region.bytes_moved < plain.bytes_moved


def test_inline_puts_the_body_back():
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    graph = b.build(b.add(inline(b, pointwise_body(), [b.neg(x)]), x))
    assert [n.op for n in graph.nodes] == ["neg", "const", "exp", "mul", "relu", "add"]
    assert_equivalent(graph, unfused())
