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

import ctypes
import functools
import hashlib
import os
import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.disk_cache import read_entry, write_entry
from runtime.driver import DRIVER_SYMBOL, STATE_WORDS, WorkerPool, driver_ir
from runtime.errors import CodeCompilationError, ProgramError
from runtime.memory import aligned_empty, barriers_before
from runtime.program import BufferSpec, Program

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


@functools.cache
def host_target() -> dict[str, str]:
    """The host as `Program.code` records it: LLVM triple, CPU name and feature string."""
    llvm = _llvm()
    return {
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "features": llvm.get_host_cpu_features().flatten(),
    }


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
        # Generated for another CPU: compile for this one instead. A placeholder keeps an attribute
        # group that held only these from becoming empty, which LLVM rejects.
        text = _TARGET_ATTRIBUTES.sub(r'"kiln-dropped-\1"', text)
    return jit(optimize_llvm_ir(text, link_driver=True))


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
    """

    def __init__(self, program: Program, threads: int | None = None) -> None:
        if program.target != "cpu" or "llvm_ir" not in program.code:
            raise ProgramError(f"program {program.name!r} targets {program.target!r}, not the CPU (no LLVM IR)")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.program = program
        self.threads = threads or default_threads()
        self._engine = compile_llvm_ir(program.code)
        self._lock = threading.Lock()
        self._place_buffers()
        self._build_launch_table()

    @property
    def workers(self) -> int:
        """The threads a run uses: one when no launch is parallel (the pool is never started)."""
        return self.threads if self.threads > 1 and any(launch.parallel for launch in self.program.launches) else 1

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
        self._patch_positions = np.array(patch_positions, dtype=np.intp)
        self._patch_slots = np.array(patch_slots, dtype=np.intp)
        self._functions = np.array([functions[launch.kernel] for launch in launches] or [0], dtype=np.uint64)
        self._arguments = np.array([self._table.ctypes.data + 8 * int(s) for s in starts[:-1]] or [0], dtype=np.uint64)
        workers = self.workers
        barriers = barriers_before(self.program.buffers, launches) if workers > 1 else [False] * len(launches)
        flags = [int(launch.parallel) | int(barrier) << 1 for launch, barrier in zip(launches, barriers, strict=True)]
        self._flags = np.array(flags or [0], dtype=np.uint8)
        self.barriers = sum(barriers)
        """How many barriers a run waits at between launches (besides the one that ends it)."""
        table = (self._functions.ctypes.data, self._arguments.ctypes.data, self._flags.ctypes.data, len(launches))
        if workers > 1:
            pool = WorkerPool(self._engine, table, workers)
            weakref.finalize(self, pool.close)
            self._go = pool.run
        else:  # one worker: the driver on the calling thread, no pool
            self._state = aligned_empty((STATE_WORDS,), np.dtype(np.int64))
            self._state[:] = 0
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            driver = ctypes.CFUNCTYPE(None, p, p, p, i64, i64, i64, p)(self._engine.get_function_address(DRIVER_SYMBOL))
            self._go = functools.partial(driver, *table, 0, 1, self._state.ctypes.data)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The program's outputs for `inputs` (numpy arrays of the declared shapes and dtypes,
        bf16 as ml_dtypes.bfloat16), as fresh arrays."""
        program = self.program
        arrays = self.program.checked_inputs(inputs)
        fresh = [aligned_empty(program.buffers[i].shape, program.buffers[i].numpy_dtype) for i in self._fresh_outputs]
        addresses = np.array([a.ctypes.data for a in arrays + fresh], dtype=np.uint64)
        with self._lock:
            self._table[self._patch_positions] = addresses[self._patch_slots]
            self._go()
            return self._collect_outputs(arrays, dict(zip(self._fresh_outputs, fresh, strict=True)))

    def _collect_outputs(self, arrays: list[np.ndarray], fresh: dict[int, np.ndarray]) -> list[np.ndarray]:
        """Each output as its own array: a fresh output the first time, a copy after that; an
        input, constant or intermediate that is an output is copied (the caller owns results)."""
        program, results, handed_out = self.program, [], set()
        for i in program.outputs:
            spec = program.buffers[i]
            if spec.kind == "output" and i not in handed_out:
                handed_out.add(i)
                results.append(fresh[i])
            elif spec.kind == "output":
                results.append(fresh[i].copy())
            elif spec.kind == "input":
                results.append(arrays[program.inputs.index(i)].copy())
            elif spec.kind == "constant":
                results.append(self._constants[i].copy())
            else:
                results.append(self._view(spec).copy())
        return results

    def _view(self, spec: BufferSpec) -> np.ndarray:
        data = self._arena[spec.offset : spec.offset + spec.nbytes]
        return data.view(spec.numpy_dtype).reshape(spec.shape)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.run(inputs)
