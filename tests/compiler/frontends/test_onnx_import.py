"""The ONNX frontend's loading and its errors: files, bytes and external data; opset conversion and
refusal; dynamic shapes fixed by input_shapes, example inputs or constant inputs; inputs by name;
and a table of bad models with the error each must give (every unsupported op at once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import compiler  # noqa: E402
from compiler.errors import (  # noqa: E402
    InputMismatchError,
    KilnError,
    ModelFormatError,
    ShapeError,
    UnsupportedOperatorError,
    UnsupportedOpsetError,
)
from compiler.frontends.onnx import import_onnx  # noqa: E402
from tests.compiler.frontends import onnx_models as M  # noqa: E402


def linear_model(opset: int = 18, batch: int | str = 2) -> onnx.ModelProto:
    """y = relu(x @ w + b) with w and b as initializers."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"])]
    nodes.append(helper.make_node("Relu", ["a"], ["y"], name="final_relu"))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def expected_linear(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return M.onnxruntime_outputs(model, [x])[0]


X = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)


# -- loading -------------------------------------------------------------------------------------


def test_model_proto_path_and_bytes_give_the_same_results(tmp_path):
    model = linear_model()
    path = tmp_path / "linear.onnx"
    onnx.save(model, path)
    expected = expected_linear(model, X)
    for source in (model, path, str(path)):
        np.testing.assert_allclose(compiler.compile(source)(X), expected, rtol=1e-6)
    from_bytes = compiler.compile(import_onnx(model.SerializeToString()).graph)
    np.testing.assert_allclose(from_bytes(X), expected, rtol=1e-6)


def test_initializers_become_named_constants_and_sources_name_the_nodes():
    graph = import_onnx(linear_model()).graph
    assert set(graph.constants) == {"w", "b"}
    assert [n.source for n in graph.nodes if n.op == "relu"] == ["final_relu"]
    assert [n.source for n in graph.nodes if n.op == "matmul"] == ["MatMul#0"]


def test_external_data_round_trip(tmp_path):
    model = linear_model()
    expected = expected_linear(model, X)
    path = tmp_path / "external.onnx"
    onnx.save(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    assert (tmp_path / "weights.bin").stat().st_size == (8 * 4 + 4) * 4
    np.testing.assert_allclose(compiler.compile(path)(X), expected, rtol=1e-6)


def test_an_old_opset_is_converted():
    """Opset 9's Unsqueeze takes axes as an attribute; conversion to opset 13 makes them an input."""
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]), helper.make_node("Relu", ["u"], ["y"])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(compiler.compile(model)(x), [[0, 0, 2]])


def test_inputs_by_onnx_name_and_outputs_as_a_tuple():
    nodes = [helper.make_node("Sub", ["a", "b"], ["d"]), helper.make_node("Neg", ["d"], ["n"])]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("d", "n")],
    )
    compiled = compiler.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    a, b = np.array([3, 4], np.float32), np.array([1, 1], np.float32)
    d, n = compiled(b=b, a=a)
    np.testing.assert_array_equal(d, [2, 3])
    np.testing.assert_array_equal(n, [-2, -3])
    with pytest.raises(InputMismatchError, match="no input"):
        compiled(a=a, c=b)


def test_dynamic_dims_are_fixed_by_input_shapes_or_example_inputs():
    model = linear_model(batch="batch")
    x = np.ones((5, 8), np.float32)
    assert import_onnx(model, input_shapes={"x": (5, 8)}).graph.inputs[0].type.shape == (5, 8)
    compiled = compiler.compile(import_onnx(model, example_inputs=[x]).graph)
    np.testing.assert_allclose(compiled(x), expected_linear(model, x), rtol=1e-6)


def test_a_dimension_declared_as_minus_one_is_dynamic():
    """paddle2onnx (the PP-OCR models) declares dynamic dimensions with dim_value -1."""
    model = linear_model()
    for declared in (model.graph.input[0], model.graph.output[0]):
        declared.type.tensor_type.shape.dim[0].dim_value = -1
    x = np.ones((3, 8), np.float32)
    assert import_onnx(model, example_inputs=[x]).graph.inputs[0].type.shape == (3, 8)
    with pytest.raises(ShapeError, match=r"dynamic dimensions \(\[\?, 8\]\)"):
        import_onnx(model)


