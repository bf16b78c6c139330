"""What a CPU run costs besides its kernels' work: the fixed cost of one `CpuExecutor.run` and
the cost of each launch, serial (worker 0 alone) or parallel (every worker, a barrier between),
with 1 and 2 threads. The kernels are hand-written LLVM IR that follow the runtime's ABI, so
this measures the runtime alone, not Kiln's code generator.

    .venv/bin/python benchmarks/launch_overhead.py [--runs 2000] [--elements 64]

Each program is a chain of N launches of `out[i] = src[i] + 1` over `--elements` floats,
through two intermediates that take turns (so each launch reads what the one before wrote).
Per-launch cost = (median time of N launches - median time of 0 launches) / N. Medians over
--runs calls after a warm-up; the machine is shared, so read the numbers as +-20%.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import BufferSpec, CpuExecutor, Launch, Program, host_target, plan_arena

_ADD_ONE = """\
define void @{name}(ptr %args, i64 %worker, i64 %workers) {{
entry:
  %src = load ptr, ptr %args
  %out.slot = getelementptr ptr, ptr %args, i64 1
  %out = load ptr, ptr %out.slot
  %lo.scaled = mul i64 %worker, {n}
  %lo = sdiv i64 %lo.scaled, %workers
  %next = add i64 %worker, 1
  %hi.scaled = mul i64 %next, {n}
  %hi = sdiv i64 %hi.scaled, %workers
  %none = icmp sge i64 %lo, %hi
  br i1 %none, label %exit, label %loop
loop:
  %i = phi i64 [ %lo, %entry ], [ %i.next, %loop ]
  %p = getelementptr float, ptr %src, i64 %i
  %v = load float, ptr %p
  %r = fadd float %v, 1.0
  %q = getelementptr float, ptr %out, i64 %i
  store float %r, ptr %q
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %hi
  br i1 %done, label %exit, label %loop
exit:
  ret void
}}
"""


def chain_program(launches: int, elements: int, parallel: bool) -> Program:
    """x -> a -> b -> a -> ... -> out, each step `+ 1`; 0 launches returns x itself."""
    f32 = "float32"
    buffers = (
        BufferSpec("x", f32, (elements,), "input"),
        BufferSpec("a", f32, (elements,), "intermediate"),
        BufferSpec("b", f32, (elements,), "intermediate"),
        BufferSpec("out", f32, (elements,), "output"),
    )
    if launches == 0:
        return Program("empty", buffers[:1], (0,), (0,), {}, (), 0, {"llvm_ir": "", **host_target()})
    chain = [0] + [1 + k % 2 for k in range(launches - 1)] + [3]
    table = tuple(Launch("add_one", (src, dst), parallel=parallel) for src, dst in itertools.pairwise(chain))
    planned, arena = plan_arena(buffers, table, (3,))
    code = {"llvm_ir": _ADD_ONE.format(name="add_one", n=elements), **host_target()}
    return Program(f"chain{launches}", planned, (0,), (3,), {}, table, arena, code)


def median_us(fn, runs: int) -> float:
    for _ in range(min(runs, 200)):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--elements", type=int, default=64)
    parser.add_argument("--launches", type=int, default=32)
    args = parser.parse_args()
    x = np.arange(args.elements, dtype=np.float32)
    n = args.launches

    print("| threads | launches | run (µs) | per launch (µs) |")
    print("| --- | --- | --- | --- |")
    for threads in (1, 2):
        empty = CpuExecutor(chain_program(0, args.elements, True), threads=threads)
        base = median_us(lambda e=empty: e.run([x]), args.runs)
        print(f"| {threads} | 0 (fixed cost) | {base:.1f} | - |")
        for parallel in (False, True):
            executor = CpuExecutor(chain_program(n, args.elements, parallel), threads=threads)
            (out,) = executor.run([x])
            np.testing.assert_array_equal(out, x + n)
            total = median_us(lambda e=executor: e.run([x]), args.runs)
            kind = "parallel" if parallel else "serial"
            print(f"| {threads} | {n} {kind} | {total:.1f} | {(total - base) / n:.2f} |")
    print(f"\n{args.elements} floats per kernel; medians of {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
