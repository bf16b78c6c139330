"""The CUDA executor: runs a CUDA `Program` (`backends.cuda.program`) on an NVIDIA GPU.

Everything that does not change between runs is set up once: the cubin that fits the device is
loaded, the constants are uploaded into one allocation, the arena is one allocation, and a
launch table holds every kernel's argument pointers (kernels take `T*` parameters in
`Launch.args` order) with the inputs' and outputs' slots filled per run. Two ways to run:

- `run(arrays)`: numpy in, numpy out (copies through a staging allocation), synchronous;
- `run_on_device(inputs, outputs, stream)`: device pointers in and out (a torch CUDA tensor's
  `data_ptr()`), no copies, asynchronous on `stream`.

All that is done through a `CudaDriver`, a dozen calls; `PycudaDriver` is the real one (pycuda
on the primary context of the device, the context the CUDA runtime and torch use, so memory is
shared with torch; never pycuda.autoinit's own context). pycuda is imported when a
`PycudaDriver` is made, not here, so `import runtime` works on a machine without a GPU; the
logic above it is tested there with a driver that records what it is asked to do.

A device that none of the program's cubins fits (cubins run on the same major architecture,
same or later minor) gets the carried CUDA source compiled for it by `compile_source`, which
`compiler` passes (NVRTC lives in `backends`, which the runtime may not import).

With `KILN_CUDA_EMULATE=1` (or `race`, `bounds`) the default driver is the CPU emulator
(`runtime.cuda_emulator`): the program's own CUDA C runs on the host, through this same executor.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from runtime.errors import CodeCompilationError, InputMismatchError, ProgramError, ProgramRuntimeError
from runtime.program import BufferSpec, Program

ALIGNMENT = 256
"""Bytes: what cudaMalloc guarantees, so every constant starts as aligned as its own allocation would."""
PYCUDA_HINT = "pip install 'kiln[cuda]' on a machine with a GPU (pycuda builds only where the CUDA driver is)"


class CudaUnavailableError(ProgramRuntimeError, ImportError):
    """CUDA programs cannot run here: pycuda is not installed, or the CUDA driver or a device is
    missing. The message says which, and what to do."""


class CudaDriverError(ProgramRuntimeError):
    """A CUDA driver call failed (allocation, copy, module load, launch); the message names it."""


class CudaDriver(Protocol):
    """What the executor needs of CUDA. Pointers are device addresses as ints; `stream` is
    whatever `new_stream` returns, None for the legacy default stream."""

    def activate(self) -> Any: ...  # a context manager: the device's context is current inside
    def compute_capability(self) -> tuple[int, int]: ...
    def allocate(self, nbytes: int) -> int: ...
    def free(self, pointer: int) -> None: ...
    def upload(self, pointer: int, array: np.ndarray, stream: Any = None) -> None: ...
    def download(self, array: np.ndarray, pointer: int, stream: Any = None) -> None: ...
    def copy(self, destination: int, source: int, nbytes: int, stream: Any = None) -> None: ...
    def load_module(self, image: bytes) -> Any: ...
    def function(self, module: Any, name: str, n_params: int) -> Any: ...
    def launch(self, function: Any, grid: tuple, block: tuple, shared_bytes: int, pointers: Sequence[int],
               stream: Any = None) -> None: ...  # fmt: skip
    def new_stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def synchronize(self, stream: Any = None) -> None: ...


# -- choosing the binary ---------------------------------------------------------------------------

_ARCH = re.compile(r"sm_(\d+)(\d)([a-z]?)")


def select_architecture(available: Iterable[str], capability: tuple[int, int]) -> str | None:
    """The cubin architecture to load on a device of compute `capability`: its own, else the
    newest of the same major and an older minor (cubins run there; "sm_90a" only on sm_90);
    None when none fits."""
    major, minor = capability
    best: tuple[int, str] | None = None
    for arch in available:
        found = _ARCH.fullmatch(arch)
        if found is None or int(found[1]) != major:
            continue
        arch_minor, specific = int(found[2]), bool(found[3])
        if arch_minor == minor or (arch_minor < minor and not specific):
            rank = (arch_minor, 0 if specific else 1)  # the plain cubin over an "a" one: same code, portable
            if best is None or rank > best[0]:
                best = (rank, arch)
    return None if best is None else best[1]


def pack(sizes: Sequence[int], alignment: int = ALIGNMENT) -> tuple[list[int], int]:
    """Offsets that place `sizes` one after another, each on an `alignment` boundary, and the total."""
    offsets, top = [], 0
    for size in sizes:
        offsets.append(top)
        top += -(-size // alignment) * alignment
    return offsets, top


# -- the launch table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchEntry:
    """One launch, ready but for the per-run pointers: `pointers` holds the fixed ones (constants,
    intermediates) and 0 where `patches` (position, slot) put a run's input or output."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    pointers: tuple[int, ...]
    patches: tuple[tuple[int, int], ...]

    def arguments(self, slots: Sequence[int]) -> list[int]:
        pointers = list(self.pointers)
        for position, slot in self.patches:
            pointers[position] = slots[slot]
        return pointers


def slot_buffers(program: Program) -> tuple[int, ...]:
    """The buffers whose addresses change per run, in slot order: the inputs, then each buffer of
    kind output once (an output listed twice is written once and copied)."""
    fresh = dict.fromkeys(i for i in program.outputs if program.buffers[i].kind == "output")
    return (*program.inputs, *fresh)


