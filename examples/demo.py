"""Kiln's demo: build a small transformer-style MLP block in the graph IR, print it, run it in
the reference interpreter, and compare it with PyTorch eager on the same weights.

Until the CPU and CUDA backends land, the reference interpreter is the only target; the demo
shows that the IR computes what PyTorch computes, and how long each takes. Run: `make demo`.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import ir
from ir import DType, GraphBuilder
from ir.summary import summarize

BATCH, TOKENS, WIDTH, HIDDEN = 4, 32, 128, 512


def build_block(rng: np.random.Generator) -> tuple[ir.Graph, dict[str, np.ndarray]]:
    """x -> layer_norm -> linear -> gelu -> linear -> + x -> softmax over the width."""
    weights = {
        "ln_weight": rng.uniform(0.5, 1.5, WIDTH).astype(np.float32),
        "ln_bias": rng.normal(0, 0.1, WIDTH).astype(np.float32),
        "w1": rng.normal(0, WIDTH**-0.5, (HIDDEN, WIDTH)).astype(np.float32),
        "b1": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "w2": rng.normal(0, HIDDEN**-0.5, (WIDTH, HIDDEN)).astype(np.float32),
        "b2": rng.normal(0, 0.1, WIDTH).astype(np.float32),
    }
    b = GraphBuilder("mlp_block")
    x = b.input("x", (BATCH, TOKENS, WIDTH), DType.f32)
    c = {name: b.constant(array, name) for name, array in weights.items()}
    h = b.layer_norm(x, c["ln_weight"], c["ln_bias"], axis=-1, epsilon=1e-5)
    h = b.gemm(h, c["w1"], c["b1"], trans_b=True)  # torch's linear
    h = b.gelu(h, approximate="tanh")
    h = b.gemm(h, c["w2"], c["b2"], trans_b=True)
    y = b.add(h, x)
    return b.build(b.softmax(y, axis=-1)), weights


def torch_block(weights: dict[str, np.ndarray]):
    import torch
    import torch.nn.functional as F

    t = {name: torch.from_numpy(array) for name, array in weights.items()}

    def forward(x):
        h = F.layer_norm(x, (WIDTH,), t["ln_weight"], t["ln_bias"], eps=1e-5)
        h = F.gelu(F.linear(h, t["w1"], t["b1"]), approximate="tanh")
        return torch.softmax(F.linear(h, t["w2"], t["b2"]) + x, dim=-1)

    return forward


def best_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    rng = np.random.default_rng(0)
    graph, weights = build_block(rng)
    ir.verify(graph)
    print(ir.print_graph(graph, max_constant_elements=8))
    print(f"# {summarize(graph)}\n")

    x = rng.normal(size=(BATCH, TOKENS, WIDTH)).astype(np.float32)
    (result,) = ir.run(graph, [x])
    (oracle,) = ir.run(graph, [x], oracle=True)
    print(f"reference interpreter (f32) vs f64 oracle: max abs error {np.abs(result - oracle).max():.2e}")
    interpreter_s = best_time(lambda: ir.run(graph, [x]))

    try:
        import torch
    except ImportError:
        print("torch is not installed: skipping the comparison with PyTorch (pip install -e '.[torch]')")
        return 0
    forward = torch_block(weights)
    with torch.no_grad():
        expected = forward(torch.from_numpy(x)).numpy()
        eager_s = best_time(lambda: forward(torch.from_numpy(x)))
    error = np.abs(result - expected).max()
    matches = np.allclose(result, expected, rtol=1e-4, atol=1e-6)
    print(f"reference interpreter vs PyTorch eager: max abs error {error:.2e} -> {'MATCH' if matches else 'MISMATCH'}")
    print(
        f"time per run: interpreter {interpreter_s * 1e3:.2f} ms, PyTorch eager {eager_s * 1e3:.2f} ms "
        f"(interpreter / eager = {interpreter_s / eager_s:.1f}x; the interpreter is the oracle, not the fast path)"
    )
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
