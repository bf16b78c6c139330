"""The CPU executor: JIT-compiles a program's LLVM IR for this host and runs its launches on a
pool of threads.

The generated code follows one ABI (DESIGN.md, "Runtime"): each kernel is
`void NAME(void **args, int64_t worker, int64_t workers)`; a kernel whose body is one parallel
loop runs worker w's share of it, any other runs whole on worker 0. Handing each kernel to a
Python thread pool costs ~100 µs a kernel in wake-ups, so the executor links a small driver
of its own into the program's module instead: `kiln_run_launches` walks the launch table and
calls every kernel for one worker, with a spinning barrier (atomics) between kernels, the way
an OpenMP parallel region spans loops. Each run is then one ctypes call per worker thread
(ctypes releases the GIL), and a kernel boundary costs a barrier, not a Python round trip.

The IR, not machine code, is what a program carries, so a program saved on one machine is
compiled for the CPU it runs on; compiled objects are cached in the process by a hash of the
IR and the host, so a second executor for the same program skips LLVM's optimiser.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.disk_cache import read_entry, write_entry
from runtime.errors import CodeCompilationError, InputMismatchError, ProgramError
from runtime.memory import barriers_before
from runtime.program import BufferSpec, Program, describe_array

ALIGNMENT = 64
"""Bytes: the arena base and fresh outputs start on a cache line (and an AVX-512 vector)."""

DRIVER_SYMBOL = "kiln_run_launches"

# One worker's walk over the launches. %fns, %args: one function pointer and one `void **` per
# launch; %flags: one byte per launch, bit 0 = parallel (0: worker 0 alone calls it, as one
# worker), bit 1 = a barrier before it (computed at load time by `runtime.memory.barriers_before`:
# only where the launch touches bytes that another worker touched since the last barrier).
#
# %state is one executor's synchronisation words, each on its own cache line (64 bytes) so that
# arrivals do not slow the spinners: [0] the barrier's arrival count, [64] its generation (the
# last to arrive resets the count and bumps the generation, which releases the rest), [128] the
# run generation (i32, a futex word: the caller bumps it to start a run), [192] how many workers
# sleep on it, [256] the stop flag.
#
# The pool's threads each make one ctypes call, into @kiln_worker_loop, that returns only when
# the executor stops: between runs a worker spins (pause), then yields, then sleeps on the futex,
# so a run that follows another closely starts its workers in well under a microsecond instead of
# a Python thread's wake-up (~100 µs measured by benchmarks/launch_overhead.py). @kiln_run_main is
# the calling thread's side: start the run, be worker 0, wait for the others at a final barrier.
_DRIVER_IR = """
declare i32 @sched_yield()
{pause_declaration}
{sleep_declaration}

define void @kiln_run_launches(ptr %fns, ptr %args, ptr %flags, i64 %n, i64 %worker, i64 %workers, ptr %state) {{
entry:
  %empty = icmp eq i64 %n, 0
  %several = icmp ugt i64 %workers, 1
  %is.first = icmp eq i64 %worker, 0
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %next, %called ]
  %flag.slot = getelementptr i8, ptr %flags, i64 %i
  %flag = load i8, ptr %flag.slot
  %barrier.bit = and i8 %flag, 2
  %has.barrier = icmp ne i8 %barrier.bit, 0
  %wait = and i1 %has.barrier, %several
  br i1 %wait, label %barrier.wait, label %dispatch
barrier.wait:
  call void @kiln_barrier(ptr %state, i64 %workers)
  br label %dispatch
dispatch:
  %fn.slot = getelementptr ptr, ptr %fns, i64 %i
  %fn = load ptr, ptr %fn.slot
  %args.slot = getelementptr ptr, ptr %args, i64 %i
  %a = load ptr, ptr %args.slot
  %parallel.bit = and i8 %flag, 1
  %is.parallel = icmp ne i8 %parallel.bit, 0
  br i1 %is.parallel, label %call.parallel, label %check.first
call.parallel:
  call void %fn(ptr %a, i64 %worker, i64 %workers)
  br label %called
check.first:
  br i1 %is.first, label %call.serial, label %called
call.serial:
  call void %fn(ptr %a, i64 0, i64 1)
  br label %called
called:
  %next = add i64 %i, 1
  %more = icmp ult i64 %next, %n
  br i1 %more, label %loop, label %exit
exit:
  ret void
}}