def launch_table(program: Program, fixed: dict[int, int]) -> list[LaunchEntry]:
    """Every launch of `program` with its argument pointers: `fixed` gives the address of each
    constant and intermediate buffer; inputs and outputs become patches of their slot."""
    slot_of = {buffer: slot for slot, buffer in enumerate(slot_buffers(program))}
    table = []
    for launch in program.launches:
        if launch.grid is None or launch.block is None:
            raise ProgramError(f"launch of {launch.kernel!r} has no grid and block: not a CUDA program")
        pointers = tuple(fixed.get(i, 0) for i in launch.args)
        patches = tuple((p, slot_of[i]) for p, i in enumerate(launch.args) if i in slot_of)
        table.append(LaunchEntry(launch.kernel, launch.grid, launch.block, launch.shared_bytes, pointers, patches))
    return table


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
    ) -> None:
        if program.target != "cuda" or "cubins" not in program.code:
            raise ProgramError(f"program {program.name!r} targets {program.target!r}, not CUDA (no cubins)")
        self.program = program
        self.device = device or 0
        """The CUDA device index the program is loaded onto."""
        self.driver = driver if driver is not None else default_driver(program, self.device)
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
        weakref.finalize(self, _free_all, self.driver, self._allocations)
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

    # CUDA graphs: the launch table is fixed but for the slots, so a run of `run` (fixed staging
    # slots) can be captured once on `self.stream` and replayed. pycuda 2026.1 has no stream
    # capture; cuda.bindings.driver (cuStreamBeginCapture / cuGraphInstantiate / cuGraphLaunch on
    # `driver.stream_handle(self.stream)`) does. Not built yet: measure launch overhead first.

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.run(inputs)


def _bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes, as the same memory: drivers copy bytes, and pycuda's buffer
    protocol knows no bfloat16."""
    return array.reshape(-1).view(np.uint8)


def _free_all(driver: CudaDriver, pointers: list[int]) -> None:
    try:
        with driver.activate():
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


# -- pycuda ----------------------------------------------------------------------------------------


def _import_pycuda() -> Any:
    """pycuda.driver, initialised, or `CudaUnavailableError` saying what is missing."""
    if importlib.util.find_spec("pycuda") is None:
        raise CudaUnavailableError(f"running a CUDA program needs pycuda, which is not installed: {PYCUDA_HINT}")
    try:
        import pycuda.driver as cuda
    except ImportError as error:  # pycuda is there; libcuda.so.1 (the driver) is not
        raise CudaUnavailableError(
            f"pycuda is installed but the CUDA driver could not be loaded ({error}): this machine needs an NVIDIA "
            "GPU and its driver to run CUDA programs"
        ) from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as error:
        raise CudaUnavailableError(f"the CUDA driver found no usable GPU ({error})") from None
    if count == 0:
        raise CudaUnavailableError("the CUDA driver is installed but sees no GPU (check CUDA_VISIBLE_DEVICES)")
    return cuda


def cuda_unavailable() -> str | None:
    """Why CUDA programs cannot run here (what is missing), or None when they can."""
    try:
        _import_pycuda()
    except CudaUnavailableError as error:
        return str(error)
    return None


class PycudaDriver:
    """`CudaDriver` through pycuda, on the primary context of device `device` (default 0)."""

    def __init__(self, device: int | None = None) -> None:
        cuda = self._cuda = _import_pycuda()
        index = device or 0
        if not 0 <= index < cuda.Device.count():
            raise CudaUnavailableError(f"there is no CUDA device {index}; this machine has {cuda.Device.count()}")
        self._device = cuda.Device(index)
        self._context = self._device.retain_primary_context()
        self._allocations: dict[int, Any] = {}

    @contextmanager
    def activate(self) -> Iterator[None]:
        self._context.push()  # the primary context torch uses: pushing it again is cheap and nests
        try:
            yield
        finally:
            self._cuda.Context.pop()

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._cuda.Error as error:
            raise CudaDriverError(f"CUDA {what} failed: {error}") from error

    def compute_capability(self) -> tuple[int, int]:
        return tuple(self._device.compute_capability())

    def allocate(self, nbytes: int) -> int:
        with self._calling(f"allocation of {nbytes} bytes"):
            allocation = self._cuda.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        self._allocations.pop(pointer).free()

    def upload(self, pointer: int, array: np.ndarray, stream: Any = None) -> None:
        with self._calling("copy to the device"):
            if stream is None:
                self._cuda.memcpy_htod(pointer, array)
            else:
                self._cuda.memcpy_htod_async(pointer, array, stream)

    def download(self, array: np.ndarray, pointer: int, stream: Any = None) -> None:
        with self._calling("copy from the device"):
            if stream is None:
                self._cuda.memcpy_dtoh(array, pointer)
            else:
                self._cuda.memcpy_dtoh_async(array, pointer, stream)

    def copy(self, destination: int, source: int, nbytes: int, stream: Any = None) -> None:
        with self._calling("copy on the device"):
            self._cuda.memcpy_dtod_async(destination, source, nbytes, stream)

    def load_module(self, image: bytes) -> Any:
        with self._calling("module load"):
            return self._cuda.module_from_buffer(image)

    def function(self, module: Any, name: str, n_params: int) -> Any:
        with self._calling(f"lookup of kernel {name}"):
            function = module.get_function(name)
        return function.prepare("P" * n_params)  # every parameter is a pointer

    def launch(self, function: Any, grid: tuple, block: tuple, shared_bytes: int, pointers: Sequence[int],
               stream: Any = None) -> None:  # fmt: skip
        with self._calling("kernel launch"):
            function.prepared_async_call(grid, block, stream, *pointers, shared_size=shared_bytes)

    def new_stream(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return 0 if stream is None else stream.handle

    def synchronize(self, stream: Any = None) -> None:
        with self._calling("synchronisation (a kernel may have failed)"):
            if stream is None:
                self._cuda.Context.synchronize()
            else:
                stream.synchronize()
