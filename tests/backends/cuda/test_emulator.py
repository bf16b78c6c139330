"""The generated CUDA C run on the CPU by the emulator (runtime/cuda_emulator.py), no GPU needed.

Every kernel of the model tests runs through the real `CudaExecutor` at the test shapes and matches
the graph interpreter: fp32 to 1e-5 (host libm against the interpreter's numpy: a few ulps), bf16
to 2e-2 relative (one bf16 ulp is 2^-8, and a rounding that differs once propagates), fp16 to 3e-3
(the same five ulps: one f16 ulp is 2^-11). The masked GPT block (layer norms, GEMMs, attention)
runs under ThreadSanitizer in every precision, and so do the block-per-row softmax and layer-norm
kernels (warp shuffles, shared memory, barriers); mutations of their source (a barrier dropped, a
store shifted past the end, a barrier one thread skips) are caught as a race, an out-of-bounds
store and a deadlock. (Tile-edge shapes, random graphs: test_emulator_kernels.py; mutations of
the GEMM and attention kernels: test_emulator_mutations.py.)

Cost per model test, CPU seconds on a loaded 2-core machine (g++ build, then the run): plain
1.0-2.3 + under 0.15 (a block's threads are fibers); race 1.4-2.9 + 0.7-3.6 (a TSan child process
per launch); bounds 1.8-5.0 + 0.2-1.2; NVRTC's compile, outside the emulator, 1-2 more.
"""

from __future__ import annotations

import dataclasses
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import compiler
import ir
from runtime.cuda import CudaExecutor
from runtime.cuda_emulator import (
    EmulatorDriver,
    KernelBoundsError,
    KernelDeadlockError,
    KernelRaceError,
    build,
    emulator_unavailable,
    kernel_signatures,
)
from tests.backends.cuda.kernels import requires_nvrtc

pytestmark = [
    requires_nvrtc,
    pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}"),
]

MODELS = ["mlp", "resnet_cnn", "transformer_encoder_layer", "gpt_decoder_block", "gpt_decoder_block_masked"]
TOLERANCE = {"fp32": (1e-5, 1e-5), "bf16": (2e-2, 2e-2), "fp16": (3e-3, 3e-3)}


@pytest.fixture(scope="module")
def model_programs():
    """(name, precision) -> (compiled model, example inputs as numpy); every emulator build made
    here at once, in parallel (g++ takes seconds per module)."""
    from tests.models.models import MODELS as BUILDERS

    compiled = {}
    for name in MODELS:
        module, inputs = BUILDERS[name]()
        for precision in TOLERANCE:
            model = compiler.compile(module, inputs, target="cuda", precision=precision, arch="sm_80")
            compiled[name, precision] = (model, [x.numpy() for x in inputs])
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda m: build(m.program.code["cuda_source"], m.program.code["prelude"], "plain",
                                      list(kernel_signatures(m.program))),
                      [model for model, _ in compiled.values()]))  # fmt: skip
    return compiled


@pytest.mark.slow  # ~45 s of CPU: fifteen NVRTC compiles and g++ builds (the fixture), then the runs
@pytest.mark.parametrize("precision", list(TOLERANCE))
@pytest.mark.parametrize("name", MODELS)
def test_every_kernel_of_the_model_tests_matches_the_interpreter_in_the_emulator(model_programs, name, precision):
    model, inputs = model_programs[name, precision]
    _check_model(model, inputs, precision, "plain")


@pytest.mark.slow  # race mode costs a TSan build and a child process per launch: ~5 s of CPU per model
@pytest.mark.parametrize("precision", list(TOLERANCE))
def test_the_gpt_block_is_race_free_under_thread_sanitizer(model_programs, precision):
    """Every template at once: layer norms (block reductions), tensor-core GEMMs (f16/bf16; FMA
    tiles in f32), the fused attention with its mask, pointwise epilogues."""
    model, inputs = model_programs["gpt_decoder_block_masked", precision]
    templates = set(model.program.code["templates"].values())
    assert {"rows.layer_norm", "attention.fma", "pointwise"} <= templates
    assert templates & {"gemm.mma", "gemm.fma"}
    _check_model(model, inputs, precision, "race")


def _check_model(model, inputs, precision: str, mode: str) -> None:
    executor = CudaExecutor(model.program, driver=EmulatorDriver(model.program, mode))
    got = executor.run(inputs)
    expected = ir.run(model.graph, inputs)
    rtol, atol = TOLERANCE[precision]
    assert len(got) == len(expected)
    for actual, wanted in zip(got, expected, strict=True):
        np.testing.assert_allclose(actual.astype(np.float64), np.asarray(wanted).astype(np.float64), rtol=rtol,
                                   atol=atol)  # fmt: skip


# -- the row kernels under ThreadSanitizer, and mutations ------------------------------------------


