"""Tests of the text form: printing then parsing is the identity on drawn graphs (text and values),
the printed form of the tricky cases is what we expect, and malformed texts fail with a message
that points at the line and column."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given

import ir
from ir import DType, GraphBuilder, ParseError, parse_graph, print_graph
from ir.testing import assert_equivalent, graphs_with_inputs, random_inputs


def _bits(array: np.ndarray) -> np.ndarray:
    """The bit patterns of an array, with every nan the same: equal bits mean the same values."""
    array = np.asarray(array)
    if array.dtype.kind == "f" or array.dtype == DType.bf16.numpy:
        unsigned = np.dtype(f"u{array.dtype.itemsize}")
        canonical_nan = np.array(np.nan, array.dtype).view(unsigned)
        return np.where(np.isnan(array.astype(np.float32)), canonical_nan, array.view(unsigned))
    return array


def _assert_round_trip(graph: ir.Graph, inputs=None) -> ir.Graph:
    text = print_graph(graph)
    parsed = parse_graph(text)
    assert print_graph(parsed) == text
    assert list(parsed.constants) == list(graph.constants)
    for name, array in graph.constants.items():
        assert parsed.constants[name].dtype == array.dtype and parsed.constants[name].shape == array.shape
        assert np.array_equal(_bits(parsed.constants[name]), _bits(array)), name
    assert_equivalent(graph, parsed, inputs)
    return parsed


@given(graphs_with_inputs())
def test_print_parse_print_is_the_identity_and_keeps_values(graph_and_inputs):
    graph, inputs = graph_and_inputs
    _assert_round_trip(graph, inputs)


# -- the text of the tricky cases ----------------------------------------------------------


def _example() -> ir.Graph:
    b = GraphBuilder("example")
    x = b.input("x", (2, 6), DType.f32)
    mask = b.input("mask", (2, 6), DType.bool)
    left, right = b.split(x, axis=1, sizes=[2, 4], source="model.py:12")
    normed = b.rms_norm(right, epsilon=1e-05)
    clipped = b.clip(normed, min=-0.0, max=float("inf"), source="  layers.py:7   (block 2) ")
    filled = b.full(shape=[2, 1], value=float("nan"), dtype=DType.f32)
    total = b.sum(left, axes=[], keepdims=True)
    activated = b.gelu(clipped, approximate="tanh")
    padded = b.pad(left, pads=[0, 1, 0, 1], mode="reflect")
    cast = b.cast(padded, dtype=DType.bf16)
    scalar = b.reshape(b.slice(left, starts=[0, 0], ends=[1, 1]), shape=[])
    selected = b.where(mask, x, b.constant(np.full((6,), 0.5, np.float32), "half"))
    constants = [
        b.constant(np.array([65504, -np.finfo(np.float16).smallest_subnormal, 0.1, -0.0], np.float16), "h"),
        b.constant(np.array([3.3895314e38, 1e-38, -np.inf, np.nan], ml_dtypes.bfloat16), "bf"),
        b.constant(np.array([[True, False]]), "flags"),
        b.constant(np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0], np.int64), "big"),
        b.constant(np.array([0, 255], np.uint8), "bytes"),
        b.constant(np.array([-128, 127], np.int8), "small"),
        b.constant(np.zeros((0, 3), np.float32), "empty"),
        b.constant(np.float64(1e-300), "tiny"),
    ]
    return b.build(left, activated, filled, total, cast, scalar, selected, *constants)


EXAMPLE_TEXT = """\
graph @example(%x: f32[2,6], %mask: bool[2,6]) -> (f32[2,2], f32[2,4], f32[2,1], f32[1,1], bf16[2,4], f32[], \
f32[2,6], f16[4], bf16[4], bool[1,2], i64[3], u8[2], i8[2], f32[0,3], f64[]) {
  %0, %1 = split(%x) {axis=1, sizes=[2, 4]} : f32[2,2], f32[2,4]    # model.py:12
  %2 = rms_norm(%1) {epsilon=1e-05} : f32[2,4]
  %3 = clip(%2) {max=inf, min=-0.0} : f32[2,4]    # layers.py:7 (block 2)
  %4 = full() {dtype=f32, shape=[2, 1], value=nan} : f32[2,1]
  %5 = sum(%0) {keepdims=true} : f32[1,1]
  %6 = gelu(%3) {approximate="tanh"} : f32[2,4]
  %7 = pad(%0) {mode="reflect", pads=[0, 1, 0, 1]} : f32[2,4]
  %8 = cast(%7) {dtype=bf16} : bf16[2,4]
  %9 = slice(%0) {ends=[1, 1], starts=[0, 0]} : f32[1,1]
  %10 = reshape(%9) {shape=[]} : f32[]
  %half = const @half : f32[6]
  %11 = where(%mask, %x, %half) : f32[2,6]
  %h = const @h : f16[4]
  %bf = const @bf : bf16[4]
  %flags = const @flags : bool[1,2]
  %big = const @big : i64[3]
  %bytes = const @bytes : u8[2]
  %small = const @small : i8[2]
  %empty = const @empty : f32[0,3]
  %tiny = const @tiny : f64[]
  return %0, %6, %4, %5, %8, %10, %11, %h, %bf, %flags, %big, %bytes, %small, %empty, %tiny
}

