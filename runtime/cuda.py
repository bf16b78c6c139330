"""The CUDA executor: runs a CUDA `Program` (`backends.cuda.program`) on an NVIDIA GPU.

Everything that does not change between runs is set up once: the cubin that fits the device is
loaded, the constants are uploaded into one allocation, the arena is one allocation, and a
launch table (`runtime.cuda_launch`) holds every kernel's argument pointers (kernels take `T*`
parameters in `Launch.args` order) with the inputs' and outputs' slots filled per run. Two ways
to run:

- `run(arrays)`: numpy in, numpy out (copies through a staging allocation), synchronous;
- `run_on_device(inputs, outputs, stream)`: device pointers in and out (a torch CUDA tensor's
  `data_ptr()`), no copies, asynchronous on `stream`.

With `cuda_graph=True` the launches are captured once into a CUDA graph and each later run
replays it: one driver call per run instead of one per kernel (a program's shapes are static, so
the graph stays valid). The graph's pointers are the staging slots', so `run_on_device` then
copies its inputs in and its outputs out on the device (see `CudaExecutor._launch_staged`).

All that is done through a `CudaDriver` (`runtime.cuda_driver`), a dozen calls;
`runtime.cuda_pycuda.PycudaDriver` is the real one. The logic here is tested without a GPU with a
driver that records what it is asked to do.

A device that none of the program's cubins fits (cubins run on the same major architecture,
same or later minor) gets the carried CUDA source compiled for it by `compile_source`, which
`compiler` passes (NVRTC lives in `backends`, which the runtime may not import).

With `KILN_CUDA_EMULATE=1` (or `race`, `bounds`) the default driver is the CPU emulator
(`runtime.cuda_emulator`): the program's own CUDA C runs on the host, through this same executor.
"""

from __future__ import annotations

import base64
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# The driver protocol, the plan and pycuda's driver live in their own modules; their names stay
# importable from here, where they were first defined.
from runtime.cuda_driver import (  # noqa: F401
    PYCUDA_HINT,
    CudaDriver,
    CudaDriverError,
    CudaUnavailableError,
    RecordedGraphs,
)
from runtime.cuda_launch import ALIGNMENT, LaunchEntry, launch_table, pack, select_architecture, slot_buffers  # noqa: F401
from runtime.cuda_pycuda import STATIC_SHARED_BYTES, PycudaDriver, cuda_unavailable  # noqa: F401
from runtime.errors import CodeCompilationError, InputMismatchError, ProgramError, ProgramRuntimeError
from runtime.program import BufferSpec, Program

GRAPH_WARMUP_RUNS = 1
"""Runs launched one by one before the capture: modules load lazily and kernels opt in to their
dynamic shared memory at their first launch, which a capture should not have to record."""

# -- the executor ----------------------------------------------------------------------------------


