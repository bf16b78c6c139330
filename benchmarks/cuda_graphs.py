"""What a CUDA graph saves: each model compiled for CUDA twice, launching kernel by kernel and
replaying one CUDA graph of all its launches (`compile(..., cuda_graph=True)`), timed per call
through the executor with fixed device pointers (the runtime alone: no torch allocation) and
through the compiled model on torch CUDA tensors (what a user calls). Medians of CUDA-event times.

    python benchmarks/cuda_graphs.py [--runs 200] [--precision fp16] [--layers 2]

Graphs save per-launch CPU and driver cost, so small models (the model tests: ~10 kernels of a
few microseconds) gain most; a BERT-base encoder at sequence 128 shows what remains when the
kernels themselves take longer. The graphed device path copies its inputs in and outputs out
(the graph holds its own slots), which the times include.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from models_cuda import bert_encoder, cuda_ms, models  # noqa: E402

import compiler  # noqa: E402


def row(name: str, make, args: argparse.Namespace) -> str:
    module, inputs = make()
    arch = "sm_{}{}".format(*torch.cuda.get_device_capability())
    on_gpu = [x.cuda() for x in inputs]
    cells = [name]
    for graph in (False, True):
        fast = compiler.compile(module, inputs, target="cuda", precision=args.precision, arch=arch, cuda_graph=graph)
        outputs = fast(*on_gpu)
        outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
        executor = fast.load_executor()
        pointers = [x.data_ptr() for x in on_gpu], [y.data_ptr() for y in outputs]
        runtime_ms, _ = cuda_ms(lambda e=executor, p=pointers: e.run_on_device(*p), args.runs)
        model_ms, _ = cuda_ms(lambda f=fast: f(*on_gpu), args.runs)
        cells += [f"{runtime_ms * 1e3:.1f}", f"{model_ms * 1e3:.1f}"]
        kernels = len(fast.program.launches)
    return f"| {' | '.join([cells[0], str(kernels), *cells[1:]])} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--layers", type=int, default=2, help="BERT-base encoder layers")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, {args.precision}; microseconds per call (median of {args.runs})")
    print("| model | kernels | launches: runtime | launches: model | graph: runtime | graph: model |")
    print("| --- | --- | --- | --- | --- | --- |")
    cases = [*models.MODELS.items(), (f"bert-{args.layers}L b1 s128", lambda: bert_encoder(args.layers, 1, 128))]
    for name, make in cases:
        try:
            print(row(name, make, args), flush=True)
        except Exception as error:  # a benchmark reports a case it cannot run and goes on
            print(f"| {name} | failed: {type(error).__name__}: {str(error)[:200]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
