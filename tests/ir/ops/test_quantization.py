"""Quantization ops (quantize_linear, dequantize_linear, matmul_integer): shape rules with their
errors, references against torch's quantized tensors and numpy, the text round trip, and the CPU
kernels equal to the interpreter bit for bit."""

import numpy as np
import pytest
import torch

import compiler
import ir
from ir import DType, GraphBuilder, ShapeError, TensorType, get_op

RNG = np.random.default_rng(3)
# torch's quantized tensors, the reference here, are deprecated (and say so on every call)
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def T(text: str) -> TensorType:
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), DType(dtype))


def infer(op: str, types: str) -> str:
    definition = get_op(op)
    (result,) = definition.infer_types(tuple(T(t) for t in types.split()), definition.normalize_attrs({}))
    return str(result)


def run_op(op: str, *arrays: np.ndarray) -> np.ndarray:
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    graph = builder.build(builder.op(op, *inputs))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    (result,) = ir.run(graph, list(arrays))
    return result


def test_shape_rules():
    assert infer("quantize_linear", "f32[2,3] f32[] i8[]") == "i8[2,3]"
    assert infer("quantize_linear", "f32[2,3] f32[2,1] u8[2,1]") == "u8[2,3]"
    assert infer("dequantize_linear", "u8[4,3,2] f32[3,1] u8[]") == "f32[4,3,2]"
    assert infer("dequantize_linear", "i32[5] f32[] i32[]") == "f32[5]"
    assert infer("matmul_integer", "u8[2,4,6] i8[6,5] u8[] i8[5]") == "i32[2,4,5]"
    assert infer("matmul_integer", "i8[3,6] i8[6,5]") == "i32[3,5]"


@pytest.mark.parametrize(
    ("op", "types", "message"),
    [
        ("quantize_linear", "f32[2,3] f32[3] f32[]", "zero_point must be one of"),
        ("quantize_linear", "f32[2,3] f16[] i8[]", "must have x's dtype"),
        ("quantize_linear", "f32[2,3] f32[2] i8[]", "must broadcast to x"),
        ("quantize_linear", "i32[2,3] i32[] i8[]", "does not take i32"),
        ("dequantize_linear", "i8[2,3] f32[] u8[]", "must have x's dtype"),
        ("dequantize_linear", "i8[2,3] f32[3,3] i8[]", "must broadcast to x"),
        ("matmul_integer", "i8[2,3] i8[4,5]", "contracted dimensions differ"),
        ("matmul_integer", "i8[2,3] i8[3,5] u8[]", "must have the dtype"),
        ("matmul_integer", "f32[2,3] f32[3,5]", "does not take f32"),
    ],
)
def test_shape_rule_errors(op, types, message):
    with pytest.raises(ShapeError, match=message):
        infer(op, types)


@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8])
def test_quantize_and_dequantize_equal_torch_per_tensor(dtype):
    x = torch.randn(4, 7) * 4
    x[0, 0] = 1e6  # saturation (ties are not compared: torch rounds after adding the zero point)
    scale, point = 0.5, (3 if dtype == torch.qint8 else 128)
    expected = torch.quantize_per_tensor(x, scale, point, dtype)
    np_dtype = np.int8 if dtype == torch.qint8 else np.uint8
    q = run_op("quantize_linear", x.numpy(), np.float32(scale), np.array(point, np_dtype))
    np.testing.assert_array_equal(q, expected.int_repr().numpy())
    d = run_op("dequantize_linear", q, np.float32(scale), np.array(point, np_dtype))
    np.testing.assert_array_equal(d, expected.dequantize().numpy())


def test_quantize_per_channel_equals_torch():
    x = torch.randn(3, 5, 2) * 3
    scales, points = torch.tensor([0.1, 0.02, 0.5], dtype=torch.float64), torch.tensor([0, -3, 7])
    expected = torch.quantize_per_channel(x, scales, points, 0, torch.qint8).int_repr().numpy()
    scale = scales.numpy().astype(np.float32).reshape(3, 1, 1)
    q = run_op("quantize_linear", x.numpy(), scale, points.numpy().astype(np.int8).reshape(3, 1, 1))
    # torch divides by the f64 scale; the IR (ONNX) by the f32 one: they may part on a tie only
    assert np.abs(q.astype(int) - expected.astype(int)).max() <= 1
    assert (q == expected).mean() > 0.95


def test_quantize_rounds_halves_to_even_before_adding_the_zero_point():
    x = np.array([0.25, 0.75, -0.25, 1.25, -0.75], np.float32)  # x / 0.5 = 0.5, 1.5, -0.5, 2.5, -1.5
    q = run_op("quantize_linear", x, np.float32(0.5), np.int8(3))
    np.testing.assert_array_equal(q, [3, 5, 3, 5, 1])


