"""The CUDA emulator: a `CudaDriver` (runtime/cuda_driver.py) that runs a CUDA program's own CUDA C on the CPU.

A GPU is rarely at hand, so the CUDA C that `backends.cuda.codegen` printed is compiled, unchanged,
by the host C++ compiler (g++ -std=c++20 -pthread) against the host half of the prelude that the
program carries (`Program.code["prelude"]`: `backends/cuda/prelude.h`, whose host section holds the
CUDA intrinsics and the thread model), plus a launcher per kernel written here from the program's
launches and buffers (never by parsing the C, which may be any source g++ compiles). Device memory is
host memory (numpy allocations), so `CudaExecutor`'s own logic (memory plan, constants, staging,
argument packing, launch order) runs as on a GPU. A launch runs the real grid, block and dynamic
shared memory size: the threads of a block run concurrently (`__syncthreads` and warp shuffles are
barriers), blocks run one after another, each using the launch's one dynamic shared allocation in
turn (exactly its size, filled with 0xFF bytes). The prelude's atomics (`atomicAdd` f32/f64/i32/u32/
u64, `atomicMax`/`atomicMin` i32/u32, `atomicCAS`) are `std::atomic_ref`, relaxed as on the device.
A barrier or shuffle that not every thread reaches is reported as `KernelDeadlockError` (all live
threads waiting), or, with OS threads, after `timeout` seconds.

Threads: plain mode runs a block's threads as user-level fibers (ucontext) on the calling thread, a
barrier switching to the next fiber; the sanitizer modes run them as OS threads (ThreadSanitizer
needs real threads). Fibers measured 2-12x faster per model run (2-core machine, loaded; plain
mode, best of 3): GPT decoder block fp32 226 -> 19 ms, bf16 284 -> 57 ms; transformer encoder layer
fp32 309 -> 49 ms, bf16 465 -> 227 ms. A fiber that loops forever without reaching a barrier hangs
a plain launch (no other thread is left to time it out); with OS threads the others time out.

Modes (`KILN_CUDA_EMULATE=1|race|bounds`, or `EmulatorDriver(program, mode)`):

- `plain`: -O2, loaded into this process with ctypes. Fastest; a wild access may crash Python.
- `race`: -fsanitize=thread, each launch in a child process (a sanitizer must be loaded first).
  Two threads of a block accessing the same shared or global memory with no barrier ordering
  them fails with `KernelRaceError` naming both source lines. Only barriers order memory, as on
  the device: `__syncthreads` and the end of a block release and acquire explicitly, while the
  thread model's own mutex, the warp shuffles and the fragment exchanges (MMA, ldmatrix) are
  invisible to ThreadSanitizer (the prelude's `kiln_emu::Unseen`). So a lane that reads what
  another lane stored with only shuffles between is reported: `__shfl_sync` orders no memory,
  and lanes of a warp are not in lockstep (since Volta).
- `bounds`: -fsanitize=address, a child process per launch that copies every parameter into an
  allocation of exactly its size, so an access past a buffer's end or before its start fails
  with `KernelBoundsError` naming the kernel, the parameter, the element index and the line.

What the modes cannot see:

- race: races between blocks (blocks run one after another, the end of one ordered before the
  next: two blocks storing to one global element without an atomic pass, and a block spinning on
  a flag a later block sets hangs); races that need an interleaving or a shape no run took (TSan
  judges the accesses that execute); fences, `volatile` and the device's weak memory ordering;
  atomics, never a race (that is their purpose), so a wrong algorithm built of atomics passes;
  divergent barriers that every thread still reaches (different `__syncthreads` calls, undefined
  on the device), which count as one; a shuffle's mask (every lane of the warp must take part).
- bounds: an index so far out that it lands inside another live allocation (past the redzone);
  an overflow within a static `__shared__` array (one static object: dynamic shared memory is an
  exact-size allocation, which is checked) or within a local array's slack; reads of
  uninitialised memory, only partly exposed (dynamic shared memory is filled with 0xFF bytes,
  NaNs as floats; outputs and intermediates start zeroed; static shared memory keeps what the
  block before stored).
- any mode: timing, registers per thread and shared-memory limits (NVRTC's ptxas report covers
  those; a launch asking for more dynamic shared memory than a device has runs here), warp
  divergence and lockstep (lanes run as independent threads), bank conflicts, coalescing.

Builds are cached on disk (`runtime.disk_cache`) by the hash of the source, the prelude, the mode
and the compiler.
CUDA graphs (`CudaExecutor(cuda_graph=True)`) are recorded launches replayed in order
(`runtime.cuda_driver.RecordedGraphs`): what the executor captures is checked, not a graph's speed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import disk_cache
from runtime.cuda import CudaDriverError, CudaUnavailableError
from runtime.cuda_driver import Launches, RecordedGraphs
from runtime.cuda_emulator_reports import (  # noqa: F401 (the errors are this module's API too)
    MODULE_FILE,
    EmulatedKernelError,
    KernelBoundsError,
    KernelDeadlockError,
    KernelRaceError,
    classify,
    report,
)
from runtime.errors import CodeCompilationError, ProgramRuntimeError
from runtime.program import BufferSpec, Program

MODES = ("plain", "race", "bounds")
FLAGS = {
    "plain": ["-O2", "-shared", "-fPIC", "-DKILN_EMU_FIBERS=1"],
    "race": ["-O1", "-g", "-fsanitize=thread"],
    "bounds": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
}
"""Per mode; every build adds COMMON_FLAGS. The sanitizer builds are executables (one run per launch).
Plain mode runs a block's threads as fibers (KILN_EMU_FIBERS: see the module docstring), the
sanitizer modes as OS threads."""
COMMON_FLAGS = ["-std=c++20", "-pthread", "-x", "c++", "-ffp-contract=off", "-fno-fast-math"]
"""--fmad=false's twin: a contracted a*b+c would round once where the interpreter rounds twice."""
SANITIZER_OPTIONS = {
    "TSAN_OPTIONS": "halt_on_error=1 exitcode=66 report_signal_unsafe=0",
    "ASAN_OPTIONS": "halt_on_error=1 exitcode=67 detect_leaks=0 abort_on_error=0",
}
DEFAULT_TIMEOUT = 20.0
"""Seconds a thread may wait at one barrier before the launch is reported as hung."""


