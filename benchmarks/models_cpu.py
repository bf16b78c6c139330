"""Kiln's CPU target beside PyTorch eager, ONNX Runtime and (optionally) torch.compile on the
model tests, in one run: compile times (cold, then cached) and median latencies, as a markdown
table with ratios.

    .venv/bin/python benchmarks/models_cpu.py                  # eager and ONNX Runtime
    .venv/bin/python benchmarks/models_cpu.py --torch-compile  # also torch.compile (slow to compile)

Every runtime gets the same number of threads (--threads, default 2). Medians over --runs calls
after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))

import models  # noqa: E402

import compiler  # noqa: E402


def median_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def onnx_runtime_ms(module, example_inputs, runs: int, threads: int) -> float | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.onnx")
        torch.onnx.export(module, example_inputs, path, dynamo=True, verbose=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), example_inputs)}
    return median_ms(lambda: session.run(None, feeds), runs)


def benchmark_row(name: str, module, example_inputs, args: argparse.Namespace) -> str:
    start = time.perf_counter()
    compiler.compile(module, example_inputs, target="cpu", threads=args.threads)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    fast = compiler.compile(module, example_inputs, target="cpu", threads=args.threads)
    cached = time.perf_counter() - start
    with torch.no_grad():
        torch.testing.assert_close(fast(*example_inputs), module(*example_inputs), rtol=1e-4, atol=1e-5)
        kiln = median_ms(lambda: fast(*example_inputs), args.runs)
        eager = median_ms(lambda: module(*example_inputs), args.runs)
        ort = onnx_runtime_ms(module, example_inputs, args.runs, args.threads)
        ort_text = "-" if ort is None else f"{ort:.3f}"
        row = f"| {name} | {cold:.2f} | {cached:.2f} | {kiln:.3f} | {eager:.3f} | {ort_text} |"
        if args.torch_compile:
            compiled = torch.compile(module)
            row += f" {median_ms(lambda: compiled(*example_inputs), args.runs):.3f} |"
    return row + f" {kiln / eager:.2f}x | {'-' if ort is None else f'{kiln / ort:.2f}x'} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (minutes to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kiln-bench-cache-")  # cold: an empty cache

    header = "| model | compile cold (s) | compile cached (s) | Kiln CPU (ms) | eager (ms) | ORT (ms) |"
    header += " torch.compile (ms) |" if args.torch_compile else ""
    header += " Kiln / eager | Kiln / ORT |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for name, factory in models.MODELS.items():
        print(benchmark_row(name, *factory(), args), flush=True)
    shapes = {name: [tuple(t.shape) for t in factory()[1]] for name, factory in models.MODELS.items()}
    print(f"\nthreads {args.threads}; inputs {shapes}; {np.__name__} {np.__version__}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
