"""The model tests' transformer encoder layer and GPT block (random weights) quantized in each int8
mode: close to torch's fp32 output (cosine >= 0.99), the CPU target equal to the reference target,
and the report in `.stats`; the trained PP-OCR recognizer, dynamically quantized, still reading
every rendered line (real weights, real inputs); and models quantized by ONNX Runtime's own quantizer
(QDQ format and quantize_dynamic) compiled onto the int8 GEMM and convolution, equal to ONNX Runtime's
results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import compiler  # noqa: E402

HERE = Path(__file__).parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = _load("kiln_reference_models", HERE / "models.py").MODELS


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", ["transformer_encoder_layer", "gpt_decoder_block"])
@pytest.mark.parametrize("precision", ["int8-weight", "int8-dynamic", "int8-static"])
def test_quantized_transformer_blocks_stay_close_to_fp32(name, precision):
    module, inputs = MODELS[name]()
    generator = torch.Generator().manual_seed(5)
    calibration = [tuple(torch.randn(x.shape, generator=generator) for x in inputs) for _ in range(2)]
    compiled = compiler.compile(
        module, inputs, target="reference", precision=precision,
        calibration=calibration if precision == "int8-static" else None,
    )  # fmt: skip
    with torch.no_grad():
        expected = module(*inputs).numpy()
    got = compiled(*inputs).numpy()
    assert cosine(got, expected) >= 0.99
    assert not np.array_equal(got, expected)  # it did quantize something
    report = compiled.stats["quantization"]
    assert report.quantized and report.accuracy[0].cosine >= 0.99
    inside = {n.op for fused in compiled.graph.nodes if fused.op == "fused" for n in fused.attrs["body"].nodes}
    assert inside & {"matmul_integer", "dequantize_linear"}


def test_a_user_keeps_ops_or_a_models_ends_in_float_or_quantizes_the_ends_too():
    module, inputs = MODELS["mlp"]()  # its first linear reads the model's input: an end the policy keeps

    def report(**options):
        compiled = compiler.compile(module, inputs, target="reference", precision="int8-dynamic", **options)
        return compiled.stats["quantization"]

    default = report()
    assert default.kept and all("keep_first_last" in k.reason for k in default.kept)
    every = report(keep_ends=False)
    assert len(every.quantized) == len(default.quantized) + len(default.kept) and not every.kept
    kept = report(keep_ends=False, keep_float=("gemm",))
    assert not kept.quantized and all("keep_ops" in k.reason for k in kept.kept)
    with pytest.raises(ValueError, match="for int8 precisions"):
        compiler.compile(module, inputs, target="reference", keep_float=("gemm",))


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8-static"])
def test_quantized_encoder_on_the_cpu_equals_the_reference_target(precision):
    module, inputs = MODELS["transformer_encoder_layer"]()
    calibration = [tuple(torch.randn_like(x) for x in inputs)]
    options = {"precision": precision, "calibration": calibration if precision == "int8-static" else None}
    cpu = compiler.compile(module, inputs, target="cpu", **options)
    reference = compiler.compile(module, inputs, target="reference", **options)
    np.testing.assert_allclose(cpu(*inputs).numpy(), reference(*inputs).numpy(), rtol=1e-5, atol=1e-5)


def test_dynamically_quantized_ocr_model_reads_every_line():
    path = HERE.parents[1] / ".cache/models/ch_PP-OCRv4_rec_infer.onnx"
    if not path.exists():
        pytest.skip("the trained models are fetched by scripts/fetch_models.py")
    pytest.importorskip("PIL")
    ocr = _load("kiln_ocr", HERE / "ocr.py")
    alphabet = ocr.characters(path)
    lines = [ocr.render_line(text) for text in ocr.LINES]
    compiled = compiler.compile(str(path), (lines[0],), target="reference", precision="int8-dynamic")
    assert len(compiled.stats["quantization"].quantized) >= 4
    assert [ocr.decode(compiled(x)[0], alphabet) for x in lines] == list(ocr.LINES)


# -- models quantized by ONNX Runtime's quantizer (QDQ format and quantize_dynamic) ----------------


def _ort_quantized(name: str, how: str, directory: Path, per_channel: bool = False) -> Path:
    """The model exported to ONNX, then quantized by onnxruntime.quantization (`how`: qdq or dynamic)."""
    pytest.importorskip("onnxscript")
    quantization = pytest.importorskip("onnxruntime.quantization")
    export = _load("kiln_onnx_model_tests", HERE / "test_onnx_models.py").export
    module, inputs = MODELS[name]()
    plain, quantized = directory / f"{name}.onnx", directory / f"{name}_{how}.onnx"
    export(module, inputs, plain)
    if how == "dynamic":
        quantization.quantize_dynamic(str(plain), str(quantized))
        return quantized
    import onnx

    input_name = onnx.load(str(plain)).graph.input[0].name
    generator = np.random.default_rng(3)
    sets = iter([{input_name: generator.standard_normal(tuple(inputs[0].shape)).astype(np.float32)} for _ in range(4)])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(sets, None)

    quantization.quantize_static(
        str(plain), str(quantized), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel
    )
    return quantized


def _ort_run(path: Path, x: np.ndarray, optimized: bool = True) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    if not optimized:  # ONNX's own Q/DQ semantics, without ORT's fused integer kernels
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _kernel_ops(compiled) -> list[str]:
    return [n.op for fused in compiled.graph.nodes if fused.op == "fused" for n in fused.attrs["body"].nodes]


@pytest.mark.parametrize("how", ["qdq", "dynamic"])
def test_onnx_runtime_quantized_mlp_runs_on_the_integer_kernel_and_matches_ort(how, tmp_path):
    path = _ort_quantized("mlp", how, tmp_path)
    x = np.random.default_rng(9).standard_normal((4, 32)).astype(np.float32)
    compiled = compiler.compile(path, target="cpu")
    ops = _kernel_ops(compiled)
    assert ops.count("matmul_integer") == 3 and not {"matmul", "gemm"} & set(ops)  # every layer on int8
    assert sum("dot4_u8s8" in kernel for kernel in compiled.kernels.values()) == 3  # the int8 GEMM template's
    np.testing.assert_allclose(np.asarray(compiled(x)), _ort_run(path, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("how", ["qdq", "dynamic"])
def test_onnx_runtime_quantized_cnn_runs_its_convolutions_as_conv_integer_and_matches_ort(how, tmp_path):
    """quantize_static (QDQ: int8 activations with zero points, weights per channel) and quantize_dynamic
    (ConvInteger) of the small ResNet: every conv becomes `conv_integer`. In the QDQ model the zero
    points are constants, folded away by `passes.qdq`, so each conv runs the int8 tile (dot4_u8s8); the
    dynamic model's run-time zero points take the exact i32 implicit GEMM."""
    path = _ort_quantized("resnet_cnn", how, tmp_path, per_channel=True)
    x = np.random.default_rng(9).standard_normal((2, 3, 16, 16)).astype(np.float32)
    compiled = compiler.compile(path, target="cpu")
    ops = _kernel_ops(compiled)
    assert ops.count("conv_integer") == 6 and "conv" not in ops  # stem, two per block, the shortcut
    if how == "qdq":  # the six convs and the classifier on the int8 tile
        assert sum("dot4_u8s8" in kernel for kernel in compiled.kernels.values()) == 7
    np.testing.assert_allclose(np.asarray(compiled(x)), _ort_run(path, x), rtol=0, atol=1e-5)


def test_onnx_runtime_qdq_encoder_per_channel_matches_onnx_semantics(tmp_path):
    path = _ort_quantized("transformer_encoder_layer", "qdq", tmp_path, per_channel=True)
    x = np.random.default_rng(9).standard_normal((2, 8, 32)).astype(np.float32)
    compiled = compiler.compile(path, target="reference")
    # The four projections (in, out, two feed-forward) on int8; attention's activation x activation stays float.
    assert _kernel_ops(compiled).count("matmul_integer") == 4
    np.testing.assert_allclose(np.asarray(compiled(x)), _ort_run(path, x, optimized=False), rtol=0, atol=1e-5)
    # ORT's fused kernels requantize in fixed point: a value on a rounding tie may move one quantum.
    np.testing.assert_allclose(np.asarray(compiled(x)), _ort_run(path, x), rtol=0, atol=0.1)