@pytest.fixture(scope="module")
def rows():
    """Softmax then layer norm over rows of 4096: a block per row, partial results through shared
    memory and barriers."""
    import torch

    class Rows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(4096)

        def forward(self, x):
            return self.norm(torch.softmax(x, dim=-1) * 3.0)

    x = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0))
    model = compiler.compile(Rows(), (x,), target="cuda", arch="sm_80")
    assert set(model.program.code["templates"].values()) == {"rows.softmax", "rows.layer_norm"}
    assert model.program.code["cuda_source"].count("__syncthreads();") == 4
    return model, [x.numpy()]


def _mutated(program, edit):
    source = program.code["cuda_source"]
    changed = edit(source)
    assert changed != source
    return dataclasses.replace(program, code={**program.code, "cuda_source": changed})


def test_the_row_kernels_are_race_free_and_correct_under_thread_sanitizer(rows):
    model, inputs = rows
    (got,) = CudaExecutor(model.program, driver=EmulatorDriver(model.program, "race")).run(inputs)
    np.testing.assert_allclose(got, ir.run(model.graph, inputs)[0], rtol=1e-5, atol=1e-5)


def test_a_dropped_barrier_is_reported_as_a_race_naming_both_lines(rows):
    model, inputs = rows
    # The first barrier of the softmax kernel: between the warps' stores to the shared slots and
    # the reads of them.
    program = _mutated(model.program, lambda source: source.replace("__syncthreads();", ";", 1))
    with pytest.raises(KernelRaceError, match=r"data race in kernel k0_\w+.*kiln_module\.cu:\d+ `.*_warps0\[") as error:
        CudaExecutor(program, driver=EmulatorDriver(program, "race")).run(inputs)
    assert len(re.findall(r"kiln_module\.cu:\d+ `", str(error.value).splitlines()[0])) == 2


def test_a_store_past_the_end_is_reported_in_bounds_mode_with_the_parameter_and_index(rows):
    model, inputs = rows

    def shift(source):  # the layer norm's output index, one element on
        return source.replace(
            "out00[row0 * 4096 + (k2 * 256 + lane0)] = y0;", "out00[row0 * 4096 + (k2 * 256 + lane0) + 1] = y0;"
        )

    program = _mutated(model.program, shift)
    (launch,) = (launch for launch in program.launches if launch.kernel.startswith("k1_"))
    position = launch.args.index(program.outputs[0])  # the layer norm's inputs come first
    with pytest.raises(
        KernelBoundsError,
        match=rf"out-of-bounds write in kernel k1_\w+: parameter {position} \(output k1_\w+_out0: float32\[2,4096\]\) "
        r"at flat element 8192 of 8192, at kiln_module\.cu:\d+ `out00\[",
    ):
        CudaExecutor(program, driver=EmulatorDriver(program, "bounds")).run(inputs)


def test_a_barrier_one_thread_skips_is_reported_as_a_deadlock_not_a_hang(rows):
    model, inputs = rows
    (threads,) = {math.prod(launch.block) for launch in model.program.launches if launch.kernel.startswith("k1_")}

    def skip(source):  # thread 0 skips the layer norm's last barrier and finishes without it
        head, _, tail = source.rpartition("__syncthreads();")
        return head + "if (threadIdx.x != 0) __syncthreads();" + tail

    program = _mutated(model.program, skip)
    with pytest.raises(
        KernelDeadlockError,
        match=rf"kernel k1_\w+, block \(0,0,0\): deadlock: {threads - 1} thread\(s\) wait at __syncthreads, 0 at a "
        r"warp shuffle, and 1 finished the kernel without reaching them",
    ):
        CudaExecutor(program, driver=EmulatorDriver(program, timeout=5.0)).run(inputs)


def test_int8_matmul_with_vnni_dot_products_is_exact_in_the_emulator():
    """The int8 GEMM printed as CUDA C (the tensor-core template, `kiln_mma_s8_u8s8`, with the zero
    point taken back through B's column sums): exact, which needs the printer's wrapping i32
    arithmetic (C's signed overflow is undefined). The dp4a form: tests/backends/cuda/test_gpu_quant.py."""
    from ir import DType, GraphBuilder

    rng = np.random.default_rng(0)
    builder = GraphBuilder("int8")
    a = builder.input("a", (8, 20), DType.u8)
    w = builder.constant(rng.integers(-128, 128, (20, 12)).astype(np.int8), "w")
    graph = builder.build(builder.op("matmul_integer", a, w, builder.constant(np.array(3, np.uint8), "za")))
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    assert "kiln_mma_s8_u8s8_x4(" in model.program.code["cuda_source"]
    x = rng.integers(0, 256, (8, 20)).astype(np.uint8)
    (got,) = CudaExecutor(model.program, driver=EmulatorDriver(model.program)).run([x])
    np.testing.assert_array_equal(got, ir.run(graph, [x])[0])