def test_constant_inputs_fix_a_shape_computed_from_an_input():
    model, feeds = M.node_model("Reshape", [M.In(np.arange(6, dtype=np.float32)), M.In(np.array([3, 2]))])
    with pytest.raises(ShapeError, match=r"computed at run time.*model input\(s\) \['in1'\].*constant_inputs"):
        import_onnx(model)
    imported = import_onnx(model, constant_inputs={"in1": np.array([3, 2])})
    assert [v.name for v in imported.graph.inputs] == ["in0"]
    np.testing.assert_array_equal(compiler.compile(imported.graph)(feeds[0]), feeds[0].reshape(3, 2))


# -- errors --------------------------------------------------------------------------------------


def _unknown_ops_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("StringNormalizer", ["s"], ["t"], name="normalize"),
        helper.make_node("NonZero", ["a"], ["b"], name="nz1"),
        helper.make_node("NonZero", ["x"], ["c"], name="nz2"),
        helper.make_node("FancyOp", ["x"], ["d"], domain="com.example", name="fancy"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("s", TensorProto.STRING, [2]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.INT64, [1, None]) for n in ("b", "c")],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _too_new_opset() -> onnx.ModelProto:
    model = linear_model()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    return model


def _failing_checker() -> onnx.ModelProto:
    model = linear_model()
    model.graph.node[0].input[1] = "missing_weight"
    return model


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(linear_model().SerializeToString()[:-20])
    return path


def _not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n")
    return path


def _dynamic_without_shapes(_tmp_path: Path) -> onnx.ModelProto:
    return linear_model(batch="batch")


def _dtype_the_ir_lacks(_tmp_path: Path) -> onnx.ModelProto:
    return M.node_model("Abs", [M.In(np.array([1, 2], np.uint16))])[0]


def _unsupported_attribute(_tmp_path: Path) -> onnx.ModelProto:
    return M.node_model("Pad", [M.In(np.ones((2, 2), np.float32)), M.Init(np.array([1, 1, 1, 1]))], {"mode": "wrap"})[0]


BAD_MODELS = [
    (lambda tmp: _truncated(tmp), ModelFormatError, "not a readable ONNX model"),
    (lambda tmp: _not_a_model(tmp), ModelFormatError, "not (a readable ONNX|an ONNX) model"),
    (lambda tmp: tmp / "missing.onnx", ModelFormatError, "does not exist"),
    (lambda tmp: _failing_checker(), ModelFormatError, "onnx.checker"),
    (lambda tmp: _too_new_opset(), UnsupportedOpsetError, r"opset \d+, newer than"),
    (_dynamic_without_shapes, ShapeError, r"input 'x' has dynamic dimensions \(\[batch, 8\]\).*input_shapes"),
    (_dtype_the_ir_lacks, UnsupportedOperatorError, r"uint16 \(no IR dtype\) tensors x1: in0"),
    (_unsupported_attribute, UnsupportedOperatorError, r"Pad \(mode=wrap\) x1"),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD_MODELS, ids=[e[2][:30] for e in BAD_MODELS])
def test_bad_models_get_their_own_clear_error(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        compiler.compile(make(tmp_path))


@pytest.mark.parametrize("data", [b"\x00\x01garbage", b"", linear_model().SerializeToString()[:-20]])
def test_bytes_that_are_not_a_model(data):
    with pytest.raises(ModelFormatError, match=r"not (a readable ONNX|an ONNX) model"):
        import_onnx(data)


def test_every_unsupported_op_is_listed_at_once_with_counts_and_node_names():
    with pytest.raises(UnsupportedOperatorError) as caught:
        compiler.compile(_unknown_ops_model())
    text = str(caught.value)
    assert "NonZero x2: nz1, nz2" in text
    assert "StringNormalizer x1: normalize" in text
    assert "com.example::FancyOp x1: fancy" in text
    assert "string (no IR dtype) tensors x1: s" in text
    assert {u.op for u in caught.value.unsupported} >= {"NonZero", "StringNormalizer", "com.example::FancyOp"}


def test_a_conversion_failure_is_an_unsupported_opset():
    """Opset 7's Upsample with dynamic scales has no opset-13 form the converter can write."""
    graph = helper.make_graph(
        [helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 2.0], mode="bilinear")],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    with pytest.raises(KilnError) as caught:
        compiler.compile(model)
    assert isinstance(caught.value, UnsupportedOpsetError | UnsupportedOperatorError)


def test_a_shape_error_names_the_model_node():
    model, _ = M.node_model("MatMul", [M.In(np.ones((2, 3), np.float32)), M.Init(np.ones((4, 5), np.float32))])
    model.graph.node[0].name = "project"
    model.graph.output[0].type.tensor_type.shape.Clear()
    with pytest.raises((ShapeError, ModelFormatError), match=r"project|MatMul|contracted|Incompatible"):
        compiler.compile(model)
