"""Dynamic shared memory through the whole CUDA path: the printer, the launch, NVRTC and the emulator.

A kernel whose shared buffers pass `backends.cuda.shared_memory.STATIC_SHARED_LIMIT` (48 KiB) takes them
from the launch's dynamic shared memory. The row templates' buffers are small, so the tests lower
the limit to 0 to send them that way, then check that NVRTC compiles the result (no static shared
memory left in ptxas's report) and that the emulator runs it, race-free, to the interpreter's
answer; a hand-written 64 KiB kernel (tests/runtime/test_cuda_emulator.py's histogram) compiles too.
"""

from __future__ import annotations

import numpy as np
import pytest

import backends.cuda.shared_memory
import compiler
import ir
from backends.cuda.program import resources
from runtime.cuda import CudaExecutor
from runtime.cuda_emulator import EmulatorDriver, emulator_unavailable
from tests.backends.cuda.kernels import requires_nvrtc
from tests.runtime.test_cuda_emulator import BINS, HISTOGRAM

pytestmark = requires_nvrtc


@pytest.fixture(scope="module")
def dynamic_rows():
    """Softmax then layer norm over rows of 4096 (block per row: shared slots for the warps'
    partial results), compiled with every shared buffer in dynamic shared memory."""
    import torch

    class Rows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(4096)

        def forward(self, x):
            return self.norm(torch.softmax(x, dim=-1) * 3.0)

    x = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends.cuda.shared_memory, "STATIC_SHARED_LIMIT", 0)
        model = compiler.compile(Rows(), (x,), target="cuda", arch="sm_80")
    return model, [x.numpy()]


def test_shared_buffers_past_the_static_limit_become_dynamic_and_their_launch_carries_the_size(dynamic_rows):
    model, _ = dynamic_rows
    source = model.program.code["cuda_source"]
    assert source.count("KILN_DYNAMIC_SHARED(kiln_shared);") == 2 and "__shared__" not in source
    sizes = [launch.shared_bytes for launch in model.program.launches]
    assert len(sizes) == 2 and all(0 < size <= 1024 for size in sizes)
    # NVRTC compiled it with no static shared memory left.
    assert all(r.shared_bytes == 0 for r in resources(model.program, "sm_80").values())


@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
@pytest.mark.parametrize("mode", ["plain", "race"])
def test_kernels_on_dynamic_shared_memory_match_the_interpreter_in_the_emulator(dynamic_rows, mode):
    model, inputs = dynamic_rows
    (got,) = CudaExecutor(model.program, driver=EmulatorDriver(model.program, mode)).run(inputs)
    np.testing.assert_allclose(got, ir.run(model.graph, inputs)[0], rtol=1e-5, atol=1e-5)


def test_nvrtc_compiles_atomics_and_64_kib_of_dynamic_shared_memory():
    from backends.cuda.nvrtc import compile_cuda

    binary = compile_cuda(HISTOGRAM.replace("BINS", str(BINS)), "sm_80", "histogram")
    assert binary.resources["k0_histogram"].shared_bytes == 0  # all of it dynamic: the launch's size


@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
def test_attention_tiles_past_48_kib_compile_and_match_the_interpreter_on_dynamic_shared_memory(monkeypatch):
    """Head dim 256: the template's default tiles take ~84 KiB of shared memory, which it shrinks to
    fit 48 KiB; allowed 99 KiB (sm_86's opt-in limit), it keeps them, the printer moves them to
    dynamic shared memory and NVRTC accepts the kernel (it rejects >48 KiB of static `__shared__`)."""
    import backends.cuda.templates_gpu_attention as attention
    from ir import DType
    from tests.backends.attention_cases import attention_graph, attention_inputs

    graph = attention_graph(8, 40, 256, DType.f32, causal=False, mask="bool")  # 40 keys: a partial tile
    monkeypatch.setattr(attention, "SHARED_LIMIT", 99 * 1024)
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    (launch,) = model.program.launches
    assert model.program.code["templates"][launch.kernel] == attention.TEMPLATE
    assert launch.shared_bytes > 48 * 1024
    inputs = attention_inputs(graph)
    (got,) = CudaExecutor(model.program, driver=EmulatorDriver(model.program, "race")).run(inputs)
    np.testing.assert_allclose(got, ir.run(graph, inputs)[0], rtol=1e-5, atol=1e-5)