class EmulatorUnavailableError(CudaUnavailableError):
    """No host C++ compiler (g++) to build the emulation."""


class EmulationModeError(ProgramRuntimeError, ValueError):
    """An emulation mode the emulator does not have (`KILN_CUDA_EMULATE`, or `EmulatorDriver`'s mode)."""


def check_mode(mode: str) -> None:
    """Raises `EmulationModeError` unless `mode` is one of `MODES`."""
    if mode not in MODES:
        raise EmulationModeError(
            f"unknown CUDA emulation mode {mode!r}: set KILN_CUDA_EMULATE to 1 (or plain), race or bounds "
            f"(EmulatorDriver takes {', '.join(MODES)})"
        )


# -- the kernels of a module -----------------------------------------------------------------------


@dataclass(frozen=True)
class KernelParam:
    """One pointer parameter of a kernel, as the program passes it."""

    buffer: BufferSpec
    """The program buffer its first launch passes (for reports, and its size in bytes)."""
    written: bool
    """The kernel stores to it (the launch's `writes`): a sanitizer run copies it back."""


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple[KernelParam, ...]


def kernel_signatures(program: Program) -> dict[str, KernelSignature]:
    """The kernels `program` launches, by name in launch order, with their parameters: taken from
    the program's launches and buffers, not from its C source (which may be anything g++
    compiles: tests mutate it). The launcher lets C++ deduce the parameters' types."""
    found: dict[str, KernelSignature] = {}
    for launch in program.launches:
        if launch.kernel in found:
            continue
        # writes None: not known, so every buffer the program may write counts (Launch's rule).
        writable = {i for i in launch.args if program.buffers[i].kind not in ("input", "constant")}
        written = writable if launch.writes is None else set(launch.writes)
        params = tuple(KernelParam(program.buffers[i], i in written) for i in launch.args)
        found[launch.kernel] = KernelSignature(launch.kernel, params)
    return found


