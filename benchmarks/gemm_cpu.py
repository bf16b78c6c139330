"""fp32 GEMM on the CPU target beside torch, in GFLOP/s: square n x n x n products, on one thread and
on two, as a markdown table (issue 7's GEMM target: >= 80% of torch's GFLOP/s at 1024 on one thread).

    .venv/bin/python benchmarks/gemm_cpu.py                      # 256..2048, 1 and 2 threads
    .venv/bin/python benchmarks/gemm_cpu.py --sizes 1024 --threads 1 --kind linear

`--kind matmul` multiplies two graph inputs (`a @ b`: nothing known at compile time); `--kind linear`
multiplies an input by a constant weight stored [N, K] (`x @ W.T`, torch's `nn.Linear`), which
the layout pass may re-lay at compile time. Medians over --runs calls after a warm-up (Kiln and
torch called in turn, so that load from other processes reaches both alike); each
runtime gets the same thread count (torch.set_num_threads). `measure_gemm` is the function the
full CPU suite (benchmarks/cpu_suite.py) imports.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import compiler
from ir import DType, GraphBuilder


def median_seconds(functions, runs: int, warmup: int = 2, clock=time.perf_counter) -> list[float]:
    """The median time of each function, called in turn run after run, so that a change in the
    machine's load (other processes) reaches all of them alike. `clock=time.process_time` counts
    only this process's CPU time (robust on a shared machine, for runs on one thread)."""
    for _ in range(warmup):
        for fn in functions:
            fn()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(runs):
        for fn, spent in zip(functions, times):
            start = clock()
            fn()
            spent.append(clock() - start)
    return [statistics.median(spent) for spent in times]


def _graph(n: int, kind: str, rng: np.random.Generator):
    builder = GraphBuilder(f"gemm{n}")
    x = builder.input("x", (n, n), DType.f32)
    if kind == "matmul":
        y = builder.matmul(x, builder.input("b", (n, n), DType.f32))
        return builder.build(y), [rng.standard_normal((n, n), np.float32) for _ in range(2)]
    weight = rng.standard_normal((n, n), np.float32)
    y = builder.gemm(x, builder.constant(weight, "w"), trans_b=True)
    return builder.build(y), [rng.standard_normal((n, n), np.float32)], weight


def measure_gemm(n: int, threads: int, kind: str = "matmul", runs: int | None = None, cpu_time: bool = False) -> dict:
    """Kiln's and torch's GFLOP/s for an n x n x n fp32 product on `threads` threads (kinds: see
    the module doc), with the result checked against torch's; `cpu_time` times with the
    process's CPU time instead of the wall clock."""
    import torch

    rng = np.random.default_rng(0)
    made = _graph(n, kind, rng)
    graph, inputs = made[0], made[1]
    runs = runs or max(3, min(50, int(2e10 / (2 * n**3))))
    fast = compiler.compile(graph, target="cpu", threads=threads)
    tensors = [torch.from_numpy(a) for a in inputs]
    if kind == "matmul":
        a, b = tensors
        reference = lambda: torch.matmul(a, b)
    else:
        weight = torch.from_numpy(made[2])
        reference = lambda: torch.nn.functional.linear(tensors[0], weight)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            expected = reference().numpy()
            (got,) = fast.executor.run(inputs)
            error = float(np.abs(got - expected).max()) / float(np.abs(expected).max())
            if error > 1e-4:
                raise AssertionError(f"n={n}: Kiln's result is off by {error:.2e} (relative to the largest element)")
            kiln_seconds, torch_seconds = median_seconds(
                [lambda: fast.executor.run(inputs), reference],
                runs,
                clock=time.process_time if cpu_time else time.perf_counter,
            )
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * n**3
    kiln, torch_rate = flops / kiln_seconds / 1e9, flops / torch_seconds / 1e9
    return {"n": n, "threads": threads, "kind": kind, "kiln_gflops": kiln, "torch_gflops": torch_rate,
            "ratio": kiln / torch_rate, "kiln_ms": kiln_seconds * 1e3, "torch_ms": torch_seconds * 1e3}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kind", choices=("matmul", "linear"), default="matmul")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per row (default: ~20 GFLOP's worth)")
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time (a shared machine)")
    args = parser.parse_args()
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"fp32 GEMM ({args.kind}), GFLOP/s, median of timed runs ({clock})\n")
    print("| n | threads | Kiln GFLOP/s | torch GFLOP/s | Kiln / torch |")
    print("| --- | --- | --- | --- | --- |")
    for threads in args.threads:
        for n in args.sizes:
            row = measure_gemm(n, threads, args.kind, args.runs, args.cpu_time)
            print(f"| {n} | {threads} | {row['kiln_gflops']:.1f} | {row['torch_gflops']:.1f} | {row['ratio']:.0%} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
