"""Row ops on the CPU target beside torch eager, in GB/s: layer norm, rms norm, softmax, row sum and
row max over [rows, width] f32 (the last axis reduced), a column sum (the first axis reduced), and
the copy bandwidth that issue 7's target is stated against (memory-bound fused ops >= 70% of it).

    .venv/bin/python benchmarks/rows_cpu.py                    # [4096, 1024], 1 and 2 threads
    .venv/bin/python benchmarks/rows_cpu.py --rows 1024 --width 4096 --threads 2

Kiln compiles each op from a one-node graph (the op exactly as the template sees it); torch runs
the same op eagerly under `torch.set_num_threads`. Bytes are the fewest the op must move: read x,
write y (and the [width] parameters). Each cell is the median of timed calls after a warm-up
(benchmarks/common.py's `measure`); "best" is the fastest call, the better estimate on a busy
machine; on one thread the clock is the process's CPU time. Kiln's time is one `executor.run`
(output allocation included, as torch's is); the copy row is torch's `out.copy_(x)` into a
preallocated tensor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compiler
from benchmarks import common
from ir import DType, Graph, GraphBuilder


def _data(rows: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [rows, width], weight and bias [width] (seeded)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    return x, rng.standard_normal(width).astype(np.float32), rng.standard_normal(width).astype(np.float32)


def _graph(op: str, rows: int, width: int) -> Graph:
    """The one-node Kiln graph of `op`, its parameters constants."""
    _, weight_data, bias_data = _data(rows, width)
    builder = GraphBuilder("".join(c if c.isalnum() else "_" for c in op).strip("_"))
    xin = builder.input("x", (rows, width), DType.f32)
    weight = builder.constant(weight_data, "weight")
    bias = builder.constant(bias_data, "bias")
    match op:
        case "layer_norm":
            y = builder.layer_norm(xin, weight, bias, axis=-1, epsilon=1e-5)
        case "rms_norm":
            y = builder.rms_norm(xin, weight, axis=-1, epsilon=1e-6)
        case "softmax":
            y = builder.softmax(xin, axis=-1)
        case "row sum":
            y = builder.sum(xin, axes=(-1,), keepdims=False)
        case "row max":
            y = builder.max(xin, axes=(-1,), keepdims=False)
        case "column sum":
            y = builder.sum(xin, axes=(0,), keepdims=False)
        case "x * 2":
            y = builder.mul(xin, builder.constant(np.array(2.0, np.float32), "two"))
        case _:
            raise ValueError(op)
    return builder.build(y)


def _torch_call(op: str, x, weight, bias, width: int) -> Callable[[], object]:
    import torch
    from torch.nn import functional as F

    calls = {
        "layer_norm": lambda: F.layer_norm(x, (width,), weight, bias, 1e-5),
        "rms_norm": lambda: F.rms_norm(x, (width,), weight, 1e-6),
        "softmax": lambda: torch.softmax(x, dim=-1),
        "row sum": lambda: x.sum(dim=-1),
        "row max": lambda: x.amax(dim=-1),
        "column sum": lambda: x.sum(dim=0),
        "x * 2": lambda: x * 2.0,
    }
    return calls[op]


def _bytes(op: str, rows: int, width: int) -> float:
    read = 4.0 * rows * width
    written = {"row sum": 4.0 * rows, "row max": 4.0 * rows, "column sum": 4.0 * width}.get(op, read)
    parameters = {"layer_norm": 8.0 * width, "rms_norm": 4.0 * width}.get(op, 0.0)
    return read + written + parameters


OPS = ("x * 2", "layer_norm", "rms_norm", "softmax", "row sum", "row max", "column sum")


def _clock(threads: int) -> Callable[[], float]:
    """On one thread, this process's CPU time: a time slice lost to another process is not
    billed (this machine has two cores and is often shared); on more, wall time."""
    return time.process_time if threads == 1 else time.perf_counter


def _copy_gbs(rows: int, width: int, threads: int, budget: common.Budget) -> tuple[float, float]:
    """torch's copy into a preallocated tensor: (median, best) GB/s."""
    import torch

    x = torch.randn(rows, width)
    out = torch.empty_like(x)
    timing = common.measure(lambda: out.copy_(x), budget, _clock(threads))
    moved = 2 * 4.0 * rows * width
    return moved / timing.median_s / 1e9, moved / timing.min_s / 1e9


def _op_row(op: str, rows: int, width: int, threads: int, budget: common.Budget) -> list[float]:
    """Kiln's and torch's (median, best) GB/s on `op`, and Kiln's relative error against torch."""
    import torch

    data = _data(rows, width)
    call = _torch_call(op, *(torch.from_numpy(a) for a in data), width)
    executor = compiler.compile(_graph(op, rows, width), target="cpu", threads=threads).load_executor()
    inputs = [data[0]]
    expected = np.asarray(call())
    (got,) = executor.run(inputs)
    error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
    kiln = common.measure(lambda: executor.run(inputs), budget, _clock(threads))
    eager = common.measure(call, budget, _clock(threads))
    moved = _bytes(op, rows, width)
    print(f"{op} x{threads}: kiln {kiln.median_s * 1e3:.3f} ms, torch {eager.median_s * 1e3:.3f} ms", file=sys.stderr)
    gbs = [moved / t / 1e9 for t in (kiln.median_s, kiln.min_s, eager.median_s, eager.min_s)]
    return [*gbs, error]


def run(rows: int, width: int, threads: Sequence[int], budget: common.Budget, ops: Sequence[str]) -> str:
    """The markdown table: a copy row, then one row per op, per thread count."""
    table = []
    for count in threads:
        with common.torch_threads(count):
            copy_median, copy_best = _copy_gbs(rows, width, count, budget)
            table.append(["copy (torch)", count, None, None, copy_median, copy_best, 100.0, None])
            for op in ops:
                kiln_median, kiln_best, torch_median, torch_best, error = _op_row(op, rows, width, count, budget)
                share = 100.0 * kiln_best / copy_best
                table.append([op, count, kiln_median, kiln_best, torch_median, torch_best, share, error])
    headers = ["op", "threads", "kiln GB/s", "kiln best", "torch GB/s", "torch best", "kiln best % of copy best",
               "rel. error vs torch"]  # fmt: skip
    return common.markdown_table(headers, table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, metavar="OP")
    parser.add_argument("--quick", action="store_true", help="fewer timed calls")
    args = parser.parse_args(argv)
    budget = common.QUICK if args.quick else common.Budget(min_runs=20, min_time_s=0.5, max_time_s=4.0)
    print(f"[{args.rows}, {args.width}] f32, load average {os.getloadavg()[0]:.2f}")
    print(run(args.rows, args.width, args.threads, budget, args.ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
