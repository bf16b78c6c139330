"""The CPU executor: JIT-compiles a program's LLVM IR for this host and runs its launches on a
pool of threads.

The generated code follows one ABI (DESIGN.md, "Runtime"): each kernel is
`void NAME(void **args, int64_t worker, int64_t workers)`; a kernel whose body is one parallel
loop runs worker w's share of it, any other runs whole on worker 0. The kernels are linked with
the launch driver of `runtime.driver`, which runs the whole launch table for one worker, so a
run is one call on the calling thread (worker 0) while the pool's other workers join in.

The IR, not machine code, is what a program carries, so a program saved on one machine is
compiled for the CPU it runs on; compiled objects are cached in the process by a hash of the
IR and the host, so a second executor for the same program skips LLVM's optimiser.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from runtime.arguments import RunArguments, data_address
from runtime.disk_cache import read_entry, write_entry
from runtime.driver import DRIVER_SYMBOL, PROFILE_SLOT, STATE_WORDS, WorkerPool, driver_ir
from runtime.errors import CodeCompilationError, ProgramError
from runtime.memory import aligned_empty, barriers_before
from runtime.program import Program

# Function attributes that pin code to the CPU it was generated on; dropped when the host differs.
_TARGET_ATTRIBUTES = re.compile(r'"(target-cpu|target-features|tune-cpu)"="[^"]*"')

_OBJECT_CACHE: dict[str, bytes] = {}
"""Compiled objects by a hash of the IR and the host: executors of one program share them; on
disk they are kept by `runtime.disk_cache`, so a second compile in another process skips LLVM."""


def _cached_object(key: str) -> bytes | None:
    """The compiled object for `key`, from memory or from the cache on disk."""
    if key not in _OBJECT_CACHE and (data := read_entry(f"{key}.o")) is not None:
        _OBJECT_CACHE[key] = data
    return _OBJECT_CACHE.get(key)


def _remember_object(key: str, data: bytes) -> None:
    _OBJECT_CACHE.setdefault(key, data)
    write_entry(f"{key}.o", data)


# The C libraries generated code calls into (tanhf, erf, fmodf, malloc, ...): MCJIT resolves
# symbols only from libraries loaded into its symbol table, not from whatever the process has.
_RUNTIME_LIBRARIES = ("m", "c", "gcc_s")


@functools.cache
def _llvm() -> Any:
    import ctypes.util

    import llvmlite.binding as llvm  # lazy: loading a program needs no LLVM

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    for library in _RUNTIME_LIBRARIES:
        path = ctypes.util.find_library(library)
        if path:
            llvm.load_library_permanently(path)
    return llvm


def _check_external_symbols(llvm: Any, module: Any) -> None:
    """MCJIT aborts the process on a symbol it cannot resolve: find them first and raise."""
    missing = [
        f.name
        for f in module.functions
        if f.is_declaration and not f.name.startswith("llvm.") and llvm.address_of_symbol(f.name) is None
    ]
    if missing:
        raise CodeCompilationError(f"the program's code calls {', '.join(missing)}, which no loaded library provides")


ISA_ENVIRONMENT_VARIABLE = "KILN_CPU_ISA"
"""Set to "avx2" to generate code as for a host without AVX-512 (portable builds, and tests of
the AVX2 fallback on an AVX-512 machine, which runs AVX2 code too)."""

_ISA_LIMITS: dict[str, tuple[str, ...]] = {
    "native": (),
    # AVX-512 and what builds on it (AVX10 implies AVX-512; AMX tiles come with it): turned off,
    # so LLVM uses at most ymm registers. The VEX-encoded AVX-VNNI is AVX2-level and stays.
    "avx2": ("avx512", "avx10", "amx", "evex512"),
    # AVX2 without AVX-VNNI either (Haswell to Skylake, Zen 1-4): code that runs on any AVX2 + FMA CPU.
    "avx2-novnni": ("avx512", "avx10", "amx", "evex512", "avxvnni"),
}
_isa_limit: list[str] = []
"""The limits `limit_isa` has put in place, innermost last."""


@functools.cache
def _native_target() -> dict[str, str]:
    llvm = _llvm()
    return {
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "features": llvm.get_host_cpu_features().flatten(),
    }


@functools.cache
def _limited_target(isa: str) -> dict[str, str]:
    if isa not in _ISA_LIMITS:
        raise ValueError(f"{ISA_ENVIRONMENT_VARIABLE}={isa!r}: Kiln knows {', '.join(_ISA_LIMITS)}")
    native = _native_target()
    off = _ISA_LIMITS[isa]
    features = [f"-{f[1:]}" if f[:1] == "+" and f[1:].startswith(off) else f for f in native["features"].split(",")]
    return {**native, "features": ",".join(features)}


def host_target() -> dict[str, str]:
    """The host as `Program.code` records it and code is generated for: LLVM triple, CPU name and
    feature string, with the features above the ISA of `limit_isa` (or `KILN_CPU_ISA`) turned off."""
    isa = _isa_limit[-1] if _isa_limit else os.environ.get(ISA_ENVIRONMENT_VARIABLE) or "native"
    return _limited_target(isa)


@contextlib.contextmanager
def limit_isa(isa: str) -> Iterator[None]:
    """Generate code within `isa` ("avx2", "native") while the block runs: tile sizes, vector
    widths and the target machine all follow `host_target()`."""
    _limited_target(isa)  # an unknown name fails here, not at the first compile
    _isa_limit.append(isa)
    try:
        yield
    finally:
        _isa_limit.pop()


def host_vector_bits() -> int:
    """The widest float vector register code is generated for: 512 with AVX-512, 256 with AVX,
    else 128."""
    return _vector_bits(host_target()["features"])


@functools.cache
def _vector_bits(features: str) -> int:
    enabled = set(features.split(","))
    if "+avx512f" in enabled:
        return 512
    return 256 if "+avx" in enabled else 128


def _host_target_machine() -> Any:
    """A new one per engine: an MCJIT engine owns its target machine and disposes of it."""
    llvm, host = _llvm(), host_target()
    target = llvm.Target.from_triple(host["triple"])
    return target.create_target_machine(cpu=host["cpu"], features=host["features"], opt=3, jit=True)


def compile_llvm_ir(code: dict[str, Any]) -> Any:
    """An LLVM execution engine holding `code["llvm_ir"]` and the launch driver, compiled at
    O3 for this host. Keep the engine alive while its functions are called."""
    host = host_target()
    text = code["llvm_ir"]
    if (code.get("cpu"), code.get("features")) != (host["cpu"], host["features"]):
        _check_target_intrinsics(text, code.get("features") or "", host["features"])
        # Generated for another CPU: compile for this one instead. A placeholder keeps an attribute
        # group that held only these from becoming empty, which LLVM rejects.
        text = _TARGET_ATTRIBUTES.sub(r'"kiln-dropped-\1"', text)
    return jit(optimize_llvm_ir(text, link_driver=True))


def _check_target_intrinsics(text: str, generated_for: str, host_features: str) -> None:
    """Code that calls x86 intrinsics (vpdpbusd, vscalefps) needs the features it was generated
    with: LLVM aborts the process on an instruction the target lacks, so refuse it here."""
    enabled = {f for f in host_features.split(",") if f.startswith("+")}
    missing = sorted(f[1:] for f in generated_for.split(",") if f.startswith("+") and f not in enabled)
    if missing and "llvm.x86." in text:
        raise CodeCompilationError(
            f"this program's code uses instructions of {', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}, "
            "which this CPU lacks: compile the model again on this machine, or build it for any AVX2 CPU "
            f"with {ISA_ENVIRONMENT_VARIABLE}=avx2-novnni (AVX2 with AVX-VNNI: avx2)"
        )


def optimize_llvm_ir(text: str, link_driver: bool = False, skip_if_cached: bool = True) -> Any:
    """`text` parsed, verified and optimised at O3 for this host (with the launch driver linked
    in when asked): the one path from LLVM IR to what the JIT compiles, which `backends.llvm`
    uses too. When the compiled object of the same IR and host is cached, the optimisation is
    skipped (`skip_if_cached=False` still runs it, for a listing of the optimised IR)."""
    llvm, host, machine = _llvm(), host_target(), _host_target_machine()
    try:
        module = llvm.parse_assembly(text)
        if link_driver:
            module.link_in(llvm.parse_assembly(driver_ir(host["triple"])))
        module.verify()
    except RuntimeError as error:
        raise CodeCompilationError(f"the LLVM IR does not compile: {error}") from error
    module.triple = machine.triple
    module.data_layout = str(machine.target_data)
    key = hashlib.sha256(
        # the driver's IR is part of the key: a cached object holds the driver it was linked with
        "\0".join(
            [text, driver_ir(host["triple"]) if link_driver else "", *host.values(), str(llvm.llvm_version_info)]
        ).encode()
    ).hexdigest()
    if _cached_object(key) is None or not skip_if_cached:
        tuning = llvm.create_pipeline_tuning_options(speed_level=3)
        tuning.loop_vectorization = True
        tuning.slp_vectorization = True  # off by default in LLVM's options; clang turns it on at O2+
        tuning.loop_unrolling = True
        builder = llvm.create_pass_builder(machine, tuning)
        builder.getModulePassManager().run(module, builder)
    module.name = key  # the object cache's key, read back by jit()
    return module


def jit(module: Any) -> Any:
    """Machine code for an optimised module: an MCJIT engine (compiled objects are cached in
    the process by the module's key, so a second engine for the same IR skips code generation)."""
    llvm = _llvm()
    _check_external_symbols(llvm, module)
    key = module.name
    engine = llvm.create_mcjit_compiler(module, _host_target_machine())
    engine.set_object_cache(
        notify_func=lambda _module, data: _remember_object(key, data),
        getbuffer_func=lambda _module: _cached_object(key),
    )
    engine.finalize_object()
    return engine


def host_target_machine() -> Any:
    """An LLVM target machine for this host (for assembly listings)."""
    return _host_target_machine()


PROBE_RUNS = 3
"""Runs an executor with threads=None times on the calling thread before it chooses."""

POOL_MIN_PHASE_NS = 10_000
"""The pool is started (threads=None) only when a run on one thread takes at least this long per
phase (the spans between barriers, +1 for the run's end). Splitting saves at most half of a
phase's work, and a barrier costs 1-3 µs while the pool is awake (benchmarks/launch_overhead.py),
more while another process holds the second core: 10 µs keeps the best saving about twice the
barriers' cost. The model tests at their test shapes (1.5-10 µs a run, 2-8 phases) stay on one
thread; the realistic models (ms) get the pool."""


def default_threads() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CpuExecutor:
    """Runs a CPU `Program`: `run(inputs) -> outputs`, with numpy arrays.

    Everything that does not change between runs is built once: the compiled code, the arena,
    the constants, and a table of every launch's argument pointers; a run only writes its
    inputs' and fresh outputs' addresses into that table. Runs of one executor are serialised
    (they share the arena); use one executor per thread for concurrent runs.

    `threads` given: that many workers run every parallel launch. `threads=None` (the default):
    up to the CPUs this process may use, but the first `PROBE_RUNS` runs go on the calling
    thread alone, timed, and the pool is started only if they show the program is big enough
    to gain from it (`POOL_MIN_PHASE_NS`); a small model never wakes a second thread.
    """

    def __init__(self, program: Program, threads: int | None = None) -> None:
        if program.target != "cpu" or "llvm_ir" not in program.code:
            raise ProgramError(f"program {program.name!r} targets {program.target!r}, not the CPU (no LLVM IR)")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.program = program
        self.threads = threads or default_threads()
        self._choose_pool = threads is None
        self._alone = False
        """True once the first runs have shown that the pool would not pay (threads=None)."""
        self._probes: list[int] = []
        self._engine = compile_llvm_ir(program.code)
        self._lock = threading.Lock()
        self._place_buffers()
        self._build_launch_table()

    @property
    def workers(self) -> int:
        """The threads a run uses: one when no launch is parallel (the pool is never started), or
        when the first runs found the program too small for it (threads=None)."""
        return (
            self.threads
            if not self._alone and self.threads > 1 and any(launch.parallel for launch in self.program.launches)
            else 1
        )

    def _place_buffers(self) -> None:
        """Fixed addresses (constants, intermediates in the arena) and the slots that a run fills
        (inputs first, then the buffers of kind output)."""
        program = self.program
        self._arena = aligned_empty((program.arena_bytes,), np.dtype(np.uint8))
        # Kernels only read constants; a contiguous copy only where the program's array is not.
        self._constants = {
            i: array if array.flags.c_contiguous else array.copy(order="C") for i, array in program.constants.items()
        }
        self._fresh_outputs = tuple(dict.fromkeys(i for i in program.outputs if program.buffers[i].kind == "output"))
        self._slot_of = {i: s for s, i in enumerate(program.inputs + self._fresh_outputs)}
        self.arguments = RunArguments(program, self._fresh_outputs)
        """The inputs' and fresh outputs' types, precomputed for the per-call checks."""
        self.outputs_are_fresh = program.outputs == self._fresh_outputs
        """Whether each output is an output buffer of its own, in order (so `run_at`'s fresh
        output arrays are the results as they are)."""
        self._address: dict[int, int] = {i: array.ctypes.data for i, array in self._constants.items()}
        for i, spec in enumerate(program.buffers):
            if spec.kind == "intermediate":
                self._address[i] = self._arena.ctypes.data + spec.offset

    def _build_launch_table(self) -> None:
        launches = self.program.launches
        functions = {}
        for name in dict.fromkeys(launch.kernel for launch in launches):
            address = self._engine.get_function_address(name) if name.isidentifier() else 0
            if not address:
                raise CodeCompilationError(f"program {self.program.name!r} launches {name!r}, which its code lacks")
            functions[name] = address
        starts = np.cumsum([0] + [len(launch.args) for launch in launches])
        self._table = np.zeros(max(int(starts[-1]), 1), dtype=np.uint64)
        patch_positions, patch_slots = [], []
        for k, launch in enumerate(launches):
            for p, i in enumerate(launch.args):
                position = int(starts[k]) + p
                if i in self._slot_of:
                    patch_positions.append(position)
                    patch_slots.append(self._slot_of[i])
                else:
                    self._table[position] = self._address.get(i, 0)
        self._patches = tuple(zip(patch_positions, patch_slots, strict=True))
        # Item writes through a memoryview cost ~40 ns; numpy's fancy indexing ~2 µs a run.
        self._table_words = memoryview(self._table).cast("B").cast("Q")
        self._functions = np.array([functions[launch.kernel] for launch in launches] or [0], dtype=np.uint64)
        self._arguments = np.array([self._table.ctypes.data + 8 * int(s) for s in starts[:-1]] or [0], dtype=np.uint64)
        workers = self.workers
        barriers = barriers_before(self.program.buffers, launches) if workers > 1 else [False] * len(launches)
        flags = [int(launch.parallel) | int(barrier) << 1 for launch, barrier in zip(launches, barriers, strict=True)]
        self._flags = np.array(flags or [0], dtype=np.uint8)
        self.barriers = sum(barriers)
        """How many barriers a run waits at between launches (besides the one that ends it)."""
        table = (self._functions.ctypes.data, self._arguments.ctypes.data, self._flags.ctypes.data, len(launches))
        # One worker: the driver on the calling thread, no pool (it skips barriers then). Its state
        # stays referenced after a pool replaces `_state`: `_go_alone` holds its address.
        self._state = self._state_alone = aligned_empty((STATE_WORDS,), np.dtype(np.int64))
        self._state[:] = 0
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        driver = ctypes.CFUNCTYPE(None, p, p, p, i64, i64, i64, p)(self._engine.get_function_address(DRIVER_SYMBOL))
        # Arguments made ctypes objects once: ctypes converts Python ints at every call (~0.2 µs).
        arguments = (*map(p, table[:3]), i64(table[3]), i64(0), i64(1), p(self._state.ctypes.data))
        self._go = self._go_alone = functools.partial(driver, *arguments)
        self._driver_table = table
        if workers > 1:
            self._go = self._probe if self._choose_pool else self._start_pool()

    def _start_pool(self) -> Any:
        pool = WorkerPool(self._engine, self._driver_table, self.workers)
        weakref.finalize(self, pool.close)
        self._go, self._state = pool.run, pool.state
        return pool.run

    def _probe(self) -> None:
        """A run on the calling thread alone, timed; after `PROBE_RUNS` of them, the choice
        between the pool and the calling thread for every later run (threads=None)."""
        start = time.perf_counter_ns()
        self._go_alone()
        self._probes.append(time.perf_counter_ns() - start)
        if len(self._probes) < PROBE_RUNS:
            return
        # The fastest run is the work itself; slower ones were interrupted.
        if min(self._probes) >= POOL_MIN_PHASE_NS * (self.barriers + 1):
            self._start_pool()
        else:
            self._alone = True
            self._go = self._go_alone

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The program's outputs for `inputs` (numpy arrays of the declared shapes and dtypes,
        bf16 as ml_dtypes.bfloat16), as fresh arrays."""
        return self.run_checked(self.arguments.inputs(inputs))

    def run_checked(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`run` for arrays the caller has checked (`arguments.fit`): nothing is checked again."""
        fresh = self.arguments.new_outputs()
        addresses = [data_address(a) for a in arrays]
        addresses += [data_address(a) for a in fresh]
        with self._lock:
            self._patch(addresses)
            self._go()
            if self.outputs_are_fresh:
                return fresh
            return self.arguments.collect_outputs(arrays, fresh, self._constants, self._arena)

    def run_at(self, addresses: Sequence[int]) -> None:
        """A run whose caller has checked its arrays: `addresses` holds the data addresses of
        the inputs, then of the fresh output buffers (`arguments.output_types` order), each a
        C-contiguous array of the declared shape and dtype that lives until this returns. For
        callers that hold their arrays in another form (the compiler's path for torch tensors)."""
        with self._lock:
            self._patch(addresses)
            self._go()

    def _patch(self, addresses: Sequence[int]) -> None:
        words = self._table_words
        for position, slot in self._patches:
            words[position] = addresses[slot]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.run(inputs)

    def profile(self, inputs: Sequence[np.ndarray], runs: int = 10) -> np.ndarray:
        """Seconds each launch took in each of `runs` runs of `inputs`, [runs, launches], from
        worker 0's clock, read by the driver before every launch. A profiled run waits at a
        barrier before every launch, so a launch's time includes its slowest worker and the
        barrier, and a run's sum exceeds a plain run's time by the barriers a plain run skips."""
        count = len(self.program.launches)
        clock = np.zeros((runs, count + 1), dtype=np.int64)
        flags = self._flags.copy()
        if self.workers > 1:
            self._flags |= 2  # the driver reads the flags at every run
        states = []  # the calling thread's and, once a run has started it, the pool's
        try:
            for reading in clock:
                states.append(self._state)
                self._state[PROFILE_SLOT] = reading.ctypes.data
                self.run(inputs)
        finally:
            for state in states:
                state[PROFILE_SLOT] = 0  # no run may write into the readings once they are gone
            self._flags[:] = flags
        return np.diff(clock, axis=1) * 1e-9
