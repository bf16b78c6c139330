"""Convolutions on the CPU target beside torch eager and ONNX Runtime: single conv layers in GFLOP/s
(ResNet and MobileNet shapes, each followed by the ReLU a network fuses into it) and whole CNNs in
milliseconds (the ResNet-style CNN of the model tests at 3x224x224, and the trained PP-OCRv4 text
detector at 3x160x160), on one thread and on two, as markdown tables.

    .venv/bin/python benchmarks/conv_cpu.py                           # layers and models, 1 and 2 threads
    .venv/bin/python benchmarks/conv_cpu.py --part layers --threads 1 --quick --cpu-time

Every result is checked against torch's (or ONNX Runtime's) before it is timed. Timing is
`benchmarks.common.measure` (medians after a warm-up; --quick for a shorter time box); --cpu-time
times with the process's CPU time instead of the wall clock, which on a machine shared with other
jobs is the robust measure for one thread (with two it sums both threads: don't).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    FULL,
    QUICK,
    Budget,
    export_onnx,
    markdown_table,
    measure,
    ort_runner,
    ort_session_options,
    torch_threads,
)

DETECTOR = Path(__file__).resolve().parent.parent / ".cache" / "models" / "ch_PP-OCRv4_det_infer.onnx"

LAYERS = {
    # name: (channels_in, channels_out, kernel, stride, groups, size)
    "3x3 64->64 56x56": (64, 64, 3, 1, 1, 56),
    "1x1 256->64 56x56": (256, 64, 1, 1, 1, 56),
    "3x3 s2 64->128 56x56": (64, 128, 3, 2, 1, 56),
    "stem 7x7 s2 3->64 224x224": (3, 64, 7, 2, 1, 224),
    "depthwise 3x3 128 56x56": (128, 128, 3, 1, 128, 56),
    "depthwise 3x3 s2 128 56x56": (128, 128, 3, 2, 128, 56),
}


def conv_layer(channels_in: int, channels_out: int, kernel: int, stride: int, groups: int, size: int):
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels_in, channels_out, kernel, stride, kernel // 2, groups=groups)
    return torch.nn.Sequential(conv, torch.nn.ReLU()).eval(), (torch.randn(1, channels_in, size, size),)


def conv_flops(module, inputs) -> float:
    """2 x (multiply-adds) of the module's convolutions for `inputs` (hooks record output sizes)."""
    import torch

    total = [0.0]

    def count(layer, _, out):
        per_output = layer.in_channels // layer.groups * int(np.prod(layer.kernel_size))
        total[0] += 2.0 * out.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(*inputs)
    for hook in hooks:
        hook.remove()
    return total[0]


def _check(got, expected, what: str) -> None:
    """Relative to the largest element, or absolute below 1 (the detector's map is ~1e-12 on noise)."""
    got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
    error = float(np.abs(got - expected).max()) / max(float(np.abs(expected).max()), 1.0)
    if error > 1e-3:
        raise AssertionError(f"{what}: Kiln's result is off by {error:.2e} (relative to the largest element)")


def layers(threads: int, budget: Budget, clock=time.perf_counter) -> list[list]:
    import torch

    import compiler

    rows = []
    for name, spec in LAYERS.items():
        module, inputs = conv_layer(*spec)
        flops = conv_flops(module, inputs)
        fast = compiler.compile(module, inputs, target="cpu", threads=threads)
        with torch_threads(threads), torch.no_grad():
            _check(fast(*inputs), module(*inputs), name)
            kiln = measure(lambda fast=fast, inputs=inputs: fast(*inputs), budget, clock)
            eager = measure(lambda module=module, inputs=inputs: module(*inputs), budget, clock)
        rows.append([name, threads, flops / kiln.median_s / 1e9, flops / eager.median_s / 1e9,
                     eager.median_s / kiln.median_s])  # fmt: skip
    return rows


def models(threads: int, budget: Budget, clock=time.perf_counter) -> list[list]:
    import onnxruntime
    import torch

    import compiler
    from tests.models.models import ResNetCNN, randomize_batch_norms

    rows = []
    torch.manual_seed(0)
    cnn = ResNetCNN()
    randomize_batch_norms(cnn)
    cnn.eval()
    x = (torch.randn(1, 3, 224, 224),)
    fast = compiler.compile(cnn, x, target="cpu", threads=threads)
    ort = ort_runner(export_onnx(cnn, x), x, threads)
    with torch_threads(threads), torch.no_grad():
        _check(fast(*x), cnn(*x), "ResNetCNN")
        timings = [measure(fn, budget, clock) for fn in (lambda: fast(*x), lambda: cnn(*x), ort)]
    rows.append(["ResNetCNN 1x3x224x224", threads, *(t.median_s * 1e3 for t in timings)])
    if DETECTOR.exists():
        image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 160, 160)).astype(np.float32)
        fast = compiler.compile(str(DETECTOR), example_inputs=(image,), target="cpu", threads=threads)
        session = onnxruntime.InferenceSession(str(DETECTOR), ort_session_options(threads),
                                               providers=["CPUExecutionProvider"])  # fmt: skip
        feed = {session.get_inputs()[0].name: image}
        _check(np.asarray(fast(image)), session.run(None, feed)[0], "PP-OCRv4 detector")
        timings = [measure(fn, budget, clock) for fn in (lambda: fast(image), lambda: session.run(None, feed))]
        rows.append(["PP-OCRv4 det 1x3x160x160", threads, timings[0].median_s * 1e3, None, timings[1].median_s * 1e3])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("layers", "models", "all"), default="all")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="a shorter time box per cell")
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time (one thread only)")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.part in ("layers", "all"):
        rows = [row for threads in args.threads for row in layers(threads, budget, clock)]
        print(markdown_table(["layer (+relu)", "threads", "Kiln GFLOP/s", "torch GFLOP/s", "Kiln / torch speed"], rows))
        print()
    if args.part in ("models", "all"):
        rows = [row for threads in args.threads for row in models(threads, budget, clock)]
        print(markdown_table(["model", "threads", "Kiln ms", "torch eager ms", "ONNX Runtime ms"], rows))


if __name__ == "__main__":
    main()
