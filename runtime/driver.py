"""The launch driver of the CPU executor: LLVM IR linked into every program's module, and the
pool of threads that runs it.

Handing each kernel to a Python thread pool costs ~100 µs a kernel in wake-ups, so the executor
links a small driver of its own into the program's module instead: it walks the launch table and
calls every kernel for one worker, with a spinning barrier (atomics) between kernels where one is
needed, the way an OpenMP parallel region spans loops. The pool's threads each stay inside one
ctypes call (which releases the GIL) for the pool's life; the calling thread is worker 0. A run
is then one call on the calling thread, and a kernel boundary costs at most a barrier, not a
Python round trip.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np

from runtime.memory import aligned_empty

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
# sleep on it, [256] the stop flag, [320] a pointer to the profile's clock readings (null: none
# taken; see `CpuExecutor.profile`): worker 0 reads the clock (ns) before each launch, after its
# barrier, into slot i, and after the run's last barrier into slot n.
#
# The pool's threads each make one ctypes call, into @kiln_worker_loop, that returns only when
# the executor stops: between runs a worker spins (pause), then yields, then sleeps on the futex,
# so a run that follows another closely starts its workers in well under a microsecond instead of
# a Python thread's wake-up (~100 µs measured by benchmarks/launch_overhead.py). @kiln_run_main is
# the calling thread's side: start the run, be worker 0, wait for the others at a final barrier.
_DRIVER_IR = """
declare i32 @sched_yield()
declare i32 @clock_gettime(i32, ptr)
{pause_declaration}
{sleep_declaration}

; Worker 0 of a profiled run (a non-null clock slot at state + 320) writes the time into slot %i.
define internal void @kiln_clock(ptr %state, i64 %i) noinline {{
entry:
  %ts = alloca {{ i64, i64 }}
  %slot = getelementptr i8, ptr %state, i64 320
  %times = load ptr, ptr %slot
  %off = icmp eq ptr %times, null
  br i1 %off, label %exit, label %read
read:
  %rc = call i32 @clock_gettime(i32 {monotonic_clock}, ptr %ts)
  %seconds = load i64, ptr %ts
  %nanos.slot = getelementptr {{ i64, i64 }}, ptr %ts, i32 0, i32 1
  %nanos = load i64, ptr %nanos.slot
  %scaled = mul i64 %seconds, 1000000000
  %now = add i64 %scaled, %nanos
  %at = getelementptr i64, ptr %times, i64 %i
  store i64 %now, ptr %at
  br label %exit
exit:
  ret void
}}

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
  br i1 %wait, label %barrier.wait, label %timed
barrier.wait:
  call void @kiln_barrier(ptr %state, i64 %workers)
  br label %timed
timed:
  br i1 %is.first, label %clock, label %dispatch
clock:
  call void @kiln_clock(ptr %state, i64 %i)
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
  br i1 %more, label %loop, label %last
last:
  br i1 %is.first, label %clock.last, label %exit
clock.last:
  call void @kiln_clock(ptr %state, i64 %n)
  br label %exit
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
  call void @kiln_clock(ptr %state, i64 %n)
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


def driver_ir(triple: str) -> str:
    """The driver's LLVM IR for `triple`, linked into every CPU program's module."""
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
        monotonic_clock=6 if "darwin" in triple or "macos" in triple else 1,  # CLOCK_MONOTONIC
    )


STATE_WORDS = 48
"""i64 words of a pool's synchronisation state: six cache lines (see the driver's IR)."""
PROFILE_SLOT = 40
"""The state word that holds the address of a profiled run's clock readings (0: not profiled)."""


class WorkerPool:
    """`workers - 1` threads, each inside one ctypes call into the driver's `kiln_worker_loop`
    for as long as the pool lives; the calling thread is worker 0 (`kiln_run_main`), so a run
    costs no Python thread switch. Holds no reference to the executor, so an executor that is
    dropped stops its threads; it holds the engine, whose code the threads run until they stop."""

    def __init__(self, engine: Any, table: tuple[int, int, int, int], workers: int) -> None:
        self.workers = workers
        self._engine = engine
        self.state = aligned_empty((STATE_WORDS,), np.dtype(np.int64))
        """The synchronisation words the pool's threads share (the profile slot among them)."""
        self.state[:] = 0
        state = self.state.ctypes.data
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
            self._stop(self.state.ctypes.data)
            for thread in self._threads:
                thread.join(timeout=10)
            self._threads = []