def launcher_source(kernels: Sequence[str], mode: str) -> str:
    """The C++ that includes the module and gives each kernel a host entry point
    `int kiln_launch_NAME(void** args, const unsigned dims[7], double timeout, char* error, int size)`
    (dims: grid, block, dynamic shared bytes);
    for the sanitizer modes also a `main` that runs one launch described by its arguments."""
    lines = [f'#include "{MODULE_FILE}"\n']
    for kernel in kernels:
        lines.append(
            f'extern "C" int kiln_launch_{kernel}(void** args, const unsigned* dims, double timeout, '
            f"char* error, int size) {{\n"
            f'  return kiln_emu::launch("{kernel}", [](void** a) {{ kiln_emu::invoke({kernel}, a); }}, '
            f"args, dims, timeout, error, size);\n}}\n"
        )
    if mode != "plain":
        table = ", ".join(f'{{"{k}", kiln_launch_{k}}}' for k in kernels)
        lines.append(_RUNNER.replace("TABLE", table))
    return "".join(lines)


# argv: kernel, grid x y z, block x y z, dynamic shared bytes, timeout, data file, then each
# parameter's size in bytes.
# Each parameter gets an allocation of exactly its size (ASan's redzones sit right after it).
_RUNNER = """
#include <cstdlib>
typedef int (*kiln_launcher)(void**, const unsigned*, double, char*, int);
static const struct { const char* name; kiln_launcher launch; } kiln_kernels[] = {TABLE};

int main(int argc, char** argv) {
  unsigned dims[7];
  for (int i = 0; i < 7; ++i) dims[i] = (unsigned)std::strtoul(argv[2 + i], nullptr, 10);
  const int n = argc - 11;
  std::vector<void*> args(n);
  std::vector<size_t> sizes(n);
  FILE* data = std::fopen(argv[10], "rb");
  for (int i = 0; i < n; ++i) {
    sizes[i] = std::strtoull(argv[11 + i], nullptr, 10);
    args[i] = std::malloc(sizes[i]);
    if (std::fread(args[i], 1, sizes[i], data) != sizes[i]) return 2;
    std::fprintf(stderr, "kiln-emulator: param %d at %p\\n", i, args[i]);
  }
  std::fclose(data);
  char error[2048] = "";
  for (const auto& kernel : kiln_kernels) {
    if (std::strcmp(kernel.name, argv[1]) != 0) continue;
    if (kernel.launch(args.data(), dims, std::strtod(argv[9], nullptr), error, sizeof error) != 0) {
      std::fprintf(stderr, "kiln-emulator: %s\\n", error);
      return 3;
    }
    data = std::fopen(argv[10], "wb");
    for (int i = 0; i < n; ++i) std::fwrite(args[i], 1, sizes[i], data);
    std::fclose(data);
    return 0;
  }
  return 4;
}
"""


# -- building --------------------------------------------------------------------------------------


@functools.cache
def host_compiler() -> tuple[str, str] | None:
    """(path, version line) of g++, or None."""
    path = shutil.which(os.environ.get("KILN_HOST_CXX", "g++"))
    if path is None:
        return None
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return path, done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else "unknown"


def emulator_unavailable() -> str | None:
    """Why CUDA programs cannot be emulated here, or None when they can."""
    if host_compiler() is None:
        return "the CUDA emulator needs a host C++ compiler: install g++ (12 or later, for C++20)"
    return None


