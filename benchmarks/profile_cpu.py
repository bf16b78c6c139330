"""Where a model's time goes on Kiln's CPU target: every launch of its program timed on its own
(`runtime.CpuExecutor.profile`: worker 0's clock before each launch, a barrier before every one),
beside the launch's fused group, its FLOPs and the bytes of the buffers it touches, and the
whole model's time on Kiln (a plain run) and on ONNX Runtime.

    .venv/bin/python benchmarks/profile_cpu.py "bert encoder layer" "mlp 768-3072-1000" [--threads 2]

Cases are named as in benchmarks/cpu_cases.py (the realistic sizes, or the model tests by name).
Per launch: the fastest and the median microseconds of --runs profiled runs; GFLOP/s and GB/s
are the group's FLOPs (split across a split group's pieces by their estimated work) and the
launch's buffers' bytes over the fastest time. With --threads 1 the numbers measure code alone;
with more, they include each launch's imbalance and barrier, and on a shared machine the time
other processes take from the workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.cpu_cases import REALISTIC


@dataclass(frozen=True)
class LaunchRow:
    """One launch of the profiled program."""

    kernel: str
    parallel: bool
    seconds: float
    """The fastest of the profiled runs."""
    median_s: float
    flops: float
    bytes_touched: int
    ops: str
    """The ops of its group's body, in order (movement and constants left out)."""


def launch_rows(compiled, inputs: Sequence[np.ndarray], runs: int) -> list[LaunchRow]:
    """Each launch of `compiled` (a CPU `CompiledModel`) with its median time over `runs` runs."""
    from backends.cpu.cost import kernel_work
    from backends.cpu.split import split_kernel
    from backends.lowering.group import lower_group
    from ir.summary import summarize

    program, executor = compiled.program, compiled.executor
    readings = executor.profile(list(inputs), runs)
    # on a shared machine every run may lose time slices: the fastest run of each launch is the
    # better estimate of its cost, the median says how often it loses them
    seconds, median = readings.min(axis=0), np.median(readings, axis=0)
    flops: dict[str, float] = {}
    ops: dict[str, str] = {}
    fused = [node for node in compiled.graph.nodes if node.op == "fused"]
    for g, node in enumerate(fused):
        body = node.attrs["body"]
        kernel = lower_group(node, f"k{g}_{body.name}")
        pieces, _ = split_kernel(kernel)
        work = [max(kernel_work(p), 1) for p in pieces]
        names = [n.op for n in body.nodes if n.op not in ("const", "reshape", "transpose", "expand", "squeeze",
                                                          "unsqueeze", "flatten")]  # fmt: skip
        for piece, share in zip(pieces, work, strict=True):
            flops[piece.name] = summarize(body).flops * share / sum(work)
            ops[piece.name] = "+".join(names) or "copy"
    rows = []
    for launch, time_s, median_s in zip(program.launches, seconds, median, strict=True):
        touched = sum(program.buffers[i].nbytes for i in set(launch.args))
        rows.append(LaunchRow(launch.kernel, launch.parallel, float(time_s), float(median_s),
                              flops.get(launch.kernel, 0.0), touched, ops.get(launch.kernel, "?")))  # fmt: skip
    return rows


def table(rows: Sequence[LaunchRow]) -> str:
    total = sum(r.seconds for r in rows)
    lines = [
        "| # | kernel | ops | par | us | median us | % | MFLOP | MB | GFLOP/s | GB/s |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, r in enumerate(rows):
        rate = r.flops / r.seconds * 1e-9 if r.seconds else 0.0
        bandwidth = r.bytes_touched / r.seconds * 1e-9 if r.seconds else 0.0
        lines.append(
            f"| {k} | {r.kernel[:40]} | {r.ops[:40]} | {'y' if r.parallel else ''} | {r.seconds * 1e6:.1f} "
            f"| {r.median_s * 1e6:.1f} | {100 * r.seconds / total:.1f} | {r.flops * 1e-6:.2f} "
            f"| {r.bytes_touched * 1e-6:.2f} | {rate:.1f} | {bandwidth:.1f} |"
        )
    flops = sum(r.flops for r in rows)
    median = sum(r.median_s for r in rows)
    lines.append(
        f"| | total | | | {total * 1e6:.1f} | {median * 1e6:.1f} | 100 | {flops * 1e-6:.1f} | "
        f"| {flops / total * 1e-9:.1f} | |"
    )
    return "\n".join(lines)


def profile_case(name: str, threads: int, runs: int, ort: bool) -> str:
    import torch

    import compiler

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
    import models

    factories = {**REALISTIC, **models.MODELS}
    if name not in factories:
        raise SystemExit(f"unknown case {name!r}; cases: {', '.join(factories)}")
    module, example = factories[name]()
    inputs = [t.numpy() for t in example]
    with common.torch_threads(threads), torch.no_grad():
        compiled = compiler.compile(module, example, target="cpu", threads=threads)
        executor = compiled.executor
        for _ in range(3):
            executor.run(inputs)
        rows = launch_rows(compiled, inputs, runs)
        plain = common.measure(lambda: executor.run(inputs), common.QUICK)
        out = [f"## {name} ({' '.join('x'.join(map(str, a.shape)) for a in inputs)}), {threads} thread(s)", ""]
        out.append(table(rows))
        out.append("")
        summary = (
            f"Kiln plain run: median {plain.median_s * 1e3:.3f} ms (fastest {plain.min_s * 1e3:.3f}); "
            f"profiled sum {sum(r.seconds for r in rows) * 1e3:.3f} ms; {len(rows)} launches, "
            f"{sum(r.parallel for r in rows)} parallel, {executor.barriers} barriers"
        )
        if ort:
            with common.quiet():
                call = common.ort_runner(common.export_onnx(module, example), example, threads)
            timing = common.measure(call, common.QUICK)
            summary += f"; ONNX Runtime: median {timing.median_s * 1e3:.3f} ms (fastest {timing.min_s * 1e3:.3f})"
        out.append(summary)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", help="case names (benchmarks/cpu_cases.py REALISTIC, or a model test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per launch median")
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {time.strftime('%H:%M:%S')}\n")
    for name in args.cases:
        print(profile_case(name, args.threads, args.runs, not args.no_ort))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