constants {
  @half : f32[6] = splat(0.5)
  @h : f16[4] = [6.55e+04, -6e-08, 0.1, -0.0]
  @bf : bf16[4] = [3.3895314e+38, 1.0010069e-38, -inf, nan]
  @flags : bool[1,2] = [true, false]
  @big : i64[3] = [-9223372036854775808, 9223372036854775807, 0]
  @bytes : u8[2] = [0, 255]
  @small : i8[2] = [-128, 127]
  @empty : f32[0,3] = []
  @tiny : f64[] = [1e-300]
}
"""


def test_the_text_form_of_tricky_cases():
    """Multi-output nodes, source comments (whitespace collapsed), float attributes (1e-05, inf,
    nan, -0.0), strings, dtypes, empty lists, defaults left out, splats, extreme constants."""
    assert print_graph(_example()) == EXAMPLE_TEXT


def test_tricky_cases_read_back_exactly():
    graph = _example()
    parsed = _assert_round_trip(graph, random_inputs(graph, seed=0))
    node = parsed.nodes[0]
    assert node.op == "split" and len(node.outputs) == 2 and node.source == "model.py:12"
    clip = parsed.nodes[2].attrs
    assert clip["max"] == np.inf and str(clip["min"]) == "-0.0"
    assert np.isnan(parsed.nodes[3].attrs["value"]) and parsed.nodes[3].attrs["dtype"] == DType.f32
    assert parsed.constants["h"][0] == 65504 and parsed.constants["h"][1] == -(2.0**-24)


def test_long_constants_can_be_elided_for_reading():
    text = print_graph(_example(), max_constant_elements=3)
    assert "@h : f16[4] = <4 elements elided>" in text and "@half : f32[6] = splat(0.5)" in text
    assert "@big : i64[3] = [-9223372036854775808, 9223372036854775807, 0]" in text


def test_hand_written_text_is_normalised():
    """Defaults given explicitly, ints for floats, comments and blank lines read fine; printing
    gives the canonical form."""
    text = """
    # a hand-written graph
    graph @g(%x: f32[2,3]) -> (f32[2,3], f32[2]) {

      %w = const @w : f32[3]      # the weights
      %y = mul(%x, %w) : f32[2,3]
      %z = clip(%y) {min=0, max=6} : f32[2,3]
      %s = sum(%z) {axes=[1], keepdims=false} : f32[2]
      return %z, %s
    }
    constants { @w : f32[3] = [1, 2.5, -3] }
    """
    graph = parse_graph(text)
    assert print_graph(graph) == (
        "graph @g(%x: f32[2,3]) -> (f32[2,3], f32[2]) {\n"
        "  %w = const @w : f32[3]    # the weights\n"
        "  %0 = mul(%x, %w) : f32[2,3]\n"
        "  %1 = clip(%0) {max=6.0, min=0.0} : f32[2,3]\n"
        "  %2 = sum(%1) {axes=[1]} : f32[2]\n"
        "  return %1, %2\n"
        "}\n\n"
        "constants {\n"
        "  @w : f32[3] = [1.0, 2.5, -3.0]\n"
        "}\n"
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    clipped, total = ir.run(graph, [x])
    assert np.array_equal(clipped, np.clip(x * [1, 2.5, -3], 0, 6))
    assert np.array_equal(total, clipped.sum(axis=1))


def test_values_named_in_the_text_print_numbered():
    graph = parse_graph(
        "graph @g(%x: i32[]) -> (i32[]) {\n  %a = neg(%x) : i32[]\n  %b = abs(%a) : i32[]\n  return %b\n}\n"
    )
    assert "  %0 = neg(%x) : i32[]\n  %1 = abs(%0) : i32[]\n  return %1\n" in print_graph(graph)


def test_a_constant_of_mixed_zeros_keeps_its_signs():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    graph = b.build(b.div(x, b.constant(np.array([0.0, -0.0], np.float32))))
    _assert_round_trip(graph, [np.ones(2, np.float32)])  # prints splat(0.0); 1 / -0.0 becomes +inf


def test_a_blank_source_round_trips():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    _assert_round_trip(b.build(b.op("neg", x, source="  ")))


# -- malformed texts -----------------------------------------------------------------------

GOOD = """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %w = const @w : f32[3]
  %0 = add(%x, %w) : f32[2,3]
  return %0
}