define internal void @kiln_barrier(ptr %count, i64 %workers) noinline {{
entry:
  %generation = getelementptr i64, ptr %count, i64 8
  %seen = load atomic i64, ptr %generation acquire, align 8
  %arrived = atomicrmw add ptr %count, i64 1 acq_rel
  %last.index = sub i64 %workers, 1
  %is.last = icmp eq i64 %arrived, %last.index
  br i1 %is.last, label %release, label %spin
release:
  store atomic i64 0, ptr %count monotonic, align 8
  %old = atomicrmw add ptr %generation, i64 1 release
  ret void
spin:
  %k = phi i64 [ 0, %entry ], [ %k.next, %pause ], [ %k.next, %yield ]
  %now = load atomic i64, ptr %generation acquire, align 8
  %same = icmp eq i64 %now, %seen
  br i1 %same, label %backoff, label %done
backoff:
  %k.next = add i64 %k, 1
  %patient = icmp ult i64 %k, 1000
  br i1 %patient, label %pause, label %yield
pause:
  {pause_call}
  br label %spin
yield:
  ; a worker that is not running (more threads than free cores) gets the core sooner
  %ignored = call i32 @sched_yield()
  br label %spin
done:
  ret void
}}

; The calling thread: start a run (bump the run generation, wake sleepers), run it as worker 0,
; and return when every worker has finished (the final barrier).
define void @kiln_run_main(ptr %fns, ptr %args, ptr %flags, i64 %n, i64 %workers, ptr %state) {{
entry:
  %run = getelementptr i8, ptr %state, i64 128
  %sleepers = getelementptr i8, ptr %state, i64 192
  %old = atomicrmw add ptr %run, i32 1 seq_cst
  %asleep = load atomic i64, ptr %sleepers seq_cst, align 8
  %any = icmp ne i64 %asleep, 0
  br i1 %any, label %wake, label %work
wake:
  {wake_call}
  br label %work
work:
  call void @kiln_run_launches(ptr %fns, ptr %args, ptr %flags, i64 %n, i64 0, i64 %workers, ptr %state)
  call void @kiln_barrier(ptr %state, i64 %workers)
  ret void
}}

; A pool thread: wait for each run (spin, then yield, then sleep), take part as `worker`, meet
; the others at the final barrier; return when the stop flag is set.
define void @kiln_worker_loop(ptr %fns, ptr %args, ptr %flags, i64 %n, i64 %worker, i64 %workers, ptr %state) {{
entry:
  %run = getelementptr i8, ptr %state, i64 128
  %sleepers = getelementptr i8, ptr %state, i64 192
  %stop = getelementptr i8, ptr %state, i64 256
  br label %wait
wait:
  %seen = phi i32 [ 0, %entry ], [ %now, %finished ]
  br label %poll
poll:
  %k = phi i64 [ 0, %wait ], [ %k.next, %pause ], [ %k.next, %yield ], [ %k, %slept ]
  %now = load atomic i32, ptr %run acquire, align 4
  %same = icmp eq i32 %now, %seen
  br i1 %same, label %backoff, label %go
backoff:
  %k.next = add i64 %k, 1
  %hot = icmp ult i64 %k, {spins}
  br i1 %hot, label %pause, label %cooling
cooling:
  %warm = icmp ult i64 %k, {spins_and_yields}
  br i1 %warm, label %yield, label %sleep
pause:
  {pause_call}
  br label %poll
yield:
  %ignored = call i32 @sched_yield()
  br label %poll
sleep:
  ; announce the sleep, then look again: the caller bumps the generation before it reads the
  ; sleepers (both seq_cst), so either it sees this sleeper or this sees its run
  %in = atomicrmw add ptr %sleepers, i64 1 seq_cst
  %again = load atomic i32, ptr %run seq_cst, align 4
  %still = icmp eq i32 %again, %seen
  br i1 %still, label %doze, label %awake
doze:
  {sleep_call}
  br label %awake
awake:
  %out = atomicrmw sub ptr %sleepers, i64 1 seq_cst
  br label %slept
slept:
  br label %poll
go:
  %stopping = load atomic i64, ptr %stop acquire, align 8
  %done = icmp ne i64 %stopping, 0
  br i1 %done, label %exit, label %work
work:
  call void @kiln_run_launches(ptr %fns, ptr %args, ptr %flags, i64 %n, i64 %worker, i64 %workers, ptr %state)
  call void @kiln_barrier(ptr %state, i64 %workers)
  br label %finished
finished:
  br label %wait
exit:
  ret void
}}