def build(source: str, prelude: str, mode: str, kernels: Sequence[str]) -> Path:
    """The shared library (plain) or executable (race, bounds) of a CUDA module with a launcher
    for each of `kernels` (names defined in `source`), from the disk cache or compiled now; a file
    private to this process."""
    check_mode(mode)
    compiler = host_compiler()
    if compiler is None:
        raise EmulatorUnavailableError(emulator_unavailable())
    launcher = launcher_source(kernels, mode)
    key = hashlib.sha256(
        "\0".join([mode, *FLAGS[mode], *COMMON_FLAGS, compiler[1], prelude, source, launcher]).encode()
    )
    name = f"cuda-emulator/{key.hexdigest()[:32]}-{mode}"
    target = _private_folder() / name.replace("/", "-")
    if target.exists():
        return target
    binary = disk_cache.read_entry(name)
    if binary is None:
        binary = _compile(compiler[0], source, prelude, launcher, mode)
        disk_cache.write_entry(name, binary)
    target.with_suffix(".cu").write_text(source)  # for the source lines a report quotes
    target.write_bytes(binary)
    target.chmod(0o700)
    return target


def _compile(compiler: str, source: str, prelude: str, launcher: str, mode: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="kiln-emulate-") as folder:
        work = Path(folder)
        (work / "prelude.h").write_text(prelude)
        (work / MODULE_FILE).write_text(source)
        (work / "launch.cpp").write_text(launcher)
        output = work / "kernels.out"
        # Source paths relative in the debug info: sanitizer reports name ./kiln_module.cu:LINE.
        command = [compiler, *COMMON_FLAGS, *FLAGS[mode], f"-fdebug-prefix-map={folder}=.", "-I", folder,
                   str(work / "launch.cpp"), "-o", str(output)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=folder)
        if done.returncode != 0:
            raise CodeCompilationError(
                f"{Path(compiler).name} could not compile the CUDA module for emulation ({mode}):\n"
                f"{done.stderr[-4000:]}"
            )
        return output.read_bytes()


@functools.cache
def _private_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="kiln-emulator-"))


# -- the driver ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatedFunction:
    signature: KernelSignature
    entry: Any
    """(the library, its ctypes entry point) in plain mode; (the executable, None) otherwise."""


