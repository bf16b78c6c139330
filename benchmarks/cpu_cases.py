"""What the CPU suite measures (benchmarks/cpu_suite.py runs it): one `Case` per table row, in three
sections. (a) the model tests of tests/models/models.py at their test shapes, and realistic sizes
built from the same classes (or, for the CNN, from the same blocks): an MLP 768-3072-1000, a ResNet
of 32-128 channels at 1x3x64x64, a BERT-base encoder layer and GPT-2 blocks at [1, 128, 768] with
12 heads; (b) fp32 GEMM a @ b, both operands inputs; (c) memory-bound ops, with copy as the
reference bandwidth. Each case makes its model on demand, seeded, so only one case's weights
live at a time and every contender sees the same numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))

import models

CONTENDERS = ("kiln", "eager", "torch.compile", "ort")
MODELS, GEMM, MEMORY = "models", "gemm", "memory"
SECTIONS = (MODELS, GEMM, MEMORY)

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]


@dataclass(frozen=True)
class Case:
    """One row: a model made on demand (so only one case's weights live at a time)."""

    section: str
    name: str
    make: Factory
    threads: int
    group: str = ""
    """Models: "test" or "realistic"; the geometric means are taken per group."""
    flops: float = 0.0
    bytes_moved: float = 0.0
    """The fewest bytes the op must read and write (inputs, parameters, outputs)."""
    contenders: tuple[str, ...] = CONTENDERS

    @property
    def is_reference(self) -> bool:
        """A row that measures the machine (copy), not Kiln."""
        return "kiln" not in self.contenders


# The modules the suite defines: single ops for (b) and (c), and a wider CNN for (a).


class MatMul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class Softmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


class LinearGelu(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(x))


class CopyInto(nn.Module):
    """`out.copy_(x)` into a preallocated tensor: the machine's copy bandwidth, as a reference."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("out", torch.empty(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.copy_(x)


class WideResNetCNN(nn.Module):
    """The model tests' ResNet at ImageNet-like widths (32-128 channels) for 64x64 inputs."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.stages = nn.Sequential(
            models.BasicBlock(32, 32, 1), models.BasicBlock(32, 64, 2), models.BasicBlock(64, 128, 2)
        )
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


def _seeded(make_module: Callable[[], nn.Module], *shapes: tuple[int, ...]) -> Factory:
    def make() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        torch.manual_seed(0)
        module = make_module()
        models.randomize_batch_norms(module)  # as the model tests do: default statistics hide bugs
        generator = torch.Generator().manual_seed(1)
        return module.eval(), tuple(torch.randn(shape, generator=generator) for shape in shapes)

    return make


# (a) Models.


REALISTIC: dict[str, Factory] = {
    "mlp 768-3072-1000": _seeded(lambda: models.MLP(768, 3072, 1000), (32, 768)),
    "resnet_cnn 32-128ch": _seeded(WideResNetCNN, (1, 3, 64, 64)),
    "bert encoder layer": _seeded(
        lambda: nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True),
        (1, 128, 768),
    ),
    "gpt block 12 heads": _seeded(lambda: models.GPTBlock(768, 12), (1, 128, 768)),
    "gpt block masked": _seeded(lambda: models.MaskedAttentionGPTBlock(768, 12, context=128), (1, 128, 768)),
}


def model_cases(threads: int, quick: bool) -> list[Case]:
    """The model tests at their test shapes, then the realistic sizes (--quick: one of them)."""
    cases = [Case(MODELS, name, make, threads, "test") for name, make in models.MODELS.items()]
    realistic = {"gpt block 12 heads": REALISTIC["gpt block 12 heads"]} if quick else REALISTIC
    return cases + [Case(MODELS, name, make, threads, "realistic") for name, make in realistic.items()]


# (b) GEMM and (c) memory-bound ops.


def gemm_cases(sizes: Sequence[int], threads: Sequence[int]) -> list[Case]:
    """`a @ b` on n x n inputs for each size, on each thread count."""
    return [
        Case(GEMM, f"{n}", _seeded(MatMul, (n, n), (n, n)), t, flops=2.0 * n**3, bytes_moved=3 * 4.0 * n * n)
        for t in threads
        for n in sizes
    ]


def memory_cases(rows: int, width: int, threads: int) -> list[Case]:
    """The copy references and the memory-bound ops over [rows, width] f32 (as many elements for gelu)."""
    elements = rows * width
    stream = 2 * 4.0 * elements  # read x, write y: f32
    narrow = 16  # gelu(x @ W + b) with W [16, 16]: ~4 FLOP/byte, under this machine's ~7 FLOP/byte balance
    narrow_rows = elements // narrow
    return [
        Case(MEMORY, "copy", _seeded(lambda: CopyInto((rows, width)), (rows, width)), threads,
             bytes_moved=stream, contenders=("eager",)),
        # On one thread: no barrier at its end to wait for a thread that another process has preempted.
        Case(MEMORY, "copy, 1 thread", _seeded(lambda: CopyInto((rows, width)), (rows, width)), 1,
             bytes_moved=stream, contenders=("eager",)),
        # The same copy at 4x the size, beyond the last-level cache: the DRAM bandwidth.
        Case(MEMORY, "copy (4x, DRAM)", _seeded(lambda: CopyInto((4 * rows, width)), (4 * rows, width)), threads,
             bytes_moved=4 * stream, contenders=("eager",)),
        Case(MEMORY, "x * 2", _seeded(Scale, (rows, width)), threads, bytes_moved=stream),
        Case(MEMORY, "layer_norm", _seeded(lambda: nn.LayerNorm(width), (rows, width)), threads,
             bytes_moved=stream + 2 * 4.0 * width),
        Case(MEMORY, "softmax", _seeded(Softmax, (rows, width)), threads, bytes_moved=stream),
        Case(MEMORY, f"gelu(x @ W{narrow}x{narrow} + b)", _seeded(lambda: LinearGelu(narrow), (narrow_rows, narrow)),
             threads, flops=2.0 * narrow_rows * narrow * narrow, bytes_moved=stream + 4.0 * narrow * (narrow + 1)),
    ]  # fmt: skip


def suite(threads: int, quick: bool, sections: Sequence[str] = SECTIONS) -> list[Case]:
    """The cases of one run: --quick keeps the test-shape models, one realistic model, the two
    smaller GEMMs and the memory ops at full size (fast already, and smaller ones would fit in the caches)."""
    cases = []
    if MODELS in sections:
        cases += model_cases(threads, quick)
    if GEMM in sections:
        cases += gemm_cases([256, 512] if quick else [256, 512, 1024, 2048], sorted({1, threads}))
    if MEMORY in sections:
        cases += memory_cases(4096, 1024, threads)
    return cases
