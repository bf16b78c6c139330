"""The model tests' transformer encoder layer and GPT block (random weights) quantized in each int8
mode: close to torch's fp32 output (cosine >= 0.99), the CPU target equal to the reference target,
and the report in `.stats`; and the trained PP-OCR recognizer, dynamically quantized, still reading
every rendered line (real weights, real inputs)."""

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
