"""Kiln's CPU target beside PyTorch eager, ONNX Runtime and (optionally) torch.compile on the
model tests, in one run: compile times (cold, then cached) and median latencies, as a markdown
table with ratios.

    .venv/bin/python benchmarks/models_cpu.py                  # eager and ONNX Runtime
    .venv/bin/python benchmarks/models_cpu.py --torch-compile  # also torch.compile (slow to compile)

Every runtime gets the same number of threads (--threads, default 2). Medians over --runs calls
after a warm-up (benchmarks/common.py). The full suite, with realistic sizes, GEMM and memory-bound
ops, is benchmarks/cpu_suite.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "models"))

import models  # noqa: E402

import compiler  # noqa: E402
from benchmarks import common  # noqa: E402


def benchmark_row(name: str, module, example_inputs, args: argparse.Namespace) -> list:
    budget = common.Budget(min_runs=args.runs, min_time_s=0.0, max_time_s=60.0, max_runs=args.runs)
    start = time.perf_counter()
    compiler.compile(module, example_inputs, target="cpu", threads=args.threads)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    fast = compiler.compile(module, example_inputs, target="cpu", threads=args.threads)
    cached = time.perf_counter() - start
    with common.torch_threads(args.threads), torch.no_grad():
        torch.testing.assert_close(fast(*example_inputs), module(*example_inputs), rtol=1e-4, atol=1e-5)
        kiln = common.measure(lambda: fast(*example_inputs), budget).median_s * 1e3
        eager = common.measure(lambda: module(*example_inputs), budget).median_s * 1e3
        try:
            ort_model = common.export_onnx(module, example_inputs)
            ort_call = common.ort_runner(ort_model, example_inputs, args.threads)
            ort = common.measure(ort_call, budget).median_s * 1e3
        except Exception as error:  # no onnxruntime, or an export that fails: say so in the cell
            ort = common.failure(error)
        row = [name, cold, cached, kiln, eager, ort]
        if args.torch_compile:
            compiled = common.torch_compile_runner(module, example_inputs, args.threads)
            row.append(common.measure(compiled, budget).median_s * 1e3)
    ort_ms = ort if isinstance(ort, float) else None
    return [*row, common.ratio(kiln, eager), common.ratio(kiln, ort_ms)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (minutes to compile)")
    args = parser.parse_args()
    os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kiln-bench-cache-")  # cold: an empty cache

    headers = ["model", "compile cold (s)", "compile cached (s)", "Kiln CPU (ms)", "eager (ms)", "ORT (ms)"]
    headers += ["torch.compile (ms)"] if args.torch_compile else []
    headers += ["Kiln / eager", "Kiln / ORT"]
    rows = [benchmark_row(name, *factory(), args) for name, factory in models.MODELS.items()]
    print(common.markdown_table(headers, rows))
    shapes = {name: [tuple(t.shape) for t in factory()[1]] for name, factory in models.MODELS.items()}
    print(f"\nthreads {args.threads}; inputs {shapes}; {np.__name__} {np.__version__}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
