"""Kiln's demo: compile a small GPT-style decoder (plain torch, bundled here) for the CPU, check
that it computes what PyTorch computes, and time it beside PyTorch eager.

Run: `make demo`. The CPU backend is correct-first today (plain loop nests); the speed work
(tiled GEMM micro-kernels, vectorised reductions) is the next issue, so expect eager to win.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import compiler
from ir.summary import summarize

WIDTH, HEADS, LAYERS, TOKENS, BATCH = 64, 4, 2, 16, 2


class Block(nn.Module):
    """GPT-2's decoder block: pre-norm causal self-attention and a GELU MLP, each residual."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc, self.out = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, HEADS, width // HEADS).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, WIDTH)
        self.position = nn.Parameter(torch.randn(TOKENS, WIDTH) / math.sqrt(WIDTH))
        self.blocks = nn.Sequential(*[Block() for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 256, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.position)))


def best_time(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    torch.manual_seed(0)
    model = TinyGPT().eval()
    tokens = torch.randint(0, 256, (BATCH, TOKENS))

    start = time.perf_counter()
    fast = compiler.compile(model, example_inputs=(tokens,), target="cpu")
    compile_s = time.perf_counter() - start
    print(f"compiled TinyGPT ({LAYERS} layers, width {WIDTH}) for the CPU in {compile_s:.2f} s:")
    for record in fast.stats["passes"]:
        print(f"  {record}")
    print(f"  {summarize(fast.graph)}; {len(fast.kernels)} kernels\n")

    with torch.no_grad():
        expected = model(tokens)
        got = fast(tokens)
        error = (got - expected).abs().max().item()
        matches = torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        print(f"Kiln CPU vs PyTorch eager: max abs error {error:.2e} -> {'MATCH' if matches else 'MISMATCH'}")
        kiln_s = best_time(lambda: fast(tokens))
        eager_s = best_time(lambda: model(tokens))
    reference = compiler.compile(model, example_inputs=(tokens,), target="reference")
    interpreter_s = best_time(lambda: reference(tokens), repeats=3)
    print(f"median latency: Kiln CPU {kiln_s * 1e3:.2f} ms, PyTorch eager {eager_s * 1e3:.2f} ms "
          f"(Kiln / eager = {kiln_s / eager_s:.2f}x), reference interpreter {interpreter_s * 1e3:.1f} ms")  # fmt: skip
    first = next(iter(fast.kernels.values()))
    print("\nthe first kernel, in kernel IR:\n" + first)
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
