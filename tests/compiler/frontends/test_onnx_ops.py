"""The ONNX frontend's op mappings: a one-node model per mapping (attributes, omitted optional
inputs, initializers for the inputs that must be constants) imported and run on the reference
target gives ONNX Runtime's outputs, dtype and shape included."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import compiler
from tests.compiler.frontends import onnx_models as M

In, Init, rand = M.In, M.Init, M.rand
x34 = rand(3, 4)
x2345 = rand(2, 3, 4, 5)
image = rand(1, 2, 7, 6)
i64 = np.int64

# (id, op, operands, attributes, extra: outputs / opset)
CASES = [
    ("add_broadcast", "Add", [In(rand(2, 3, 4)), In(rand(4, seed=1))], {}, {}),
    ("sub", "Sub", [In(x34), Init(rand(3, 1, seed=2))], {}, {}),
    ("div_int_truncates", "Div", [In(np.array([7, -7, 5], np.int32)), In(np.array([2, 2, -3], np.int32))], {}, {}),
    ("pow_int_exponent", "Pow", [In(rand(5, low=0.5)), In(np.array([2], np.int64))], {}, {}),
    ("mod_int", "Mod", [In(np.array([7, -7, 5], i64)), In(np.array([3, 3, -3], i64))], {}, {}),
    ("fmod_float", "Mod", [In(rand(6)), In(rand(6, seed=3, low=0.5))], {"fmod": 1}, {}),
    ("max_variadic", "Max", [In(rand(3, 1)), In(rand(4, seed=1)), In(rand(3, 4, seed=2))], {}, {}),
    ("mean", "Mean", [In(x34), In(rand(3, 4, seed=1))], {}, {}),
    ("where", "Where", [In(rand(3, 4) > 0), In(x34), In(rand(4, seed=5))], {}, {}),
    ("less_or_equal", "LessOrEqual", [In(x34), In(rand(4, seed=5))], {}, {}),
    ("not", "Not", [In(rand(5) > 0)], {}, {}),
    ("is_nan", "IsNaN", [In(np.array([1, np.nan, np.inf], np.float32))], {}, {}),
    ("is_inf_negative", "IsInf", [In(np.array([1, -np.inf, np.inf], np.float32))], {"detect_positive": 0}, {}),
    ("cast_truncates", "Cast", [In(np.array([1.7, -1.7, 2.5], np.float32))], {"to": 6}, {}),
    ("cast_like", "CastLike", [In(x34), In(np.zeros(1, np.float16))], {}, {}),
    ("clip_constant_bounds", "Clip", [In(x34), Init(np.float32(-0.5)), None], {}, {}),
    ("clip_runtime_bound", "Clip", [In(x34), None, In(np.array(0.25, np.float32))], {}, {}),
    ("leaky_relu", "LeakyRelu", [In(x34)], {"alpha": 0.2}, {}),
    ("prelu", "PRelu", [In(x34), Init(rand(4, seed=1))], {}, {}),
    ("elu", "Elu", [In(x34)], {"alpha": 0.5}, {}),
    ("selu", "Selu", [In(x34)], {}, {}),
    ("celu", "Celu", [In(x34)], {"alpha": 2.0}, {}),
    ("hard_sigmoid", "HardSigmoid", [In(x34)], {"alpha": 0.3}, {}),
    ("hard_swish", "HardSwish", [In(rand(3, 4, low=-5, high=5))], {}, {}),
    ("softsign", "Softsign", [In(x34)], {}, {}),
    ("softplus", "Softplus", [In(rand(3, 4, low=-30, high=30))], {}, {}),
    ("mish", "Mish", [In(x34)], {}, {}),
    ("thresholded_relu", "ThresholdedRelu", [In(x34)], {"alpha": 0.5}, {}),
    ("shrink", "Shrink", [In(x34)], {"lambd": 0.5, "bias": 0.25}, {}),
    ("gelu_tanh", "Gelu", [In(x34)], {"approximate": "tanh"}, {"opset": 20}),
    ("tan", "Tan", [In(rand(5, low=-1, high=1))], {}, {}),
    ("asin", "Asin", [In(rand(5, low=-1, high=1))], {}, {}),
    ("acosh", "Acosh", [In(rand(5, low=1, high=4))], {}, {}),
    ("atanh", "Atanh", [In(rand(5, low=-0.9, high=0.9))], {}, {}),
    (
        "quantize_per_axis",
        "QuantizeLinear",
        [In(x34), Init(np.array([0.1, 0.2, 0.3], np.float32)), Init(np.array([0, 5, -3], np.int8))],
        {"axis": 0},
        {},
    ),
    (
        "dequantize",
        "DequantizeLinear",
        [In(np.array([0, 3, 128, 255], np.uint8)), Init(np.float32(0.5)), Init(np.uint8(128))],
        {},
        {},
    ),
    ("reduce_sum_axes_input", "ReduceSum", [In(x2345), Init(np.array([1, -1], i64))], {"keepdims": 0}, {}),
    ("reduce_mean_noop", "ReduceMean", [In(x34), Init(np.zeros(0, i64))], {"noop_with_empty_axes": 1}, {}),
    ("reduce_l2", "ReduceL2", [In(x2345), Init(np.array([2], i64))], {}, {}),
    ("reduce_log_sum_exp", "ReduceLogSumExp", [In(rand(3, 4, low=50, high=60)), Init(np.array([1], i64))], {}, {}),
    ("reduce_max_all", "ReduceMax", [In(x2345)], {"keepdims": 0}, {}),
    (
        "arg_max_last",
        "ArgMax",
        [In(np.array([[1, 3, 3], [2, 2, 0]], np.float32))],
        {"axis": 1, "select_last_index": 1},
        {},
    ),
    ("softmax_axis", "Softmax", [In(x2345)], {"axis": 1}, {}),
    ("log_softmax", "LogSoftmax", [In(x34)], {}, {}),
    ("hardmax", "Hardmax", [In(np.array([[1, 3, 3], [2, 2, 0]], np.float32))], {"axis": 1}, {}),
    ("cumsum_exclusive_reverse", "CumSum", [In(x34), Init(np.int64(1))], {"exclusive": 1, "reverse": 1}, {}),
    ("batch_norm", "BatchNormalization", [In(image), *(Init(rand(2, seed=s, low=0.5)) for s in range(4))], {}, {}),
    (
        "layer_norm_statistics",
        "LayerNormalization",
        [In(x2345), Init(rand(4, 5, seed=1)), Init(rand(4, 5, seed=2))],
        {"axis": 2},
        {"outputs": 3},
    ),
    ("layer_norm_broadcast_scale", "LayerNormalization", [In(x2345), Init(rand(5, seed=1))], {"axis": 2}, {}),
    (
        "group_norm",
        "GroupNormalization",
        [In(rand(2, 4, 3)), Init(rand(4, seed=1)), Init(rand(4, seed=2))],
        {"num_groups": 2},
        {"opset": 21},
    ),
    ("instance_norm", "InstanceNormalization", [In(image), Init(rand(2, seed=1)), Init(rand(2, seed=2))], {}, {}),
    ("lp_norm", "LpNormalization", [In(x34)], {"axis": 0, "p": 1}, {}),
    (
        "gemm_transposed",
        "Gemm",
        [In(rand(4, 3)), Init(rand(5, 4, seed=1)), Init(rand(5, seed=2))],
        {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
        {},
    ),
    ("matmul_batched", "MatMul", [In(rand(2, 3, 4)), In(rand(4, 5, seed=1))], {}, {}),
    (
        "conv_same_upper",
        "Conv",
        [In(image), Init(rand(3, 2, 3, 3, seed=1)), Init(rand(3, seed=2))],
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {},
    ),
    (
        "conv_grouped_dilated",
        "Conv",
        [In(rand(1, 4, 8, 8)), Init(rand(4, 2, 3, 3, seed=1))],
        {"group": 2, "dilations": [2, 1], "pads": [1, 0, 1, 2]},
        {},
    ),
    (
        "conv_transpose_output_shape",
        "ConvTranspose",
        [In(rand(1, 1, 3, 3)), Init(rand(1, 2, 3, 3, seed=1))],
        {"strides": [3, 2], "output_shape": [10, 8]},
        {},
    ),
    (
        "einsum_batched_matmul",
        "Einsum",
        [In(rand(2, 3, 4)), In(rand(2, 4, 5, seed=1))],
        {"equation": "bij,bjk->bik"},
        {},
    ),
    ("einsum_ellipsis_sum", "Einsum", [In(rand(2, 3, 4)), In(rand(4, seed=1))], {"equation": "...j,j->..."}, {}),
    ("einsum_implicit_transpose", "Einsum", [In(rand(3, 4))], {"equation": "ji"}, {}),
    ("max_pool_ceil", "MaxPool", [In(image)], {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}, {}),
    (
        "avg_pool_pads",
        "AveragePool",
        [In(image)],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {},
    ),
    ("lp_pool", "LpPool", [In(image)], {"kernel_shape": [2, 2], "p": 3}, {}),
    ("global_max_pool", "GlobalMaxPool", [In(image)], {}, {}),
    (
        "nll_loss_weighted_ignore",
        "NegativeLogLikelihoodLoss",
        [In(rand(3, 5, 2)), In(np.array([[0, 4], [1, 2], [4, 3]], i64)), Init(rand(5, low=0.5, seed=1))],
        {"ignore_index": 4},
        {},
    ),
    (
        "softmax_cross_entropy",
        "SoftmaxCrossEntropyLoss",
        [In(rand(3, 5)), In(np.array([0, 4, 2], i64))],
        {"reduction": "sum"},
        {"outputs": 2},
    ),
    ("reshape_zero_and_minus_one", "Reshape", [In(x2345), Init(np.array([0, -1, 5], i64))], {}, {}),
    ("transpose_default", "Transpose", [In(x2345)], {}, {}),
    ("expand_bidirectional", "Expand", [In(rand(3, 1)), Init(np.array([2, 1, 4], i64))], {}, {}),
    ("concat", "Concat", [In(x34), In(rand(2, 4, seed=1))], {"axis": 0}, {}),
    ("split_uneven", "Split", [In(rand(7, 2))], {"axis": 0, "num_outputs": 3}, {"outputs": 3}),
    ("split_sizes", "Split", [In(rand(2, 5)), Init(np.array([1, 4], i64))], {"axis": 1}, {"outputs": 2}),
    (
        "slice_negative_steps",
        "Slice",
        [
            In(x2345),
            Init(np.array([-1, 4], i64)),
            Init(np.array([0, -100], i64)),
            Init(np.array([3, 1], i64)),
            Init(np.array([-2, -1], i64)),
        ],
        {},
        {},
    ),
    ("gather_negative", "Gather", [In(x34), Init(np.array([[-1, 0]], i64))], {"axis": 1}, {}),
    ("gather_elements", "GatherElements", [In(x34), In(np.array([[0, 2], [1, 0]], i64))], {"axis": 1}, {}),
    (
        "scatter_elements_add",
        "ScatterElements",
        [In(x34), In(np.array([[0, 0], [1, 3]], i64)), In(rand(2, 2, seed=1))],
        {"axis": 1, "reduction": "add"},
        {},
    ),
    (
        "pad_reflect_axes",
        "Pad",
        [In(x34), Init(np.array([2, 1], i64)), None, Init(np.array([1], i64))],
        {"mode": "reflect"},
        {},
    ),
    ("pad_constant_value", "Pad", [In(x34), Init(np.array([1, 0, 0, 2], i64)), Init(np.float32(7))], {}, {}),
    ("squeeze", "Squeeze", [In(rand(3, 1, 4, 1)), Init(np.array([-1], i64))], {}, {}),
    ("unsqueeze", "Unsqueeze", [In(x34), Init(np.array([0, 3], i64))], {}, {}),
    ("flatten", "Flatten", [In(x2345)], {"axis": -1}, {}),
    ("tile", "Tile", [In(x34), Init(np.array([2, 1], i64))], {}, {}),
    ("depth_to_space_crd", "DepthToSpace", [In(rand(1, 8, 2, 3))], {"blocksize": 2, "mode": "CRD"}, {}),
    ("space_to_depth", "SpaceToDepth", [In(rand(1, 2, 4, 6))], {"blocksize": 2}, {}),
    ("trilu_lower", "Trilu", [In(rand(2, 4, 5)), Init(np.int64(-1))], {"upper": 0}, {}),
    (
        "one_hot",
        "OneHot",
        [In(np.array([0, 2, -1], i64)), Init(np.int64(4)), Init(np.array([0, 5], np.float32))],
        {"axis": 0},
        {},
    ),
    ("dropout_inference_mask", "Dropout", [In(x34)], {}, {"outputs": 2}),
    ("center_crop_pad", "CenterCropPad", [In(rand(5, 4)), Init(np.array([3, 7], i64))], {}, {}),
    ("eye_like", "EyeLike", [In(x34)], {"k": 1, "dtype": 7}, {}),
    ("constant_of_shape", "ConstantOfShape", [Init(np.array([2, 3], i64))], {}, {}),
    ("range", "Range", [Init(np.float32(1)), Init(np.float32(2)), Init(np.float32(0.25))], {}, {}),
    ("size", "Size", [In(x2345)], {}, {}),
    ("shape_start_end", "Shape", [In(x2345)], {"start": 1, "end": -1}, {}),
    (
        "resize_linear_half_pixel",
        "Resize",
        [In(image), None, Init(np.array([1, 1, 1.5, 0.5], np.float32))],
        {"mode": "linear"},
        {},
    ),
    (
        "resize_cubic_antialias_sizes",
        "Resize",
        [In(image), None, None, Init(np.array([1, 2, 4, 9], np.int64))],
        {"mode": "cubic", "antialias": 1},
        {},
    ),
    (
        "resize_nearest_axes_asymmetric",
        "Resize",
        [In(image), None, Init(np.array([2.0, 3.0], np.float32))],
        {"mode": "nearest", "axes": [2, 3], "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        {},
    ),
    (
        "attention_gqa_causal",
        "Attention",
        [In(rand(1, 4, 3, 8)), In(rand(1, 2, 5, 8, seed=1)), In(rand(1, 2, 5, 8, seed=2))],
        {"is_causal": 1},
        {"opset": 23},
    ),
    (
        "attention_3d_mask",
        "Attention",
        [In(rand(2, 3, 8)), In(rand(2, 4, 8, seed=1)), In(rand(2, 4, 8, seed=2)), In(rand(3, 4, seed=3) > -1)],
        {"q_num_heads": 2, "kv_num_heads": 2},
        {"opset": 23},
    ),
]


@pytest.mark.parametrize(("op", "operands", "attrs", "extra"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_node_matches_onnxruntime(op, operands, attrs, extra):
    model, feeds = M.node_model(op, operands, attrs, **extra)
    expected = M.onnxruntime_outputs(model, feeds)
    got = compiler.compile(model, target="reference")(*feeds)
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_shape_chain_folds_into_a_constant_reshape():
    """Shape -> Gather -> Concat -> Reshape: the shape is computed at import, so the graph holds
    one reshape of the input and no shape arithmetic."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])],
        [
            onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
            onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = compiler.compile(model, opt_level=1)  # before fusion wraps the reshape in a kernel
    assert [n.op for n in compiled.graph.nodes if n.op != "const"] == ["reshape"]
    x = rand(2, 3, 4)
    np.testing.assert_array_equal(compiled(x), x.reshape(2, 12))
