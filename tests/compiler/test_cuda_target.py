"""compile(..., target="cuda") end to end.

Without a GPU (here and in CI): the model tests compile (program built, every kernel compiled by
NVRTC with a clean ptxas report), the compiled model and its saved program carry everything a GPU
needs, calling it raises an error that names what is missing, and `irdump --target cuda` prints
each kernel's kernel IR, CUDA C or PTX with its resource report.

On a GPU (`pytest -m gpu`, skipped without one): the model tests against torch (fp32 tight,
fp16/bf16 loose), random graphs against the interpreter, numpy and torch-tensor I/O (on torch's
default stream and on another), and a save/load round trip.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

import compiler
import ir
from compiler.irdump import main as irdump
from runtime.cuda import cuda_unavailable
from tests.backends.cuda.kernels import requires_nvrtc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mlp.kiln"
MODELS = ["mlp", "resnet_cnn", "transformer_encoder_layer", "gpt_decoder_block", "gpt_decoder_block_masked"]
REGISTERS_PER_SM = 65536

CUDA_MISSING = cuda_unavailable()
requires_gpu = pytest.mark.skipif(CUDA_MISSING is not None, reason=f"needs a GPU: {CUDA_MISSING}")


@functools.cache
def _model(name: str):
    """(module, example inputs, imported graph): torch export once per model and process."""
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    import models

    from compiler.frontends import import_model

    module, inputs = models.MODELS[name]()
    return module, inputs, import_model(module, inputs).graph


@pytest.fixture
def no_pycuda(monkeypatch):
    """This machine as one without pycuda, whatever it has."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycuda" else find_spec(name, *a))


# -- without a GPU ---------------------------------------------------------------------------------


@requires_nvrtc
@pytest.mark.parametrize("name", MODELS)
def test_the_model_tests_compile_for_cuda_with_every_kernel_within_limits(name):
    _, _, graph = _model(name)
    compiled = compiler.compile(graph, target="cuda", arch="sm_90")  # sm_80 too: tests/backends/cuda/test_nvrtc
    program = compiled.program
    # Groups with equal bodies (the GPT block's two layer norms, ...) launch one shared kernel.
    assert program.target == "cuda" and {launch.kernel for launch in program.launches} == set(compiled.kernels)
    assert len(compiled.kernels) > 0
    report = compiled.stats["cuda"]["sm_90"]
    for launch in program.launches:
        source, resources = compiled.kernels[launch.kernel], report[launch.kernel]
        assert 'extern "C" __global__' in source and f" {launch.kernel}(" in source
        threads = launch.block[0] * launch.block[1] * launch.block[2]
        assert resources.spill_stores == resources.spill_loads == 0, f"{launch.kernel} spills: {resources}"
        assert resources.registers * threads <= REGISTERS_PER_SM, f"{launch.kernel}: {resources}, block {launch.block}"


@requires_nvrtc
def test_calling_without_pycuda_names_what_to_install_and_compiling_did_not_need_it(no_pycuda):
    module, (x,), _ = _model("mlp")
    compiled = compiler.compile(module, (x,), target="cuda", precision="fp16")
    assert compiled.executor is None and set(compiled.program.code["cubins"]) == {"sm_80", "sm_90"}
    with pytest.raises(
        compiler.errors.CudaUnavailableError, match=r"pip install 'kiln\[cuda\]' on a machine with a GPU"
    ):
        compiled(x)
    with pytest.raises(compiler.errors.KilnError):  # also a KilnError, and the runtime's own error
        compiled(x.numpy())
    with pytest.raises(compiler.errors.InputMismatchError, match="expects f32"):  # checked before the GPU is needed
        compiled(x.double())


@requires_nvrtc
def test_the_saved_program_loads_with_its_cubins_and_reports_the_same_error(tmp_path, no_pycuda):
    _, (x,), graph = _model("mlp")
    compiled = compiler.compile(graph, target="cuda", arch="sm_90")
    compiled.save(str(tmp_path / "mlp.kiln-program"))
    loaded = compiler.load(str(tmp_path / "mlp.kiln-program"))
    assert loaded.target == "cuda" and loaded.program.code == compiled.program.code
    assert loaded.program.launches == compiled.program.launches
    with pytest.raises(compiler.errors.CudaUnavailableError, match="needs pycuda"):
        loaded(x.numpy())


