"""CUDA-graph capture and replay in the CUDA executor (`CudaExecutor(cuda_graph=True)`,
`compile(..., target="cuda", cuda_graph=True)`).

Without a GPU: the tests' fake device and the CPU emulator record the launches a capture queues
and replay them (`runtime.cuda_driver.RecordedGraphs`), so the executor's side is checked: one
warm-up run launch by launch, then one capture, then replays only, with results that follow each
run's inputs (the graph holds the staging slots' pointers), the device-pointer path copying in and
out around the replay, and nothing but launches inside a capture. On a GPU (`pytest -m gpu`): the
same results with and without the graph, and the time per call of each, printed (not asserted:
timing belongs in benchmarks/). Nothing here has been run on a GPU yet.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import pytest

import ir
from runtime import BufferSpec, Launch, Program
from runtime.cuda import EMULATE_VARIABLE, CudaExecutor
from runtime.cuda_driver import CAPTURE_STREAM, CudaDriverError, RecordedGraphs
from runtime.cuda_emulator import EmulatorDriver, emulator_unavailable
from runtime.cuda_pycuda import cuda_unavailable
from tests.backends.cuda.kernels import requires_nvrtc
from tests.runtime.test_cuda_runtime import FakeDriver, _block_graph, _cuda_program

PRELUDE = Path(__file__).parents[2] / "backends" / "cuda" / "prelude.h"


def _executor():
    graph = _block_graph()
    program, kernels = _cuda_program(graph)
    driver = FakeDriver(kernels)
    return graph, program, driver, CudaExecutor(program, driver=driver, cuda_graph=True)


def _inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 6)).astype(np.float32)


def test_runs_replay_one_graph_captured_after_one_warm_up_run():
    graph, program, driver, executor = _executor()
    kernels = [launch.kernel for launch in program.launches]
    logs = []
    for seed in range(3):
        driver.log.clear()
        x = _inputs(seed)
        for got, want in zip(executor.run([x]), ir.run(graph, [x]), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        logs.append([entry for entry in driver.log if entry[0] in ("launch", "capture", "record", "replay")])
    warm_up, captured, replayed = logs
    assert warm_up == [("launch", k, launch.grid, launch.block, None) for k, launch in zip(kernels, program.launches)]
    assert captured[0] == ("capture",)
    assert captured[1 : 1 + len(kernels)] == [("record", k, CAPTURE_STREAM) for k in kernels]
    assert captured[1 + len(kernels)] == ("replay", len(kernels), None)
    assert replayed[0] == ("replay", len(kernels), None)
    assert [entry[0] for entry in replayed].count("capture") == 0


def test_device_pointers_are_copied_into_the_graphs_slots_and_its_outputs_out():
    graph, program, driver, executor = _executor()
    specs = program.output_specs
    with driver.activate():
        source = driver.allocate(4 * 6 * 4)
        destinations = [driver.allocate(spec.nbytes) for spec in specs]
    for seed in range(3):  # warm-up, capture, replay
        x = _inputs(seed)
        with driver.activate():
            driver.upload(source, x.view(np.uint8).reshape(-1))
        driver.log.clear()
        executor.run_on_device([source], destinations, stream="stream")
        with driver.activate():
            got = [driver._at(p, s.nbytes).view(s.numpy_dtype).reshape(s.shape) for p, s in zip(destinations, specs)]
        for g, want in zip(got, ir.run(graph, [x]), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)
        copies = [entry for entry in driver.log if entry[0] == "copy"]
        assert [entry[1] for entry in copies] == [x.nbytes, *(spec.nbytes for spec in specs)]
        assert {entry[-1] for entry in copies} == {"stream"}
        assert not [entry for entry in driver.log if entry[0] in ("upload", "download")]
        allocated = [entry for entry in driver.log if entry[0] == "allocate"]
        assert len(allocated) == (1 if seed == 0 else 0)  # the staging slots, at the first run only
    assert driver.log.count(("replay", len(program.launches), "stream")) == 1


def test_the_graph_is_freed_with_the_executor():
    _, program, driver, executor = _executor()
    for seed in range(2):
        executor.run([_inputs(seed)])
    del executor
    gc.collect()
    assert ("free graph", len(program.launches)) in driver.log


def test_a_capture_holds_launches_only_and_a_failed_one_leaves_the_recorder_usable():
    launched = []
    graphs = RecordedGraphs(lambda *launch: launched.append(launch))

    def launches(stream):
        for k in range(3):
            assert graphs.record(f"k{k}", (k, 1, 1), (32, 1, 1), 0, [k])

    graph = graphs.capture(launches)
    assert len(graph) == 3 and launched == [] and not graphs.capturing
    graphs.replay(graph, "stream")
    assert launched == [(f"k{k}", (k, 1, 1), (32, 1, 1), 0, (k,), "stream") for k in range(3)]
    with pytest.raises(CudaDriverError, match="a copy on the device during the capture"):
        graphs.capture(lambda stream: graphs.refuse("copy on the device"))
    with pytest.raises(CudaDriverError, match="already in progress"):
        graphs.capture(lambda stream: graphs.capture(launches))
    assert not graphs.capturing and not graphs.record("k", (1, 1, 1), (1, 1, 1), 0, [])


# -- the CPU emulator: the printed CUDA C, replayed -------------------------------------------------

TWO_KERNELS = """
#include "prelude.h"

