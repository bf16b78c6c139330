"""The CUDA executor without a GPU: a fake driver records what the executor asks of CUDA
(allocations, copies, launches) and runs each launched kernel with the kernel-IR interpreter on
its fake device memory, so the memory plan, the constants, the argument packing, the staging of
numpy inputs and outputs and the device-pointer path are checked end to end against the graph
interpreter. The pycuda layer itself (`PycudaDriver`) is checked on a GPU (tests marked gpu)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys

import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder
from ir.loop import Kernel, run_lockstep
from passes import PassManager, parse_pipeline
from runtime import Launch, load
from runtime.cuda import (
    CudaExecutor,
    CudaUnavailableError,
    LaunchEntry,
    PycudaDriver,
    launch_table,
    pack,
    select_architecture,
    slot_buffers,
)
from runtime.cuda_driver import RecordedGraphs
from runtime.errors import CodeCompilationError, InputMismatchError, ProgramError
from tests.backends.cuda.kernels import requires_nvrtc


class FakeDriver:
    """A device made of numpy byte arrays. Pointers are (allocation number << 32) + offset, so an
    address off its allocation is caught; each launch runs its kernel (from `kernels`, by name)
    with the lockstep interpreter (a block's threads together), its parameters viewed at the
    pointers it was given. CUDA graphs record launches and replay them (`RecordedGraphs`)."""

    def __init__(self, kernels: dict[str, Kernel], capability: tuple[int, int] = (9, 0)) -> None:
        self.kernels = kernels
        self.capability = capability
        self.memory: dict[int, np.ndarray] = {}
        self.log: list[tuple] = []
        self.active = 0
        self.graphs = RecordedGraphs(self.launch)

    @contextlib.contextmanager
    def activate(self):
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def _at(self, pointer: int, nbytes: int) -> np.ndarray:
        assert self.active, "a driver call outside activate()"
        block = self.memory[pointer >> 32]
        offset = pointer & 0xFFFFFFFF
        assert offset + nbytes <= block.nbytes, f"{nbytes} bytes at {offset} overrun a {block.nbytes}-byte allocation"
        return block[offset : offset + nbytes]

    def compute_capability(self):
        return self.capability

    def allocate(self, nbytes):
        number = len(self.memory) + 1
        self.memory[number] = np.full(nbytes, 0xCD, np.uint8)  # garbage, as fresh device memory is
        self.log.append(("allocate", nbytes))
        return number << 32

    def free(self, pointer):
        self.log.append(("free", pointer))

    def upload(self, pointer, array, stream=None):
        self.graphs.refuse("copy to the device")
        assert array.dtype == np.uint8
        self._at(pointer, array.nbytes)[:] = array
        self.log.append(("upload", array.nbytes))

    def download(self, array, pointer, stream=None):
        self.graphs.refuse("copy from the device")
        array[:] = self._at(pointer, array.nbytes)
        self.log.append(("download", array.nbytes))

    def copy(self, destination, source, nbytes, stream=None):
        self.graphs.refuse("copy on the device")
        self._at(destination, nbytes)[:] = self._at(source, nbytes)
        self.log.append(("copy", nbytes, stream))

    def load_module(self, image):
        self.log.append(("load", image))
        return "module"

    def function(self, module, name, n_params):
        kernel = self.kernels[name]
        assert n_params == len(kernel.params)
        return kernel

    def launch(self, function, grid, block, shared_bytes, pointers, stream=None):
        if self.graphs.record(function, grid, block, shared_bytes, pointers):
            self.log.append(("record", function.name, stream))
            return
        arrays = [
            self._at(pointer, buffer.size * buffer.dtype.itemsize).view(buffer.dtype.numpy)
            for buffer, pointer in zip(function.params, pointers, strict=True)
        ]
        run_lockstep(function, arrays)  # threads of a block together, races reported
        self.log.append(("launch", function.name, grid, block, stream))

    def new_stream(self):
        return "stream"

    def stream_handle(self, stream):
        return 0 if stream is None else 7

    def synchronize(self, stream=None):
        self.log.append(("synchronize", stream))

    def capture(self, launches):
        self.log.append(("capture",))
        return self.graphs.capture(launches)

    def replay(self, graph, stream=None):
        self.log.append(("replay", len(graph), stream))
        self.graphs.replay(graph, stream)

    def free_graph(self, graph):
        self.log.append(("free graph", len(graph)))


def _block_graph() -> ir.Graph:
    """Two fused groups with two intermediates between them and a constant; the outputs are a
    kernel output listed twice, an input and a constant."""
    b = GraphBuilder("block")
    x = b.input("x", (4, 6), DType.f32)
    w = b.constant(np.linspace(-1, 1, 6, dtype=np.float32), "w")
    h = b.softmax(b.relu(b.add(x, w)), axis=-1)
    y = b.add(b.softmax(b.mul(h, x), axis=0), h)
    graph = PassManager(parse_pipeline("fuse")).run(b.build(y, y, x, w))
    assert [node.op for node in graph.nodes].count("fused") == 2
    return graph


def _cuda_program(graph, arch="sm_90"):
    """The program and kernels of `graph`, without NVRTC: the cubin is a placeholder (the fake
    driver runs the kernels themselves)."""
    from backends.cuda.program import assemble_program
    from backends.cuda.schedule import schedule_group

    kernels = {}

    def schedule(node, name):
        scheduled = schedule_group(node, name)
        kernels[name] = scheduled.kernel
        return scheduled.kernel, Launch(name, (), grid=scheduled.grid, block=scheduled.block)

    program = assemble_program(graph, schedule, target="cuda")
    code = {"cuda_source": "// source", "cubins": {arch: "Y3ViaW4="}}  # base64 of b"cubin"
    return dataclasses.replace(program, code=code), kernels


def test_numpy_in_numpy_out_matches_the_interpreter_through_one_arena_and_one_constant_block():
    graph = _block_graph()
    program, kernels = _cuda_program(graph)
    driver = FakeDriver(kernels)
    executor = CudaExecutor(program, driver=driver)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    got = executor.run([x])
    for g, want in zip(got, ir.run(graph, [x]), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)
    assert got[0] is not got[1] and got[2] is not x  # each output its own fresh array
    allocations = [entry for entry in driver.log if entry[0] == "allocate"]
    assert len(allocations) == 3  # constants, arena, staging: once each
    launches = [entry for entry in driver.log if entry[0] == "launch"]
    assert [name for _, name, *_ in launches] == [launch.kernel for launch in program.launches]
    assert [(grid, block) for *_, grid, block, _ in launches] == [(lc.grid, lc.block) for lc in program.launches]
    assert ("load", b"cubin") in driver.log
    driver.log.clear()
    executor.run([x + 1])  # a second run allocates and uploads no constants again
    assert not [entry for entry in driver.log if entry[0] == "allocate"]
    assert [entry for entry in driver.log if entry[0] == "upload"] == [("upload", x.nbytes)]


def test_device_pointers_in_and_out_launch_on_the_given_stream_and_copy_the_outputs_no_kernel_writes():
    graph = _block_graph()
    program, kernels = _cuda_program(graph)
    driver = FakeDriver(kernels)
    executor = CudaExecutor(program, driver=driver)
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    with driver.activate():
        source = driver.allocate(x.nbytes)
        driver.upload(source, x.view(np.uint8).reshape(-1))
        specs = program.output_specs
        destinations = [driver.allocate(spec.nbytes) for spec in specs]
    driver.log.clear()
    executor.run_on_device([source], destinations, stream=executor.stream)
    with driver.activate():
        got = [driver._at(p, s.nbytes).view(s.numpy_dtype).reshape(s.shape) for p, s in zip(destinations, specs)]
    for g, want in zip(got, ir.run(graph, [x]), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)
    assert {entry[-1] for entry in driver.log if entry[0] in ("launch", "copy")} == {"stream"}
    # y twice (written in place once, copied once), x and w copied: 3 copies, no host transfers
    assert [entry[0] for entry in driver.log].count("copy") == 3
    assert not [entry for entry in driver.log if entry[0] in ("upload", "download", "allocate")]
    with pytest.raises(InputMismatchError, match="takes 1 input and 4 output pointer"):
        executor.run_on_device([source], destinations[:2])


def test_inputs_are_checked_before_anything_runs():
    program, kernels = _cuda_program(_block_graph())
    driver = FakeDriver(kernels)
    executor = CudaExecutor(program, driver=driver)
    driver.log.clear()
    with pytest.raises(InputMismatchError, match=r"expected float32\[4,6\], got float64\[4,6\]"):
        executor.run([np.zeros((4, 6))])
    with pytest.raises(InputMismatchError, match="takes 1 input"):
        executor.run([])
    assert driver.log == []


def test_the_launch_table_patches_only_inputs_and_outputs():
    program, _ = _cuda_program(_block_graph())
    fixed = {i: 1000 + i for i, spec in enumerate(program.buffers) if spec.kind in ("constant", "intermediate")}
    table = launch_table(program, fixed)
    slots = slot_buffers(program)
    assert slots[: len(program.inputs)] == program.inputs and len(set(slots)) == len(slots)
    for entry, launch in zip(table, program.launches, strict=True):
        assert isinstance(entry, LaunchEntry) and entry.grid == launch.grid
        arguments = entry.arguments([-(s + 1) for s in range(len(slots))])
        for position, buffer in enumerate(launch.args):
            expected = -(slots.index(buffer) + 1) if buffer in slots else fixed[buffer]
            assert arguments[position] == expected
    cpu_launch = dataclasses.replace(program, launches=(Launch("k", (0,)),), target="cpu")
    with pytest.raises(ProgramError, match="no grid and block"):
        launch_table(cpu_launch, fixed)


@pytest.mark.parametrize(
    ("available", "capability", "chosen"),
    [
        (["sm_80", "sm_90"], (9, 0), "sm_90"),
        (["sm_80", "sm_90"], (8, 6), "sm_80"),  # same major, later minor: the sm_80 cubin runs
        (["sm_80", "sm_86", "sm_90"], (8, 9), "sm_86"),
        (["sm_80", "sm_90"], (7, 5), None),
        (["sm_80", "sm_90"], (10, 0), None),  # a new major needs its own cubin
        (["sm_90a", "sm_90"], (9, 0), "sm_90"),
        (["sm_90a"], (9, 0), "sm_90a"),
        (["sm_100"], (10, 0), "sm_100"),
        (["sm_120"], (12, 1), "sm_120"),
    ],
)
def test_the_cubin_is_chosen_by_compute_capability(available, capability, chosen):
    assert select_architecture(available, capability) == chosen


def test_a_device_no_cubin_fits_gets_the_source_compiled_or_a_clear_error():
    program, kernels = _cuda_program(_block_graph(), arch="sm_80")
    compiled = []

    def compile_source(source, arch):
        compiled.append((source, arch))
        return b"fresh"

    driver = FakeDriver(kernels, capability=(10, 0))
    executor = CudaExecutor(program, driver=driver, compile_source=compile_source)
    assert compiled == [("// source", "sm_100")] and executor.architecture == "sm_100"
    assert ("load", b"fresh") in driver.log
    with pytest.raises(CodeCompilationError, match="cubins for sm_80, none of which runs on this sm_100 device"):
        CudaExecutor(program, driver=FakeDriver(kernels, capability=(10, 0)))


def test_a_cpu_program_is_refused():
    program, _ = _cuda_program(_block_graph())
    with pytest.raises(ProgramError, match="not CUDA"):
        CudaExecutor(dataclasses.replace(program, target="cpu", launches=()), driver=FakeDriver({}))


def test_constants_are_packed_on_256_byte_boundaries():
    offsets, total = pack([4, 0, 300, 256])
    assert offsets == [0, 256, 256, 768] and total == 1024
    assert all(o % 256 == 0 for o in offsets)


def test_a_cuda_program_saves_and_loads_with_its_grids_blocks_and_cubins(tmp_path):
    program, _ = _cuda_program(_block_graph())
    program.save(tmp_path / "block.kiln-program")
    loaded = load(tmp_path / "block.kiln-program")
    assert loaded.launches == program.launches and loaded.code == program.code and loaded.target == "cuda"
    assert all(launch.grid and launch.block for launch in loaded.launches)
    assert "grid (1, 1, 1) block" in loaded.describe()
    with pytest.raises(ProgramError, match="needs a grid and a block"):
        dataclasses.replace(program, launches=(Launch(program.launches[0].kernel, program.launches[0].args),))


def test_without_pycuda_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)  # find_spec raises or finds nothing: both mean missing
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "pycuda" else math)
    with pytest.raises(CudaUnavailableError, match=r"pip install 'kiln\[cuda\]' on a machine with a GPU"):
        PycudaDriver()


def test_with_pycuda_but_no_driver_the_error_says_so(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: math)  # "installed"
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)  # its import fails, as without libcuda.so.1
    monkeypatch.setitem(sys.modules, "pycuda", type(sys)("pycuda"))
    with pytest.raises(CudaUnavailableError, match="CUDA driver could not be loaded"):
        PycudaDriver()


@requires_nvrtc
def test_a_built_program_runs_on_the_fake_device_with_its_real_cubin_loaded():
    from backends.cuda.program import build_cuda_program

    graph = _block_graph()
    program, kernels = build_cuda_program(graph, "sm_90")
    driver = FakeDriver({k.name: k for k in kernels})
    executor = CudaExecutor(program, driver=driver)
    (image,) = [entry[1] for entry in driver.log if entry[0] == "load"]
    assert image[:4] == b"\x7fELF"  # a cubin is an ELF file
    x = np.ones((4, 6), np.float32)
    for got, want in zip(executor.run([x]), ir.run(graph, [x]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