@requires_nvrtc
def test_a_missing_nvrtc_is_reported_at_compile(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    graph = ir.parse_graph(EXAMPLE.read_text())
    with pytest.raises(compiler.errors.NvrtcMissingError, match="nvidia-cuda-nvrtc"):
        compiler.compile(graph, target="cuda")


@requires_nvrtc
def test_irdump_prints_each_cuda_kernel_with_its_resource_report(capsys):
    assert irdump([str(EXAMPLE), "-O2", "--target", "cuda", "--emit", "cuda"]) == 0
    cuda = capsys.readouterr().out
    kernels = cuda.count('extern "C" __global__')
    assert kernels >= 2 and cuda.count("#   sm_80: ") == cuda.count("#   sm_90: ") == kernels
    assert "0+0 bytes spilled" in cuda and "registers" in cuda
    assert irdump([str(EXAMPLE), "--target", "cuda", "--emit", "loop", "--arch", "sm_90"]) == 0
    loop = capsys.readouterr().out
    assert loop.count("kernel k") == kernels and "block.x for" in loop and "thread.x for" in loop
    assert "#   sm_80: " not in loop and loop.count("#   sm_90: ") == kernels
    assert irdump([str(EXAMPLE), "--target", "cuda", "--emit", "ptx", "--arch", "sm_80"]) == 0
    ptx = capsys.readouterr().out
    assert ".target sm_80" in ptx and ptx.count(".entry k") == kernels
    assert irdump([str(EXAMPLE), "--target", "cuda", "--emit", "llvm"]) == 2
    assert "--target cuda: loop, cuda, ptx" in capsys.readouterr().err


# -- on a GPU --------------------------------------------------------------------------------------


def _device_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


TOLERANCE = {"fp32": (1e-4, 1e-5), "fp16": (2e-2, 2e-2), "bf16": (8e-2, 8e-2)}


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_gpu_model_tests_match_torch(name, precision):
    import torch

    module, inputs, _ = _model(name)
    compiled = compiler.compile(module, inputs, target="cuda", precision=precision, arch=_device_arch())
    with torch.no_grad():
        expected = module(*inputs)
    rtol, atol = TOLERANCE[precision]
    torch.testing.assert_close(compiled(*inputs), expected, rtol=rtol, atol=atol)  # CPU tensors: copies
    on_gpu = compiled(*(x.cuda() for x in inputs))  # CUDA tensors: no copies, torch's stream
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), expected, rtol=rtol, atol=atol)


@pytest.mark.gpu
@requires_gpu
def test_gpu_random_graphs_match_the_interpreter():
    from hypothesis import given, settings

    from ir.testing import graphs_with_inputs
    from tests.backends.cpu.test_cpu_target import assert_close_to_interpreter

    arch = _device_arch()

    @settings(max_examples=50)
    @given(graphs_with_inputs(max_nodes=6, max_dim=4))
    def check(drawn):
        graph, inputs = drawn
        outputs = compiler.compile(graph, target="cuda", arch=arch)(*inputs)
        assert_close_to_interpreter(graph, inputs, list(outputs) if isinstance(outputs, tuple) else [outputs])

    check()


@pytest.mark.gpu
@requires_gpu
def test_gpu_tensors_on_another_stream_and_a_save_load_round_trip(tmp_path):
    import torch

    module, (x,), _ = _model("gpt_decoder_block")
    compiled = compiler.compile(module, (x,), target="cuda")
    expected = compiled(x.cuda())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = x.cuda() * 1.0  # queued on the side stream: the model must wait for it
        got = compiled(y)
    torch.cuda.synchronize()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    compiled.save(str(tmp_path / "gpt.kiln-program"))
    loaded = compiler.load(str(tmp_path / "gpt.kiln-program"))
    torch.testing.assert_close(loaded(x.cuda()), expected, rtol=0, atol=0)
    np.testing.assert_array_equal(loaded(x.numpy()), expected.cpu().numpy())
    with pytest.raises(compiler.errors.InputMismatchError, match="expects f32"):
        loaded(x.cuda().half())


@pytest.mark.gpu
@requires_gpu
def test_gpu_a_saved_program_runs_with_only_the_runtime(tmp_path):
    import subprocess

    _, (x,), graph = _model("mlp")
    compiled = compiler.compile(graph, target="cuda")
    compiled.save(str(tmp_path / "mlp.kiln-program"))
    script = (
        "import sys, numpy as np, runtime\n"
        f"(y,) = runtime.load_executor({str(tmp_path / 'mlp.kiln-program')!r}).run([np.load(sys.argv[1])])\n"
        "np.save(sys.argv[2], y)\n"
        "print([m for m in ('ir', 'passes', 'backends', 'compiler', 'torch') if m in sys.modules])\n"
    )
    np.save(tmp_path / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), compiled(x.numpy()))
