"""scaled_dot_product_attention: shape rules with their errors, the decomposition the interpreter
expands, results against torch, the FLOP count and the text round trip."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ir
from ir import DType, GraphBuilder, ShapeError, TensorType, get_op

RNG = np.random.default_rng(2)
SDPA = "scaled_dot_product_attention"


def T(text: str) -> TensorType:
    """`T("f32[2,3]")` is the tensor type written in the text form."""
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), DType(dtype))


def infer(types: str, **attrs) -> str:
    definition = get_op(SDPA)
    (result,) = definition.infer_types(tuple(T(t) for t in types.split()), definition.normalize_attrs(attrs))
    return str(result)


def attend(*arrays: np.ndarray, oracle: bool = False, **attrs) -> np.ndarray:
    """Run attention over `arrays` (q, k, v[, mask]) in a one-node graph that prints and parses back."""
    builder = GraphBuilder("t")
    names = ("q", "k", "v", "mask")
    inputs = [builder.input(n, a.shape, DType.from_numpy(a.dtype)) for n, a in zip(names, arrays)]
    graph = builder.build(builder.op(SDPA, *inputs, **attrs))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    return ir.run(graph, list(arrays), oracle=oracle)[0]


def floats(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def torch_attention(q, k, v, mask=None, **kwargs) -> np.ndarray:
    as_torch = lambda a: torch.from_numpy(a if a.dtype == np.bool_ else a.astype(np.float32))
    mask = None if mask is None else as_torch(mask)
    return F.scaled_dot_product_attention(as_torch(q), as_torch(k), as_torch(v), mask, **kwargs).numpy()


def close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=tolerance, atol=tolerance)


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "attrs", "expected"),
    [
        ("f32[4,8] f32[6,8] f32[6,5]", {}, "f32[4,5]"),
        ("f32[2,4,8] f32[2,6,8] f32[2,6,3]", {"causal": True}, "f32[2,4,3]"),
        ("f16[2,3,4,8] f16[2,3,6,8] f16[2,3,6,8] bool[4,6]", {"scale": 0.5}, "f16[2,3,4,8]"),
        ("f32[2,3,4,8] f32[2,3,6,8] f32[2,3,6,8] f32[2,1,1,6]", {}, "f32[2,3,4,8]"),
        ("bf16[1,4,8] bf16[1,6,8] bf16[1,6,2] bool[]", {}, "bf16[1,4,2]"),
    ],
)
def test_attention_shapes(types, attrs, expected):
    assert infer(types, **attrs) == expected


@pytest.mark.parametrize(
    ("types", "attrs", "error"),
    [
        ("f32[8] f32[8] f32[8]", {}, f"{SDPA}: q must be [..., L, E], got f32[8]"),
        ("f32[2,4,8] f32[6,8] f32[6,8]", {}, f"{SDPA}: q, k and v must have the same leading dims"),
        ("f32[2,4,8] f32[3,6,8] f32[3,6,8]", {}, f"{SDPA}: q, k and v must have the same leading dims"),
        ("f32[2,4,8] f32[2,6,8] f32[1,6,8]", {}, f"{SDPA}: q, k and v must have the same leading dims"),
        ("f32[4,8] f32[6,7] f32[6,8]", {}, f"{SDPA}: k must be [..., S, E] with q's E = 8, got f32[6,7]"),
        ("f32[4,8] f32[6,8] f32[5,8]", {}, f"{SDPA}: v must be [..., S, Ev] with k's S = 6, got f32[5,8]"),
        ("f32[4,8] f32[6,8] f16[6,8]", {}, f"{SDPA}: inputs must have one dtype"),
        ("f32[4,8] f32[6,8] f32[6,8] f16[4,6]", {}, f"{SDPA}: mask must be bool (True = may attend) or additive f32"),
        ("f32[4,8] f32[6,8] f32[6,8] bool[6,4]", {}, f"{SDPA}: mask bool[6,4] does not broadcast to the scores [4,6]"),
        ("f32[4,8] f32[6,8] f32[6,8] bool[2,4,6]", {}, f"{SDPA}: mask bool[2,4,6] does not broadcast"),
        ("f32[4,0] f32[6,0] f32[6,8]", {}, f"{SDPA}: the default scale 1/sqrt(E) needs E > 0"),
        ("i32[4,8] i32[6,8] i32[6,8]", {}, f"{SDPA} does not take i32 inputs"),
    ],
)
def test_attention_shape_errors(types, attrs, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer(types, **attrs)


# --- the decomposition --------------------------------------------------------------------------


def test_attention_is_composite_and_decomposes_into_simple_ops():
    definition = get_op(SDPA)
    assert definition.reference is None and definition.kind == ir.OpKind.CONTRACTION
    builder = GraphBuilder("expanded")
    q, k, v = (builder.input(n, (2, 4, 8)) for n in "qkv")
    mask = builder.input("mask", (4, 4), DType.bool)
    graph = builder.build(definition.decompose(builder, q, k, v, mask, causal=True, scale=None))
    ops = [node.op for node in graph.nodes if node.op != "const"]
    assert ops == ["transpose", "matmul", "mul", "where", "where", "softmax", "matmul"]
    assert str(graph.outputs[0].type) == "f32[2,4,8]"
    causal = graph.constants["causal"]
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), dtype=bool)))
    assert graph.constants["scale"] == np.float32(1 / math.sqrt(8))


# --- results against torch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q_shape", "kv_shape", "ev"),
    [
        ((4, 8), (6, 8), 5),
        ((2, 4, 8), (2, 6, 8), 8),
        ((2, 3, 5, 16), (2, 3, 7, 16), 4),
        ((1, 2, 6, 4), (1, 2, 6, 4), 4),
    ],
)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch(q_shape, kv_shape, ev, causal):
    q, k, v = floats(*q_shape), floats(*kv_shape), floats(*kv_shape[:-1], ev)
    close(attend(q, k, v, causal=causal), torch_attention(q, k, v, is_causal=causal))


@pytest.mark.parametrize("scale", [0.1, 1.0, 2.5])
def test_attention_scale_matches_torch(scale):
    q, k, v = floats(2, 5, 8), floats(2, 7, 8), floats(2, 7, 3)
    close(attend(q, k, v, scale=scale), torch_attention(q, k, v, scale=scale))


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (1, 3, 1, 7), (2, 3, 5, 7)])
def test_attention_bool_mask_matches_torch(mask_shape):
    q, k, v = floats(2, 3, 5, 8), floats(2, 3, 7, 8), floats(2, 3, 7, 6)
    mask = RNG.random(mask_shape) < 0.7
    mask[..., 0] = True  # every query may attend something, so no row is all -inf
    close(attend(q, k, v, mask), torch_attention(q, k, v, mask))


def test_attention_bool_mask_excludes_keys():
    q, k, v = floats(1, 3, 4), floats(1, 5, 4), floats(1, 5, 2)
    mask = np.array([True, False, True, False, False])
    # Masked keys have no influence at all: dropping them gives the same result.
    close(attend(q, k, v, mask), attend(q, k[:, mask], v[:, mask], scale=0.5), tolerance=1e-6)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 1, 7)])
def test_attention_float_mask_matches_torch(mask_shape):
    q, k, v = floats(2, 3, 5, 8), floats(2, 3, 7, 8), floats(2, 3, 7, 6)
    mask = floats(*mask_shape)
    close(attend(q, k, v, mask), torch_attention(q, k, v, mask))


def test_attention_causal_with_mask_applies_both():
    q, k, v = floats(2, 4, 8), floats(2, 6, 8), floats(2, 6, 8)
    mask = RNG.random((4, 6)) < 0.6
    mask[:, 0] = True
    combined = mask & np.tril(np.ones((4, 6), dtype=bool))  # torch takes one or the other, not both
    close(attend(q, k, v, mask, causal=True), torch_attention(q, k, v, combined))


def test_attention_causal_first_query_sees_only_the_first_key():
    q, k, v = floats(1, 3, 4), floats(1, 3, 4), floats(1, 3, 2)
    result = attend(q, k, v, causal=True)
    close(result[:, 0], v[:, 0].astype(np.float64), tolerance=1e-6)


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16])
def test_attention_low_precision(dtype):
    q, k, v = (floats(2, 2, 6, 16).astype(dtype.numpy) for _ in range(3))
    mask = floats(6, 6).astype(dtype.numpy)
    result = attend(q, k, v, mask, causal=False)
    assert result.dtype == dtype.numpy
    close(result, torch_attention(q, k, v, mask), tolerance=1e-2 if dtype == DType.f16 else 4e-2)


def test_attention_oracle_is_f64():
    q, k, v = floats(2, 5, 8, dtype=np.float16), floats(2, 7, 8, dtype=np.float16), floats(2, 7, 4, dtype=np.float16)
    result = attend(q, k, v, oracle=True, causal=True)
    assert result.dtype == np.float64
    expected = F.scaled_dot_product_attention(
        *(torch.from_numpy(a.astype(np.float64)) for a in (q, k, v)), is_causal=True
    )
    close(result, expected.numpy(), tolerance=1e-12)


def test_attention_flops():
    definition = get_op(SDPA)
    inputs = (T("f32[2,3,5,8]"), T("f32[2,3,7,8]"), T("f32[2,3,7,4]"))
    attrs = definition.normalize_attrs({})
    outputs = definition.infer_types(inputs, attrs)
    scores = 2 * 3 * 5 * 7
    assert definition.cost_flops(inputs, outputs, attrs) == scores * (2 * 8 + 2 * 4 + 8)
