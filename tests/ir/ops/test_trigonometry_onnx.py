"""The trigonometric and hyperbolic ops that ONNX needs (ir.ops.trigonometry): shape rules (with
their errors) and references against torch, including the edges of each domain."""

import numpy as np
import pytest
import torch

import ir
from ir import DType, GraphBuilder, ShapeError

RNG = np.random.default_rng(0)

# op -> (torch function, the interval inputs are drawn from: the op's domain, kept off its edges)
TRIGONOMETRY = {
    "tan": (torch.tan, (-1.5, 1.5)),
    "asin": (torch.asin, (-1.0, 1.0)),
    "acos": (torch.acos, (-1.0, 1.0)),
    "atan": (torch.atan, (-10.0, 10.0)),
    "sinh": (torch.sinh, (-5.0, 5.0)),
    "cosh": (torch.cosh, (-5.0, 5.0)),
    "asinh": (torch.asinh, (-10.0, 10.0)),
    "acosh": (torch.acosh, (1.0, 10.0)),
    "atanh": (torch.atanh, (-0.99, 0.99)),
}


def run_op(op, x):
    builder = GraphBuilder("t")
    graph = builder.build(builder.op(op, builder.input("x", x.shape, DType.from_numpy(x.dtype))))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    return ir.run(graph, [x])[0]


@pytest.mark.parametrize("op", sorted(TRIGONOMETRY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)])
def test_matches_torch(op, dtype, shape):
    function, (low, high) = TRIGONOMETRY[op]
    x = RNG.uniform(low, high, size=shape).astype(dtype)
    got = run_op(op, x)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_allclose(got, function(torch.from_numpy(x)).numpy(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("op", sorted(TRIGONOMETRY))
def test_low_precision_rounds_an_f32_result(op):
    function, (low, high) = TRIGONOMETRY[op]
    x = RNG.uniform(low, high, size=(16,)).astype(np.float16)
    expected = function(torch.from_numpy(x.astype(np.float32))).numpy().astype(np.float16)
    np.testing.assert_array_equal(run_op(op, x), expected)


@pytest.mark.parametrize(
    ("op", "x", "expected"),
    [
        ("asin", [1.5, -1.0], [np.nan, -np.pi / 2]),
        ("acos", [-2.0, 1.0], [np.nan, 0.0]),
        ("acosh", [0.5, 1.0], [np.nan, 0.0]),
        ("atanh", [1.0, -1.0, 2.0], [np.inf, -np.inf, np.nan]),
        ("cosh", [1000.0], [np.inf]),
    ],
)
def test_outside_the_domain_gives_nan_or_inf(op, x, expected):
    np.testing.assert_array_equal(run_op(op, np.array(x, np.float64)), np.array(expected))


@pytest.mark.parametrize("op", sorted(TRIGONOMETRY))
@pytest.mark.parametrize("dtype", [DType.i32, DType.bool])
def test_rejects_non_floats(op, dtype):
    builder = GraphBuilder("t")
    with pytest.raises(ShapeError, match=f"{op} does not take {dtype} inputs"):
        builder.op(op, builder.input("x", (3,), dtype))


@pytest.mark.parametrize("op", sorted(TRIGONOMETRY))
def test_declared_as_elementwise_with_a_cost(op):
    definition = ir.get_op(op)
    assert definition.kind == ir.OpKind.ELEMENTWISE and definition.flops_per_element > 0 and definition.doc
