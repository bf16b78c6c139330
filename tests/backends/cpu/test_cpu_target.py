"""compile(..., target="cpu") end to end: random graphs and the model tests against the
interpreter and torch, and a saved program running in a process that imports only runtime."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import compiler
import ir
from ir import DType
from ir.testing import graphs_with_inputs

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "models"))
import models  # noqa: E402


def assert_close_to_interpreter(graph, inputs, compiled_outputs):
    expected = ir.run(graph, inputs)
    for got, want, value in zip(compiled_outputs, expected, graph.outputs):
        assert got.dtype == want.dtype and got.shape == want.shape
        if value.type.dtype.is_float:
            # formulas (gelu, erf, sigmoid) may round differently from numpy's; one or two ulps of the storage type
            eps = float(np.finfo(np.float32 if value.type.dtype in (DType.bf16,) else want.dtype).eps)
            eps = 2**-7 if value.type.dtype == DType.bf16 else eps
            tolerance = 8 * eps
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=tolerance, atol=tolerance, equal_nan=True
            )
        else:
            np.testing.assert_array_equal(got, want)


@settings(max_examples=40)
@given(graphs_with_inputs(max_nodes=6, max_dim=4))
def test_random_graphs_compile_for_the_cpu_and_match_the_interpreter(drawn):
    graph, inputs = drawn
    compiled = compiler.compile(graph, target="cpu")
    outputs = compiled(*inputs)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    assert_close_to_interpreter(graph, inputs, outputs)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_tests_compile_for_the_cpu_and_match_torch(name):
    module, example_inputs = models.MODELS[name]()
    compiled = compiler.compile(module, example_inputs, target="cpu")
    with torch.no_grad():
        expected = module(*example_inputs)
    got = compiled(*example_inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert all(k.startswith("kernel ") for k in compiled.kernels.values())


SAVED_RUN = """
import sys
import numpy as np
import runtime
executor = runtime.load_executor(sys.argv[1])
(y,) = executor.run([np.load(sys.argv[2])])
np.save(sys.argv[3], y)
leaked = [m for m in ("ir", "passes", "backends", "compiler", "torch") if m in sys.modules]
print(leaked)
"""


def test_a_saved_program_runs_in_a_fresh_process_with_only_the_runtime(tmp_path):
    module, (x,) = models.MODELS["mlp"]()
    compiled = compiler.compile(module, (x,), target="cpu")
    compiled.program.save(tmp_path / "mlp.kiln-program")
    np.save(tmp_path / "x.npy", x.numpy())
    result = subprocess.run(
        [sys.executable, "-c", SAVED_RUN, str(tmp_path / "mlp.kiln-program"), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), compiled(x).numpy())


def test_wrong_inputs_are_refused_before_running():
    module, (x,) = models.MODELS["mlp"]()
    compiled = compiler.compile(module, (x,), target="cpu")
    with pytest.raises(compiler.errors.InputMismatchError, match="expects f32"):
        compiled(x.double())


def test_compiler_save_and_load_round_trip(tmp_path):
    module, (x,) = models.MODELS["gpt_decoder_block"]()
    compiled = compiler.compile(module, (x,), target="cpu", threads=1)
    compiled.save(str(tmp_path / "gpt.kiln-program"))
    loaded = compiler.load(str(tmp_path / "gpt.kiln-program"), threads=2)
    torch.testing.assert_close(loaded(x), compiled(x), rtol=0, atol=0)
    np.testing.assert_array_equal(loaded(x.numpy()), compiled(x).numpy())
    with pytest.raises(compiler.errors.InputMismatchError, match="expects f32"):
        loaded(x.numpy().astype(np.float64))
    with pytest.raises(ValueError, match="no program to save"):
        compiler.compile(module, (x,), target="reference").save(str(tmp_path / "ref"))