class EmulatorDriver:
    """`CudaDriver` on the CPU: see the module docstring. `program` is the program the executor
    runs (its source and prelude are compiled; the cubin the executor hands over is ignored)."""

    def __init__(self, program: Program, mode: str = "plain", timeout: float = DEFAULT_TIMEOUT) -> None:
        if "cuda_source" not in program.code or "prelude" not in program.code:
            raise CudaDriverError(
                f"program {program.name!r} carries no CUDA source and prelude to emulate: compile it again"
            )
        check_mode(mode)
        self.program, self.mode, self.timeout = program, mode, timeout
        self._memory: dict[int, np.ndarray] = {}
        self.source: str = program.code["cuda_source"]
        self.kernels = kernel_signatures(program)
        self._graphs = RecordedGraphs(self.launch)  # CUDA graphs: launches recorded, replayed in order

    @contextmanager
    def activate(self) -> Iterator[None]:
        yield

    def compute_capability(self) -> tuple[int, int]:
        # The capability of a cubin the program has, so the executor takes it (and hands it to
        # load_module, which compiles the source instead).
        for arch in sorted(self.program.code.get("cubins", {})):
            found = re.fullmatch(r"sm_(\d+)(\d)a?", arch)
            if found:
                return int(found[1]), int(found[2])
        return 8, 0

    def allocate(self, nbytes: int) -> int:
        array = np.zeros(nbytes, np.uint8)  # zeroed: a read of never-written memory is reproducible
        self._memory[array.ctypes.data] = array
        return array.ctypes.data

    def free(self, pointer: int) -> None:
        self._memory.pop(pointer, None)

    def upload(self, pointer: int, array: np.ndarray, stream: Any = None) -> None:
        self._graphs.refuse("copy to the device")
        ctypes.memmove(pointer, array.ctypes.data, array.nbytes)

    def download(self, array: np.ndarray, pointer: int, stream: Any = None) -> None:
        self._graphs.refuse("copy from the device")
        ctypes.memmove(array.ctypes.data, pointer, array.nbytes)

    def copy(self, destination: int, source: int, nbytes: int, stream: Any = None) -> None:
        self._graphs.refuse("copy on the device")
        ctypes.memmove(destination, source, nbytes)

    def load_module(self, image: bytes) -> Any:
        path = build(self.source, self.program.code["prelude"], self.mode, list(self.kernels))
        return ctypes.CDLL(str(path)) if self.mode == "plain" else path

    def function(self, module: Any, name: str, n_params: int) -> EmulatedFunction:
        signature = self.kernels.get(name)
        if signature is None or len(signature.params) != n_params:
            raise CodeCompilationError(
                f"program {self.program.name!r} launches no kernel {name} of {n_params} parameter(s)"
            )
        entry = None
        if self.mode == "plain":
            entry = getattr(module, f"kiln_launch_{name}")
            entry.restype = ctypes.c_int
            entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_char_p, ctypes.c_int]
        return EmulatedFunction(signature, (module, entry))

    def launch(self, function: EmulatedFunction, grid: tuple, block: tuple, shared_bytes: int,
               pointers: Sequence[int], stream: Any = None) -> None:  # fmt: skip
        if self._graphs.record(function, grid, block, shared_bytes, pointers):
            return
        dims = [*map(int, grid), *map(int, block), int(shared_bytes)]
        if self.mode == "plain":
            _library, entry = function.entry  # the library stays loaded while its entry is held
            error = ctypes.create_string_buffer(2048)
            args = (ctypes.c_void_p * max(len(pointers), 1))(*pointers)
            if entry(args, (ctypes.c_uint * 7)(*dims), self.timeout, error, len(error)) != 0:
                raise classify(error.value.decode(errors="replace"))
            return
        run_in_child(function, dims, pointers, self.mode, self.timeout)

    def new_stream(self) -> Any:
        return None

    def stream_handle(self, stream: Any) -> int:
        return 0

    def synchronize(self, stream: Any = None) -> None:
        self._graphs.refuse("synchronisation")

    def capture(self, launches: Launches) -> Any:
        return self._graphs.capture(launches)

    def replay(self, graph: Any, stream: Any = None) -> None:
        self._graphs.replay(graph, stream)

    def free_graph(self, graph: Any) -> None:
        pass


def run_in_child(function: EmulatedFunction, dims: Sequence[int], pointers: Sequence[int], mode: str,
                 timeout: float) -> None:  # fmt: skip
    """One launch in the sanitizer build (`function.entry` is its path): every parameter copied
    in (exact sizes), run, the written ones copied back; a sanitizer report becomes an error."""
    signature, executable = function.signature, function.entry[0]
    sizes = [param.buffer.nbytes for param in signature.params]
    with tempfile.NamedTemporaryFile(prefix="kiln-launch-", delete=False) as data:
        for pointer, size in zip(pointers, sizes, strict=True):
            data.write(ctypes.string_at(pointer, size))
    try:
        command = [str(executable), signature.name, *map(str, dims), repr(timeout), data.name,
                   *map(str, sizes)]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=4 * timeout + 30,
                                  env={**os.environ, **SANITIZER_OPTIONS})  # fmt: skip
        except subprocess.TimeoutExpired:
            raise KernelDeadlockError(f"kernel {signature.name} did not finish in {4 * timeout + 30:.0f} s") from None
        if done.returncode != 0:
            raise report(signature, done.returncode, done.stderr, executable)
        result = Path(data.name).read_bytes()
    finally:
        os.unlink(data.name)
    offset = 0
    for param, pointer, size in zip(signature.params, pointers, sizes, strict=True):
        if param.written:
            ctypes.memmove(pointer, result[offset : offset + size], size)
        offset += size