def test_quantize_saturates_and_maps_nan_to_zero_and_dequantize_is_exact_in_i32():
    q = run_op("quantize_linear", np.array([np.nan, np.inf, -np.inf], np.float32), np.float32(1), np.int8(5))
    np.testing.assert_array_equal(q, [0, 127, -128])
    d = run_op("dequantize_linear", np.array([255, 0], np.uint8), np.float32(1), np.uint8(255))
    np.testing.assert_array_equal(d, [0.0, -255.0])  # (x - z) does not wrap in u8


def test_matmul_integer_equals_int64_numpy():
    a = RNG.integers(0, 256, (2, 3, 40)).astype(np.uint8)
    b = RNG.integers(-128, 128, (40, 6)).astype(np.int8)
    za, zb = np.uint8(131), RNG.integers(-128, 128, (6,)).astype(np.int8)
    got = run_op("matmul_integer", a, b, np.array(za), zb)
    expected = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_cpu_kernels_equal_the_interpreter_bit_for_bit():
    b = GraphBuilder("q")
    x = b.input("x", (5, 40), DType.f32)
    row_scale = b.constant((RNG.random((5, 1)) * 0.05 + 0.01).astype(np.float32), "s")
    zero = b.constant(np.int8(0), "z")
    q = b.quantize_linear(x, row_scale, zero)
    w = b.constant(RNG.integers(-128, 128, (40, 70)).astype(np.int8), "w")
    product = b.matmul_integer(q, w, zero, b.constant(np.int8(3), "zb"))
    scaled = b.mul(b.cast(product, dtype=DType.f32), b.constant(np.float32(0.01), "k"))
    points = b.constant(RNG.integers(0, 256, (1, 40)).astype(np.uint8), "zu")
    unsigned = b.quantize_linear(x, row_scale, points)
    graph = b.build(product, scaled, b.dequantize_linear(unsigned, row_scale, points), unsigned)
    xs = (RNG.standard_normal((5, 40)) * 2).astype(np.float32)
    xs[0, :3] = [np.nan, 1e9, -1e9]
    expected = ir.run(graph, [xs])
    got = compiler.compile(graph, target="cpu")(xs)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype
        np.testing.assert_array_equal(g, e)


def test_conv_integer_equals_an_int64_convolution_with_padding_taps_reading_the_zero_point():
    x = RNG.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    w = RNG.integers(-128, 128, (4, 3, 3, 2)).astype(np.int8)
    zx = np.uint8(131)
    builder = GraphBuilder("c")
    xv, wv, zv = (
        builder.input("x", x.shape, DType.u8),
        builder.input("w", w.shape, DType.i8),
        builder.input("z", (), DType.u8),
    )
    graph = builder.build(builder.op("conv_integer", xv, wv, zv, strides=(2, 1), pads=(1, 0, 1, 1), dilations=(1, 2)))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    (got,) = ir.run(graph, [x, w, np.array(zx)])
    # padding taps read the zero point: pad x with it, then an exact f64 convolution of the centred values
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (0, 1)), constant_values=int(zx)) - int(zx)
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(padded.astype(np.float64)),
        torch.from_numpy(w.astype(np.float64)),
        stride=(2, 1),
        dilation=(1, 2),
    ).numpy()
    assert got.dtype == np.int32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected.astype(np.int64))


def test_unpack_bytes_is_pack_bytes_inverse_and_its_shape_rule_checks_the_panels():
    from ir.ops.quantization import pack_bytes

    matrix = RNG.integers(-128, 128, (10, 70)).astype(np.int8)  # K and N off the word and the panel
    words = pack_bytes(matrix, 64)
    assert words.shape == (2, 3, 64) and words.dtype == np.int32
    unpacked = get_op("unpack_bytes").reference(words, dtype=DType.i8, shape=(10, 70))
    np.testing.assert_array_equal(unpacked, matrix)
    definition = get_op("unpack_bytes")
    attrs = definition.normalize_attrs({"dtype": DType.i8, "shape": (10, 70)})
    assert str(definition.infer_types((TensorType((2, 3, 64), DType.i32),), attrs)[0]) == "i8[10,70]"
    with pytest.raises(ShapeError, match="do not hold a"):
        definition.infer_types((TensorType((2, 2, 64), DType.i32),), attrs)


def test_a_matmul_of_packed_panels_equals_the_plain_matmul():
    from ir.ops.contraction import pack_panels

    a, b = RNG.standard_normal((5, 12)).astype(np.float32), RNG.standard_normal((12, 70)).astype(np.float32)
    builder = GraphBuilder("p")
    av, bv = builder.input("a", a.shape, DType.f32), builder.input("b", (2, 12, 64), DType.f32)
    graph = builder.build(builder.op("matmul", av, bv, packed_columns=70))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    (got,) = ir.run(graph, [a, pack_panels(b, 64)])
    np.testing.assert_array_equal(got, ir.run(_plain_matmul(a.shape, b.shape), [a, b])[0])


def _plain_matmul(a_shape, b_shape):
    builder = GraphBuilder("m")
    return builder.build(builder.matmul(builder.input("a", a_shape, DType.f32), builder.input("b", b_shape, DType.f32)))