; Stop the pool: set the flag, start a last "run" that the workers see as the end.
define void @kiln_stop_workers(ptr %state) {{
entry:
  %run = getelementptr i8, ptr %state, i64 128
  %stop = getelementptr i8, ptr %state, i64 256
  store atomic i64 1, ptr %stop seq_cst, align 8
  %old = atomicrmw add ptr %run, i32 1 seq_cst
  {wake_call}
  ret void
}}
"""

_PAUSE = {  # the spin-wait hint per architecture: saves power and a pipeline flush on exit
    "x86_64": ("declare void @llvm.x86.sse2.pause()", "call void @llvm.x86.sse2.pause()"),
    "aarch64": ("declare void @llvm.aarch64.hint(i32)", "call void @llvm.aarch64.hint(i32 1)"),
}

# How a pool thread with nothing to do sleeps, per OS and architecture: on Linux a futex wait on
# the run generation (the caller wakes it with a futex wake, only when some worker sleeps); where
# there is no futex, short naps (a run after a long idle then starts up to 200 µs late).
_FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129

# A pool thread spins this many pauses (~tens of µs) and then yields this many more times before it
# sleeps: runs that follow one another closely (a model called in a loop) find it awake.
SPINS_BEFORE_YIELD = 2000
YIELDS_BEFORE_SLEEP = 100


def _sleep_and_wake(triple: str) -> tuple[str, str, str]:
    """(declaration, sleep call, wake call) for the driver's idle pool threads on `triple`."""
    number = _FUTEX_SYSCALL.get(triple.split("-")[0])
    if number is None or "linux" not in triple:
        return "declare i32 @usleep(i32)", "%napped = call i32 @usleep(i32 200)", ""
    wait = (
        "%seen.wide = zext i32 %seen to i64\n"
        f"  %slept.rc = call i64 (i64, ...) @syscall(i64 {number}, ptr %run, i64 {_FUTEX_WAIT_PRIVATE}, "
        "i64 %seen.wide, ptr null, ptr null, i64 0)"
    )
    wake = (
        f"%woken = call i64 (i64, ...) @syscall(i64 {number}, ptr %run, i64 {_FUTEX_WAKE_PRIVATE}, "
        "i64 2147483647, ptr null, ptr null, i64 0)"
    )
    return "declare i64 @syscall(i64, ...)", wait, wake


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