constants {
  @w : f32[3] = [1.0, 2.0, 3.0]
}
"""


def _broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


MALFORMED = [
    # (text, expected message fragment, the text the caret points at)
    (_broken("%x, %w)", "%x, %v)"), "%v is used before it is defined", "%v)"),
    (_broken("%0 = add", "%x = add"), "%x is defined twice (values are SSA)", "%x = add"),
    (_broken("add(", "frobnicate("), "unknown op 'frobnicate'; the op table has: abs, ", "frobnicate"),
    (_broken("%w) :", "%w) {alpha=2.0} :"), "add: unknown attribute(s) alpha (it takes: none)", "add("),
    (_broken("%w) : f32[2,3]", "%w) : f32[3,2]"), "add is declared to give f32[3,2] but gives f32[2,3]", "add("),
    (_broken("const @w : f32[3]", "const @w : f32[4]"), "const is declared to give f32[4] but gives f32[3]", "const"),
    (_broken("%x: f32[2,3]", "%x: f33[2,3]"), "unknown dtype 'f33' (expected one of f64, f32,", "f33"),
    (_broken("%x: f32[2,3]", "%x: f32[2.5,3]"), "expected a dimension (a non-negative integer), found '2.5'", "2.5"),
    (_broken("%x: f32[2,3]", "%x: f32(2,3)"), "expected '[', found '('", "(2,3)"),
    (_broken("%x: f32[2,3]", "%x f32[2,3]"), "expected ':', found 'f32'", "f32"),
    (_broken("  @w : f32[3] = [1.0, 2.0, 3.0]\n", ""), "constant @w is not in the constants section", "const"),
    (_broken("[1.0, 2.0, 3.0]", "<3 elements elided>"), "the data of @w was elided when this text was printed", "<3"),
    (_broken("[1.0, 2.0, 3.0]", "[1.0, 2.0]"), "@w : f32[3] needs 3 elements, found 2", "[1.0, 2.0]"),
    (_broken("%w) : f32[2,3]", "%w) ; f32[2,3]"), "unexpected character ';'", "; f32"),
    (_broken("%w) : f32[2,3]", "%w) : f32[2,3] %0"), "expected the end of the line, found '%0'", "%0\n"),
    (
        _broken("-> (f32[2,3])", "-> (f16[2,3])"),
        "the graph declares results (f16[2,3]) but returns (f32[2,3])",
        "return",
    ),
    (_broken("  @w : f32[3] = [1.0, 2.0, 3.0]", "  @w : bool[3] = [1, 0, 1]"), "holds true and false only", "[1, 0"),
    (
        _broken("  @w : f32[3] = [1.0, 2.0, 3.0]", "  @w : i32[3] = [1, 2.5, 3]"),
        "i32 constant holds integers only",
        "[1",
    ),
    (_broken("  @w : f32[3] = [1.0, 2.0, 3.0]", "  @w : u8[3] = [1, 256, 3]"), "constant data does not fit u8", "[1"),
    (_broken("}\n\nconstants", "}\n}\nconstants"), "expected end of input after the graph, found '}'", "}\nconstants"),
    (_broken("  return %0\n", ""), "expected a node's result such as %0, found '}'", "}\n\nconstants"),
    (_broken("%0 = add(%x, %w)", "%0, %1 = add(%x, %w)"), "add gives 1 result(s), 2 named", "%0, %1"),
    (_broken("%w) : f32[2,3]", '%w) {alpha="x} : f32[2,3]'), "unexpected character '\"'", '"x}'),
]


@pytest.mark.parametrize(("text", "fragment", "pointed_at"), MALFORMED)
def test_malformed_text_is_reported_at_its_place(text, fragment, pointed_at):
    with pytest.raises(ParseError) as error:
        parse_graph(text)
    message = str(error.value)
    assert fragment in message
    found = re.match(r"line (\d+), column (\d+): ", message)
    assert found, message
    line, column = int(found.group(1)), int(found.group(2))
    # The offending line is quoted, with a caret under the column, and that column holds what we broke.
    source_line = text.splitlines()[line - 1]
    assert message.split("\n")[-2:] == ["  " + source_line, "  " + " " * (column - 1) + "^"]
    assert (source_line + "\n" + "\n".join(text.splitlines()[line:]))[column - 1 :].startswith(pointed_at)


def test_parse_errors_inside_a_node_name_the_node():
    text = GOOD.replace("f32[3]", "f32[4]").replace("[1.0, 2.0, 3.0]", "splat(1.0)")
    with pytest.raises(ParseError, match=r"line 3, column 8: add: cannot broadcast \[2,3\] with \[4\]"):
        parse_graph(text)


def test_a_graph_without_outputs_round_trips():
    b = GraphBuilder("g")
    b.input("x", (2,))
    _assert_round_trip(b.build())