extern "C" __global__ void __launch_bounds__(32, 1) k0_double(const float* __restrict__ x, float* __restrict__ h) {
  h[threadIdx.x] = x[threadIdx.x] * 2.0f;
}

extern "C" __global__ void __launch_bounds__(32, 1) k1_increment(const float* __restrict__ h, float* __restrict__ y) {
  y[threadIdx.x] = h[threadIdx.x] + 1.0f;
}
"""


@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
def test_the_emulator_replays_a_captured_program_on_each_runs_inputs():
    buffers = (
        BufferSpec("x", "float32", (32,), "input"),
        BufferSpec("h", "float32", (32,), "intermediate", offset=0),
        BufferSpec("y", "float32", (32,), "output"),
    )
    launches = tuple(
        Launch(name, args, writes=(args[1],), grid=(1, 1, 1), block=(32, 1, 1))
        for name, args in (("k0_double", (0, 1)), ("k1_increment", (1, 2)))
    )
    code = {"cuda_source": TWO_KERNELS, "prelude": PRELUDE.read_text(), "cubins": {"sm_80": ""}}
    program = Program(name="two", buffers=buffers, inputs=(0,), outputs=(2,), constants={}, launches=launches,
                      arena_bytes=128, target="cuda", code=code)  # fmt: skip
    driver = EmulatorDriver(program)
    executor = CudaExecutor(program, driver=driver, cuda_graph=True)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(32).astype(np.float32)
        (y,) = executor.run([x])
        np.testing.assert_array_equal(y, x * 2 + 1)
    assert executor._graph is not None and len(executor._graph) == 2


@requires_nvrtc
@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
def test_compile_and_load_hand_the_option_to_the_executor(monkeypatch, tmp_path):
    import compiler

    monkeypatch.setenv(EMULATE_VARIABLE, "1")
    graph = ir.parse_graph((Path(__file__).parents[2] / "examples" / "mlp.kiln").read_text())
    compiled = compiler.compile(graph, target="cuda", arch="sm_90", cuda_graph=True)
    compiled.save(str(tmp_path / "mlp.kiln-program"))
    loaded = compiler.load(str(tmp_path / "mlp.kiln-program"), cuda_graph=True)
    rng = np.random.default_rng(0)
    for model in (compiled, loaded):
        for _ in range(3):
            x = rng.standard_normal(graph.inputs[0].type.shape).astype(np.float32)
            got = model(x)
            for g, want in zip(got if isinstance(got, tuple) else [got], ir.run(graph, [x]), strict=True):
                np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
        executor = model.load_executor()
        assert executor.cuda_graph and len(executor._graph) == len(executor.program.launches)
    assert not compiler.load(str(tmp_path / "mlp.kiln-program")).load_executor().cuda_graph


# -- on a GPU --------------------------------------------------------------------------------------

CUDA_MISSING = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_MISSING is not None, reason=f"needs a GPU: {CUDA_MISSING}")
def test_gpu_a_graph_gives_the_same_results_and_its_time_per_call_is_printed():
    import sys

    import torch

    import compiler

    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    import models

    module, (x,) = models.MODELS["gpt_decoder_block"]()
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    plain = compiler.compile(module, (x,), target="cuda", arch=arch)
    graphed = compiler.compile(module, (x,), target="cuda", arch=arch, cuda_graph=True)
    on_gpu = x.cuda()
    expected = plain(on_gpu)
    for _ in range(3):  # warm-up, capture, replay
        torch.testing.assert_close(graphed(on_gpu), expected, rtol=0, atol=0)
    np.testing.assert_array_equal(graphed(x.numpy()), expected.cpu().numpy())
    timings = {}
    for name, model in (("launches", plain), ("graph", graphed)):
        executor = model.load_executor()
        output = torch.empty_like(expected)
        for _ in range(10):
            executor.run_on_device([on_gpu.data_ptr()], [output.data_ptr()])
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(200):
            executor.run_on_device([on_gpu.data_ptr()], [output.data_ptr()])
        torch.cuda.synchronize()
        timings[name] = (time.perf_counter() - started) / 200 * 1e6
        torch.testing.assert_close(output, expected, rtol=0, atol=0)
    kernels = len(plain.program.launches)
    launches, replayed = timings["launches"], timings["graph"]
    print(f"\ngpt_decoder_block ({kernels} kernels) on {torch.cuda.get_device_name()}: {launches:.1f} us per "
          f"call launch by launch, {replayed:.1f} us replaying a CUDA graph")  # fmt: skip