def _driver_ir(triple: str) -> str:
    declaration, call = _PAUSE.get(triple.split("-")[0], ("", ""))
    sleep_declaration, sleep_call, wake_call = _sleep_and_wake(triple)
    return _DRIVER_IR.format(
        pause_declaration=declaration,
        pause_call=call,
        sleep_declaration=sleep_declaration,
        sleep_call=sleep_call,
        wake_call=wake_call,
        spins=SPINS_BEFORE_YIELD,
        spins_and_yields=SPINS_BEFORE_YIELD + YIELDS_BEFORE_SLEEP,
    )


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
            module.link_in(llvm.parse_assembly(_driver_ir(host["triple"])))
        module.verify()
    except RuntimeError as error:
        raise CodeCompilationError(f"the LLVM IR does not compile: {error}") from error
    module.triple = machine.triple
    module.data_layout = str(machine.target_data)
    key = hashlib.sha256(
        # the driver's IR is part of the key: a cached object holds the driver it was linked with
        "\0".join(
            [text, _driver_ir(host["triple"]) if link_driver else "", *host.values(), str(llvm.llvm_version_info)]
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


def _aligned_empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ALIGNMENT-byte boundary."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


_STATE_WORDS = 40
"""i64 words of a pool's synchronisation state: five cache lines (see the driver's IR)."""


class _WorkerPool:
    """`workers - 1` threads, each inside one ctypes call into the driver's `kiln_worker_loop`
    for as long as the pool lives; the calling thread is worker 0 (`kiln_run_main`), so a run
    costs no Python thread switch. Holds no reference to the executor, so an executor that is
    dropped stops its threads; it holds the engine, whose code the threads run until they stop."""

    def __init__(self, engine: Any, table: tuple[int, int, int, int], workers: int) -> None:
        self.workers = workers
        self._engine = engine
        self._state = _aligned_empty((_STATE_WORDS,), np.dtype(np.int64))
        self._state[:] = 0
        state = self._state.ctypes.data
        address = engine.get_function_address
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        run_main = ctypes.CFUNCTYPE(None, p, p, p, i64, i64, p)(address("kiln_run_main"))
        worker_loop = ctypes.CFUNCTYPE(None, p, p, p, i64, i64, i64, p)(address("kiln_worker_loop"))
        self._stop = ctypes.CFUNCTYPE(None, p)(address("kiln_stop_workers"))
        self.run = functools.partial(run_main, *table, workers, state)
        self._threads = [
            threading.Thread(
                target=worker_loop, args=(*table, w, workers, state), name=f"kiln-cpu-worker-{w}", daemon=True
            )
            for w in range(1, workers)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop the threads and wait for them to leave the generated code (called when the
        executor is collected, or at exit)."""
        if self._threads:
            self._stop(self._state.ctypes.data)
            for thread in self._threads:
                thread.join(timeout=10)
            self._threads = []


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
        self._arena = _aligned_empty((program.arena_bytes,), np.dtype(np.uint8))
        # Kernels only read constants; a contiguous copy only where the program's array is not.
        self._constants = {
            i: array if array.flags.c_contiguous else array.copy(order="C") for i, array in program.constants.items()
        }
        self._input_specs = program.input_specs
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
            pool = _WorkerPool(self._engine, table, workers)
            weakref.finalize(self, pool.close)
            self._go = pool.run
        else:  # one worker: the driver on the calling thread, no pool
            self._state = _aligned_empty((_STATE_WORDS,), np.dtype(np.int64))
            self._state[:] = 0
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            driver = ctypes.CFUNCTYPE(None, p, p, p, i64, i64, i64, p)(self._engine.get_function_address(DRIVER_SYMBOL))
            self._go = functools.partial(driver, *table, 0, 1, self._state.ctypes.data)

    def _checked_inputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        specs = self._input_specs
        if len(inputs) != len(specs):
            names = ", ".join(spec.name for spec in specs)
            raise InputMismatchError(
                f"program {self.program.name!r} takes {len(specs)} input(s) ({names}), got {len(inputs)}"
            )
        checked = []
        for spec, value in zip(specs, inputs, strict=True):
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if array.shape != tuple(spec.shape) or array.dtype != spec.numpy_dtype:
                raise InputMismatchError(
                    f"input {spec.name!r} of program {self.program.name!r}: expected "
                    f"{describe_array(spec.dtype, spec.shape)}, got {describe_array(str(array.dtype), array.shape)}"
                )
            checked.append(array if array.flags.c_contiguous else array.copy(order="C"))
        return checked

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The program's outputs for `inputs` (numpy arrays of the declared shapes and dtypes,
        bf16 as ml_dtypes.bfloat16), as fresh arrays."""
        program = self.program
        arrays = self._checked_inputs(inputs)
        fresh = [_aligned_empty(program.buffers[i].shape, program.buffers[i].numpy_dtype) for i in self._fresh_outputs]
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
