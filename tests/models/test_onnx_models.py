"""The reference models through the ONNX frontend: each exported by `torch.onnx.export` (the
torch.export-based exporter, which needs onnxscript) to a file, imported from that file, and run on
the reference target, matches torch's own output within rtol 1e-4, atol 1e-5 (f32 throughout;
the differences are float32 reassociation in matmuls, convolutions and normalisations)."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # torch.onnx.export's exporter needs it

import compiler  # noqa: E402


def _models():
    path = Path(__file__).with_name("models.py")
    spec = importlib.util.spec_from_file_location("kiln_reference_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODELS


MODELS = _models()


def export(module, inputs, path: Path) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=True, verbose=False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_model_matches_torch(name, tmp_path):
    module, inputs = MODELS[name]()
    path = tmp_path / f"{name}.onnx"
    export(module, inputs, path)
    compiled = compiler.compile(path, target="reference")
    got = compiled(*(x.numpy() for x in inputs))
    with torch.no_grad():
        expected = module(*inputs).numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_exported_model_takes_torch_tensors_and_returns_them(tmp_path):
    module, inputs = MODELS["mlp"]()
    path = tmp_path / "mlp.onnx"
    export(module, inputs, path)
    got = compiler.compile(path)(*inputs)
    assert isinstance(got, torch.Tensor)
    with torch.no_grad():
        torch.testing.assert_close(got, module(*inputs), rtol=1e-4, atol=1e-5)