class CudaExecutor:
    """Runs a CUDA `Program` on one device; see the module docstring. Runs of one executor are
    serialised (they share the arena); use one executor per thread for concurrent runs."""

    def __init__(
        self,
        program: Program,
        driver: CudaDriver | None = None,
        device: int | None = None,
        compile_source: Callable[[str, str], bytes] | None = None,
        cuda_graph: bool = False,
    ) -> None:
        if program.target != "cuda" or "cubins" not in program.code:
            raise ProgramError(f"program {program.name!r} targets {program.target!r}, not CUDA (no cubins)")
        self.program = program
        self.device = device or 0
        """The CUDA device index the program is loaded onto."""
        self.driver = driver if driver is not None else default_driver(program, self.device)
        self.cuda_graph = cuda_graph
        """Whether runs replay one CUDA graph of every launch (captured after the warm-up runs)."""
        self._graph: Any = None
        self._graphs: list[Any] = []  # what the finalizer frees
        self._runs = 0
        self._lock = threading.Lock()
        self._staging: int | None = None
        self._own_stream: Any = None
        with self.driver.activate():
            self.architecture, image = self._binary(compile_source)
            module = self.driver.load_module(image)
            self._functions = {}
            for launch in program.launches:
                if launch.kernel not in self._functions:
                    self._functions[launch.kernel] = self.driver.function(module, launch.kernel, len(launch.args))
            self._module = module  # kept alive while its functions are launched
            self._allocations: list[int] = []
            self._constants, self._arena = self._upload_constants(), self._allocate(program.arena_bytes)
        weakref.finalize(self, _free_all, self.driver, self._allocations, self._graphs)
        self._table = launch_table(program, self._fixed_addresses())
        self._slots = slot_buffers(program)

    def _binary(self, compile_source: Callable[[str, str], bytes] | None) -> tuple[str, bytes]:
        """The architecture and cubin for this device: a carried one, else the source compiled."""
        capability = self.driver.compute_capability()
        cubins = self.program.code["cubins"]
        chosen = select_architecture(cubins, capability)
        if chosen is not None:
            return chosen, base64.b64decode(cubins[chosen])
        own = f"sm_{capability[0]}{capability[1]}"
        if compile_source is None or "cuda_source" not in self.program.code:
            raise CodeCompilationError(
                f"program {self.program.name!r} has cubins for {', '.join(sorted(cubins)) or 'no architecture'}, "
                f"none of which runs on this {own} device; load it with compiler.load (which compiles its "
                f"CUDA source with NVRTC), or compile the model again on this machine"
            )
        return own, compile_source(self.program.code["cuda_source"], own)

    def _allocate(self, nbytes: int) -> int:
        pointer = self.driver.allocate(max(nbytes, 1))  # a zero-byte allocation is refused by some drivers
        self._allocations.append(pointer)
        return pointer

    def _upload_constants(self) -> dict[int, int]:
        """One allocation holds every constant; their addresses by buffer index."""
        indices = sorted(self.program.constants)
        arrays = [np.ascontiguousarray(self.program.constants[i]) for i in indices]
        offsets, total = pack([a.nbytes for a in arrays])
        base = self._allocate(total)
        for array, offset in zip(arrays, offsets, strict=True):
            if array.nbytes:
                self.driver.upload(base + offset, _bytes(array))
        return {i: base + offset for i, offset in zip(indices, offsets, strict=True)}

    def _fixed_addresses(self) -> dict[int, int]:
        fixed = dict(self._constants)
        for i, spec in enumerate(self.program.buffers):
            if spec.kind == "intermediate":
                fixed[i] = self._arena + spec.offset
        return fixed

    # -- running -------------------------------------------------------------------------------

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs for `inputs` (numpy arrays of the declared shapes and dtypes), as fresh
        numpy arrays; synchronous. Inputs and outputs go through one staging allocation."""
        program = self.program
        arrays = program.checked_inputs(inputs)
        with self._lock, self.driver.activate():
            slots = self._staging_slots()
            for array, pointer in zip(arrays, slots, strict=False):  # the input slots come first
                if array.nbytes:
                    self.driver.upload(pointer, _bytes(array))
            if self.cuda_graph:
                self._launch_staged(slots, None)
            else:
                self._launch_all(slots, None)
            results = []
            for i in program.outputs:
                spec = program.buffers[i]
                result = np.empty(spec.shape, spec.numpy_dtype)
                if result.nbytes:
                    self.driver.download(_bytes(result), self._address(i, slots), None)
                results.append(result)
            self.driver.synchronize(None)
        return results

    def run_on_device(self, inputs: Sequence[int], outputs: Sequence[int], stream: Any = None) -> None:
        """Run on device memory: `inputs[k]` is the address of input k, `outputs[j]` where output j
        goes (C-contiguous, of the declared shapes and dtypes: the caller checks them). Queued on
        `stream` (a driver stream, e.g. `self.stream`; None: the legacy default stream, which is
        torch's default stream), without waiting for it."""
        program = self.program
        if len(inputs) != len(program.inputs) or len(outputs) != len(program.outputs):
            raise InputMismatchError(
                f"program {program.name!r} takes {len(program.inputs)} input and {len(program.outputs)} output "
                f"pointer(s), got {len(inputs)} and {len(outputs)}"
            )
        if self.cuda_graph:
            with self._lock, self.driver.activate():
                self._run_staged_on_device(inputs, outputs, stream)
            return
        first_output = {}
        for j, i in enumerate(program.outputs):
            first_output.setdefault(i, j)
        n_inputs = len(program.inputs)
        slots = [*inputs, *(outputs[first_output[i]] for i in self._slots[n_inputs:])]
        with self._lock, self.driver.activate():
            self._launch_all(slots, stream)
            for j, i in enumerate(program.outputs):  # outputs no kernel wrote in place: copied
                if not (program.buffers[i].kind == "output" and first_output[i] == j):
                    nbytes = program.buffers[i].nbytes
                    if nbytes:
                        self.driver.copy(outputs[j], self._address(i, slots), nbytes, stream)

    def _run_staged_on_device(self, inputs: Sequence[int], outputs: Sequence[int], stream: Any) -> None:
        """`run_on_device` through the CUDA graph, whose pointers are the staging slots': the
        inputs are copied in and the outputs out, on the device and on `stream` (a copy per input
        and output in exchange for a launch per kernel; patching the graph's kernel nodes with
        the caller's pointers, cuGraphExecKernelNodeSetParams, would save the copies too)."""
        program = self.program
        slots = self._staging_slots()
        for pointer, slot, i in zip(inputs, slots, program.inputs, strict=False):  # the input slots come first
            if program.buffers[i].nbytes:
                self.driver.copy(slot, pointer, program.buffers[i].nbytes, stream)
        self._launch_staged(slots, stream)
        for pointer, i in zip(outputs, program.outputs, strict=True):
            if program.buffers[i].nbytes:
                self.driver.copy(pointer, self._address(i, slots), program.buffers[i].nbytes, stream)

    def _launch_staged(self, slots: Sequence[int], stream: Any) -> None:
        """Every launch on the staging `slots`, queued on `stream`: one by one for the first
        `GRAPH_WARMUP_RUNS` runs, then captured once into a CUDA graph (on a stream of the
        driver's own) that this and every later run replays."""
        if self._graph is None and self._runs >= GRAPH_WARMUP_RUNS:
            self._graph = self.driver.capture(lambda capturing: self._launch_all(slots, capturing))
            self._graphs.append(self._graph)
        self._runs += 1
        if self._graph is None:
            self._launch_all(slots, stream)
        else:
            self.driver.replay(self._graph, stream)

    def _launch_all(self, slots: Sequence[int], stream: Any) -> None:
        for entry in self._table:
            function = self._functions[entry.kernel]
            arguments = entry.arguments(slots)
            self.driver.launch(function, entry.grid, entry.block, entry.shared_bytes, arguments, stream)

    def _address(self, buffer: int, slots: Sequence[int]) -> int:
        """Where buffer `buffer` is on the device during a run with `slots`."""
        spec = self.program.buffers[buffer]
        if spec.kind in ("input", "output"):
            return slots[self._slots.index(buffer)]
        if spec.kind == "constant":
            return self._constants[buffer]
        return self._arena + spec.offset

    def _staging_slots(self) -> list[int]:
        """Device addresses of the numpy path's inputs and outputs: one allocation, made once."""
        specs: list[BufferSpec] = [self.program.buffers[i] for i in self._slots]
        offsets, total = pack([spec.nbytes for spec in specs])
        if self._staging is None:
            self._staging = self._allocate(total)
        return [self._staging + offset for offset in offsets]

    @property
    def stream(self) -> Any:
        """A stream of this executor's own (made at first use), for `run_on_device` alongside
        work on other streams; `driver.stream_handle(stream)` is its CUstream."""
        if self._own_stream is None:
            with self.driver.activate():
                self._own_stream = self.driver.new_stream()
        return self._own_stream

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.run(inputs)


def _bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes, as the same memory: drivers copy bytes, and pycuda's buffer
    protocol knows no bfloat16."""
    return array.reshape(-1).view(np.uint8)


def _free_all(driver: CudaDriver, pointers: list[int], graphs: list[Any]) -> None:
    try:
        with driver.activate():
            for graph in graphs:
                driver.free_graph(graph)
            for pointer in pointers:
                driver.free(pointer)
    except ProgramRuntimeError:  # at interpreter exit the driver may be gone already
        pass


# -- choosing the driver ---------------------------------------------------------------------------

EMULATE_VARIABLE = "KILN_CUDA_EMULATE"
"""Set to 1 (or plain), race or bounds: CUDA programs run on the CPU (runtime/cuda_emulator.py)."""


def default_driver(program: Program, device: int) -> CudaDriver:
    """pycuda on `device`, or the CPU emulator in the mode `KILN_CUDA_EMULATE` names."""
    mode = os.environ.get(EMULATE_VARIABLE, "").strip().lower()
    if mode in ("", "0"):
        return PycudaDriver(device)
    from runtime.cuda_emulator import EmulatorDriver, EmulatorUnavailableError, emulator_unavailable

    if emulator_unavailable() is not None:
        raise EmulatorUnavailableError(f"{EMULATE_VARIABLE}={mode}: {emulator_unavailable()}")
    return EmulatorDriver(program, "plain" if mode == "1" else mode)
