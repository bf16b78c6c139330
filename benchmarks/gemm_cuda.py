"""Kiln's CUDA kernels beside torch on the GPU: GEMM (TFLOP/s and % of torch's cuBLAS) in fp16 and
bf16, and the memory-bound layer norm and softmax (GB/s and % of the measured copy bandwidth).

    python benchmarks/gemm_cuda.py              # on a GPU machine (4096^3 GEMMs by default)
    python benchmarks/gemm_cuda.py --dry-run    # no GPU: build and compile each kernel for CUDA only

The issue's targets (benchmarks, not tests): GEMM >= 60% of cuBLAS, memory-bound kernels >= 70%
of copy bandwidth. Graphs are built in the IR directly (inputs, no constants), so each case is one
kernel; inputs are torch CUDA tensors, passed without copies.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from models_cuda import cuda_ms  # noqa: E402

import compiler  # noqa: E402
from ir import DType, Graph, GraphBuilder  # noqa: E402

DTYPES = {"fp16": (DType.f16, torch.float16), "bf16": (DType.bf16, torch.bfloat16)}


def gemm_graph(n: int, dtype: DType) -> Graph:
    b = GraphBuilder(f"gemm_{n}")
    x, w = b.input("x", (n, n), dtype), b.input("w", (n, n), dtype)
    return b.build(b.matmul(x, w))


def layer_norm_graph(rows: int, width: int, dtype: DType) -> Graph:
    b = GraphBuilder("layer_norm")
    x = b.input("x", (rows, width), dtype)
    scale, shift = b.input("scale", (width,), dtype), b.input("shift", (width,), dtype)
    return b.build(b.layer_norm(x, scale, shift, axis=-1, epsilon=1e-5))


def softmax_graph(rows: int, width: int, dtype: DType) -> Graph:
    b = GraphBuilder("softmax")
    return b.build(b.softmax(b.input("x", (rows, width), dtype), axis=-1))


def cases(args: argparse.Namespace):
    """(name, graph, torch reference as a function of the inputs, FLOPs, bytes moved)."""
    n, rows, width = args.size, args.rows, args.width
    for precision in args.precision:
        ir_dtype, _ = DTYPES[precision]
        size = ir_dtype.itemsize
        yield (f"gemm {n}^3 {precision}", gemm_graph(n, ir_dtype), torch.matmul, 2 * n**3, 3 * n * n * size)
        norm_bytes = (2 * rows * width + 2 * width) * size
        layer_norm = lambda x, s, t: torch.nn.functional.layer_norm(x, (x.shape[-1],), s, t, 1e-5)
        yield (f"layer_norm {rows}x{width} {precision}", layer_norm_graph(rows, width, ir_dtype), layer_norm, 0,
               norm_bytes)  # fmt: skip
        yield (f"softmax {rows}x{width} {precision}", softmax_graph(rows, width, ir_dtype),
               lambda x: torch.softmax(x, -1), 0, 2 * rows * width * size)  # fmt: skip


def time_case(fast, graph: Graph, reference, args: argparse.Namespace) -> tuple[float, int, float]:
    """Kiln's milliseconds and runs, and torch's, on the same random CUDA inputs (checked first)."""
    generator = np.random.default_rng(0)
    dtype = {DType.f16: torch.float16, DType.bf16: torch.bfloat16}[graph.inputs[0].type.dtype]
    inputs = [torch.from_numpy(generator.standard_normal(v.type.shape, np.float32)) for v in graph.inputs]
    inputs = [x.to(dtype).cuda() for x in inputs]
    torch.testing.assert_close(fast(*inputs).float(), reference(*inputs).float(), rtol=5e-2, atol=5e-2)
    kiln, runs = cuda_ms(lambda: fast(*inputs), args.runs, args.max_seconds)
    return kiln, runs, cuda_ms(lambda: reference(*inputs), args.runs)[0]


def copy_bandwidth_gb_s(nbytes: int, runs: int) -> float:
    source = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    ms, _ = cuda_ms(lambda: target.copy_(source), runs)
    return 2 * nbytes / ms / 1e6  # read and write


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="GEMM M = N = K")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--precision", nargs="+", default=["fp16", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=5.0, help="time one Kiln run only when slower")
    parser.add_argument("--dry-run", action="store_true", help="compile for CUDA without a GPU, run nothing")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to compile only", file=sys.stderr)
        return 2
    arch = "sm_90" if args.dry_run else "sm_{}{}".format(*torch.cuda.get_device_capability())
    headers = ["case", "compile s", "kiln ms", "torch ms", "kiln rate", "% of torch", "% of copy"]
    if not args.dry_run:
        copy = copy_bandwidth_gb_s(args.rows * args.width * 2, args.runs)
        print(f"{torch.cuda.get_device_name()}: copy bandwidth {copy:.0f} GB/s")
    print("| " + " | ".join(headers) + " |\n|" + " --- |" * len(headers))
    for name, graph, reference, flops, nbytes in cases(args):
        started = time.perf_counter()
        fast = compiler.compile(graph, target="cuda", arch=arch)
        compile_s = time.perf_counter() - started
        if args.dry_run:
            (report,) = fast.stats["cuda"][arch].values()
            print(f"| {name} | {compile_s:.1f} | - | - | {report.registers} registers, {report.spill_stores} spilled |")
            continue
        kiln, runs, torch_ms = time_case(fast, graph, reference, args)
        rate = f"{flops / kiln / 1e9:.1f} TFLOP/s" if flops else f"{nbytes / kiln / 1e6:.0f} GB/s"
        of_copy = "-" if flops else f"{100 * nbytes / kiln / 1e6 / copy:.0f}%"
        print(f"| {name} | {compile_s:.1f} | {kiln:.3f}{'*' if runs == 1 else ''} | {torch_ms:.3f} | {rate} | "
              f"{100 * torch_ms / kiln:.0f}% | {of_copy} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
