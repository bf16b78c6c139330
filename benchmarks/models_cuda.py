"""Kiln's CUDA target beside torch eager and (optionally) torch.compile on the GPU, at realistic
sizes: a BERT-base-shaped encoder (width 768, 12 heads, FFN 3072) at sequence 128/512 and batch
1/8 in fp16, and the model tests. Compile times (cold) and median latencies from CUDA events,
with torch CUDA tensors in and out (Kiln's no-copy path), as a markdown table.

    python benchmarks/models_cuda.py                    # on a GPU machine
    python benchmarks/models_cuda.py --torch-compile    # also torch.compile (slow to compile)
    python benchmarks/models_cuda.py --dry-run          # no GPU: build and compile for CUDA only

Kiln is checked against eager before it is timed (loosely: fp16); a Kiln run slower than
--max-seconds is reported once and not repeated, since the first GPU schedules are naive.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "models")]

import models  # noqa: E402

import compiler  # noqa: E402


def bert_encoder(layers: int, batch: int, sequence: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """BERT-base's encoder layer shape (post-norm, GELU), `layers` deep."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True)
    module = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    return module, (torch.randn(batch, sequence, 768),)


def cases(args: argparse.Namespace) -> list[tuple[str, Callable]]:
    found = [
        (f"bert-{args.layers}L b{batch} s{sequence}", lambda b=batch, s=sequence: bert_encoder(args.layers, b, s))
        for batch in (1, 8)
        for sequence in (128, 512)
    ]
    return found + [(name, make) for name, make in models.MODELS.items()] if args.model_tests else found


def cuda_ms(fn: Callable[[], object], runs: int, max_seconds: float = 1e9) -> tuple[float, int]:
    """Median milliseconds of `fn` on the GPU (CUDA events around each call, after warm-up), and
    the runs taken; one run only when the first exceeds `max_seconds`."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    began = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    if time.perf_counter() - began > max_seconds:
        return (time.perf_counter() - began) * 1e3, 1
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), runs


def row(name: str, make: Callable, args: argparse.Namespace) -> str:
    module, inputs = make()
    arch = args.arch or "sm_{}{}".format(*torch.cuda.get_device_capability())
    started = time.perf_counter()
    fast = compiler.compile(module, inputs, target="cuda", precision=args.precision, arch=arch)
    compile_s = time.perf_counter() - started
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    module = module.cuda().to(dtype)
    on_gpu = tuple(x.cuda() for x in inputs)
    with torch.no_grad():
        expected = module(*(x.to(dtype) for x in on_gpu)).float()
        got = fast(*on_gpu)
        error = (got.float() - expected).abs().max().item()
        kiln, kiln_runs = cuda_ms(lambda: fast(*on_gpu), args.runs, args.max_seconds)
        low = tuple(x.to(dtype) for x in on_gpu)
        eager, _ = cuda_ms(lambda: module(*low), args.runs)
        cells = [name, f"{compile_s:.1f}", f"{kiln:.3f}" + ("*" if kiln_runs == 1 else ""), f"{eager:.3f}"]
        if args.torch_compile:
            compiled = torch.compile(module)
            cells.append(f"{cuda_ms(lambda: compiled(*low), args.runs)[0]:.3f}")
    return "| " + " | ".join([*cells, f"{kiln / eager:.2f}x", f"{error:.2e}"]) + " |"


def dry_run(args: argparse.Namespace) -> int:
    """Build every case and compile it for CUDA (NVRTC, no GPU): kernels, compile time, the
    largest register count and any spills."""
    print("| model | kernels | compile s | max registers | spills |\n| --- | --- | --- | --- | --- |")
    for name, make in cases(args):
        module, inputs = make()
        started = time.perf_counter()
        fast = compiler.compile(module, inputs, target="cuda", precision=args.precision, arch=args.arch or "sm_90")
        seconds = time.perf_counter() - started
        reports = [r for per_arch in fast.stats["cuda"].values() for r in per_arch.values()]
        spills = sum(r.spill_stores + r.spill_loads for r in reports)
        print(f"| {name} | {len(fast.kernels)} | {seconds:.1f} | {max(r.registers for r in reports)} | {spills} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (BERT-base has 12)")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=5.0, help="time one Kiln run only when slower")
    parser.add_argument("--arch", help="the cubin architecture (default: the device's)")
    parser.add_argument("--model-tests", action="store_true", help="also the small model tests")
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="compile for CUDA without a GPU, run nothing")
    args = parser.parse_args()
    if args.dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to compile only", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, precision {args.precision}; milliseconds (median of {args.runs})")
    headers = ["model", "compile s", "kiln ms", "eager ms", *(["torch.compile ms"] if args.torch_compile else [])]
    headers += ["kiln/eager", "max |error|"]
    print("| " + " | ".join(headers) + " |\n|" + " --- |" * len(headers))
    for name, make in cases(args):
        try:
            print(row(name, make, args), flush=True)
        except Exception as error:  # a benchmark reports a case it cannot run and goes on
            print(f"| {name} | failed: {type(error).__name__}: {str(error)[:200]} |", flush=True)
    print("* one run only: slower than --max-seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
