"""GraphBuilder types every node as it is made; the interpreter runs graphs in both modes and
checks its inputs."""

import re

import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder, InterpreterError, ShapeError, UnknownOpError


def small_graph():
    builder = GraphBuilder("g")
    x = builder.input("x", (2, 3))
    y = builder.input("y", (3,))
    s = builder.add(x, y)
    return builder.build(builder.mul(s, s), s)


def test_builder_infers_types_and_keeps_order():
    graph = small_graph()
    assert [n.op for n in graph.nodes] == ["add", "mul"]
    assert [str(v.type) for v in graph.outputs] == ["f32[2,3]", "f32[2,3]"]
    assert graph.users[graph.outputs[1]] == (graph.nodes[1],)  # mul reads s twice, listed once
    assert graph.producers[graph.outputs[0]] is graph.nodes[1]
    ir.verify(graph)


def test_builder_errors_quote_the_node_and_its_source():
    builder = GraphBuilder("g")
    x = builder.input("x", (2, 3))
    y = builder.input("y", (4,))
    quoted = re.escape("in: add(%x: f32[2,3], %y: f32[4]) (from m.py:3)")
    with pytest.raises(ShapeError, match=f"(?s)cannot broadcast.*{quoted}"):
        builder.op("add", x, y, source="m.py:3")


def test_unknown_ops_and_names_are_rejected():
    builder = GraphBuilder("g")
    with pytest.raises(UnknownOpError, match=r"unknown op 'addd'; the op table has: .*add"):
        _ = builder.addd
    with pytest.raises(ValueError, match="not an identifier"):
        builder.input("1x", (2,))
    builder.input("x", (2,))
    with pytest.raises(ValueError, match="already taken"):
        builder.input("x", (2,))


def test_constants_get_unique_names_and_are_read_only():
    builder = GraphBuilder("g")
    a = builder.constant(np.ones(2, np.float32), "w")
    b = builder.constant(np.zeros(2, np.float32), "w")
    graph = builder.build(builder.add(a, b))
    assert list(graph.constants) == ["w", "w_0"]
    with pytest.raises(ValueError):
        graph.constants["w"][0] = 5


def test_builder_copies_constants():
    array = np.ones(2, np.float32)
    builder = GraphBuilder("g")
    graph = builder.build(builder.constant(array))
    array[0] = 7
    assert ir.run(graph, [])[0][0] == 1


def test_interpreter_by_name_and_by_position():
    graph = small_graph()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([1, 2, 3], np.float32)
    by_position = ir.run(graph, [x, y])
    by_name = ir.run(graph, {"y": y, "x": x})
    np.testing.assert_array_equal(by_position[0], (x + y) ** 2)
    np.testing.assert_array_equal(by_name[0], by_position[0])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([np.zeros((2, 3), np.float32)], "takes 2 input\\(s\\), got 1"),
        (
            [np.zeros((2, 3), np.float64), np.zeros(3, np.float32)],
            "input %x expects f32\\[2,3\\], got float64\\[2, 3\\]",
        ),
        ([np.zeros((3, 2), np.float32), np.zeros(3, np.float32)], "input %x expects f32\\[2,3\\]"),
        ({"x": np.zeros((2, 3), np.float32)}, "missing \\['y'\\]"),
    ],
)
def test_interpreter_rejects_bad_inputs(inputs, message):
    with pytest.raises(InterpreterError, match=message):
        ir.run(small_graph(), inputs)


def test_run_all_exposes_intermediates():
    graph = small_graph()
    env = ir.run_all(graph, [np.ones((2, 3), np.float32), np.ones(3, np.float32)])
    assert set(env) == set(graph.values())


def test_oracle_mode_upcasts_constants_inputs_and_dtype_attributes():
    builder = GraphBuilder("g")
    x = builder.input("x", (4,), DType.bf16)
    c = builder.constant(np.full(4, 0.1, DType.bf16.numpy))
    y = builder.cast(builder.add(x, c), dtype=DType.bf16)
    graph = builder.build(y, builder.arange(limit=4.0, delta=1.0, dtype=DType.f16))
    x_value = np.full(4, 1 / 3, DType.bf16.numpy)
    faithful = ir.run(graph, [x_value])
    oracle = ir.run(graph, [x_value], oracle=True)
    assert faithful[0].dtype == DType.bf16.numpy and faithful[1].dtype == np.float16
    assert oracle[0].dtype == np.float64 and oracle[1].dtype == np.float64
    exact = x_value.astype(np.float64) + np.array(0.1, DType.bf16.numpy).astype(np.float64)
    np.testing.assert_array_equal(oracle[0], exact)
    np.testing.assert_array_equal(faithful[0], exact.astype(np.float32).astype(DType.bf16.numpy))


def test_low_precision_inputs_compute_in_f32():
    # 2048 + 1 is not representable in f16; (2048 + 1) - 2048 computed per op in f16 storage is 0.
    builder = GraphBuilder("g")
    x = builder.input("x", (1,), DType.f16)
    one = builder.constant(np.ones(1, np.float16))
    graph = builder.build(builder.sub(builder.add(x, one), x))
    assert ir.run(graph, [np.array([2048], np.float16)])[0][0] == 0
    assert ir.run(graph, [np.array([2048], np.float16)], oracle=True)[0][0] == 1


@pytest.mark.parametrize(
    ("text", "name"), [("x", "x"), ("0.weight", "t_0.weight"), ("layer-1/w", "layer_1_w"), ("é", "_")]
)
def test_to_identifier_makes_names_the_text_form_accepts(text, name):
    from ir.graph import is_identifier, to_identifier

    assert to_identifier(text) == name and is_identifier(name)
