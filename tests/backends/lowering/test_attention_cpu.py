"""The CPU attention template (`backends.lowering.templates_attention`): attention groups lower
whole, as one parallel loop over (batch x heads x query blocks) with an online softmax, and match
the graph interpreter (which expands the op into its decomposition) in the kernel interpreter,
with tiny tiles so that every edge (a short last query block, a short last key block, a last
group of accumulators, a column rest) is reached on small shapes, and on the CPU target at the
real tiles.

Tolerance (`assert_close` of the lowering tests): f32 within 1e-5 relative plus 1e-5 of the
output's largest magnitude; bf16 within two units in the last place. The template sums the dot
products and the softmax in key order, rescaled per key block, where the interpreter uses BLAS
and a row softmax, so results differ by rounding; rows that may attend nothing are nan in both."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import ir
from backends.llvm.codegen import emit_module
from backends.lowering import templates_attention
from backends.lowering.templates_attention import AttentionTiles
from ir import DType, Graph, GraphBuilder
from ir.loop import For, LoopKind, Scope
from tests.backends.attention_cases import BATCH, HEADS, SDPA
from tests.backends.attention_cases import attention_graph as _attention
from tests.backends.attention_cases import attention_inputs as _inputs
from tests.backends.lowering.lowered import assert_close, lower_graph, run_lowered

TINY = AttentionTiles(queries=4, keys=5, rows=2, columns=3)


def _check(graph: Graph, actual: list[np.ndarray], inputs: list[np.ndarray], what: str) -> None:
    for value, got, expected in zip(graph.outputs, actual, ir.run(graph, inputs), strict=True):
        assert_close(got, expected, value.type.dtype, what)


@pytest.fixture
def tiny_tiles(monkeypatch):
    monkeypatch.setattr(templates_attention, "tile_chooser", lambda length, source, dtype: TINY)


# (L, S, E, dtype, causal, mask, scale, Ev)
INTERPRETED = [
    (1, 1, 8, DType.f32, False, None, None, None),
    (7, 7, 8, DType.f32, True, None, None, None),  # causal: key blocks above a query block skipped
    (7, 9, 5, DType.f32, False, "bool", None, 7),  # a fully masked row; Ev != E
    (9, 7, 8, DType.f32, True, "float", 0.3, None),  # more queries than keys; an explicit scale
    (7, 7, 8, DType.bf16, True, "bool", None, None),
    (3, 0, 4, DType.f32, False, None, None, None),  # no keys: the decomposition's matmul gives zeros
]


@pytest.mark.parametrize("case", INTERPRETED, ids=lambda c: f"L{c[0]}-S{c[1]}-E{c[2]}-{c[3]}-{c[4]}-{c[5]}")
def test_attention_in_the_kernel_interpreter_with_tiny_tiles(case, tiny_tiles):
    length, source, features, dtype, causal, mask, scale, value_features = case
    graph = _attention(length, source, features, dtype, causal, mask, scale, value_features)
    inputs = _inputs(graph)
    _check(graph, run_lowered(graph, inputs), inputs, str(case))


def test_the_group_is_one_parallel_loop_with_no_scores_matrix():
    graph = _attention(130, 130, 16, DType.f32, True, None)
    _, kernels = lower_graph(graph)
    (kernel,) = kernels
    (loop,) = kernel.body
    assert isinstance(loop, For) and loop.kind is LoopKind.PARALLEL
    tiles = templates_attention.choose_tiles(130, 130, DType.f32)  # 64 queries with AVX-512: 64, 64, 2
    assert loop.extent == BATCH * HEADS * -(-130 // tiles.queries)
    largest = max(b.size for b in kernel.locals)  # the scores of one block of queries, at most
    assert all(b.scope is Scope.LOCAL for b in kernel.locals) and largest <= tiles.queries * tiles.keys < 130 * 130
    ir_text = emit_module(kernels, "attention")
    # Every vectorized loop became vector code (the vectorizer's safety checks passed).
    assert "stays scalar" not in ir_text and ir_text.count("lanes per vector iteration") >= 6


# (L, S, E, dtype, causal, mask, scale); the real tiles (64 queries x 64 keys).
COMPILED = [
    (1, 1, 8, DType.f32, False, None, None),
    (7, 7, 16, DType.f32, True, None, None),
    (33, 33, 64, DType.f32, False, "bool", None),
    (33, 33, 8, DType.f32, True, "float", None),
    (130, 130, 64, DType.f32, True, None, None),  # a last query block and key block of 2
    (130, 130, 16, DType.f32, False, "float", 0.2),
    (1, 130, 64, DType.f32, True, "bool", None),  # one query: causal lets it see key 0 only
    (130, 33, 8, DType.f32, True, None, None),
    (33, 130, 16, DType.bf16, False, "bool", None),
    (130, 130, 64, DType.bf16, True, None, None),
    (7, 33, 64, DType.f64, True, "float", None),
]


@pytest.mark.parametrize("case", COMPILED, ids=lambda c: f"L{c[0]}-S{c[1]}-E{c[2]}-{c[3]}-{c[4]}-{c[5]}")
def test_attention_on_the_cpu(case):
    graph = _attention(*case)
    inputs = _inputs(graph)
    compiled = compiler.compile(graph, target="cpu")
    assert [n.op for n in compiled.graph.nodes] == ["fused"]
    _check(graph, [compiled(*inputs)], inputs, str(case))


def _group(build) -> Graph:
    """A graph of one `fused` node whose body `build(builder)` makes (q, k, v of [2, 2, 8, 16])."""
    body = GraphBuilder("attention_group")
    q, k, v = (body.input(n, (BATCH, HEADS, 8, 16), DType.f32) for n in "qkv")
    residual = body.input("residual", (BATCH, HEADS, 8, 16), DType.f32)
    inner = body.build(*build(body, q, k, v, residual))
    outer = GraphBuilder("outer")
    inputs = [outer.input(v.name, v.type.shape, v.type.dtype) for v in inner.inputs]
    results = outer.op("fused", *inputs, body=inner, kind="attention")
    return outer.build(*(results if isinstance(results, tuple) else (results,)))


@pytest.mark.parametrize("where", ["interpreter", "cpu"])
def test_a_prologue_and_an_epilogue_are_computed_in_the_loop(where, request):
    """q scaled and k negated on the way in, gelu and a residual on the way out: one loop nest."""

    def build(body, q, k, v, residual):
        y = body.op(SDPA, body.mul(q, body.constant(np.array(1.5, np.float32), "c")), body.neg(k), v, causal=True)
        return (body.add(body.gelu(y, approximate="tanh"), residual),)

    graph = _group(build)
    inputs = _inputs(graph)
    if where == "interpreter":
        request.getfixturevalue("tiny_tiles")
        _, (kernel,) = lower_graph(graph, fuse=False)
        assert len(kernel.body) == 1 and kernel.body[0].kind is LoopKind.PARALLEL
        actual = run_lowered(graph, inputs, fuse=False)
    else:
        actual = [compiler.compile(graph, target="cpu")(*inputs)]
    _check(graph, actual, inputs, where)


def test_an_output_that_reads_the_result_elsewhere_is_written_after_the_loop():
    """A transpose after attention reads it at another element: the result goes to a buffer."""

    def build(body, q, k, v, residual):
        y = body.op(SDPA, q, k, v)
        return body.transpose(y, perm=(0, 2, 1, 3)), body.add(y, residual)

    graph = _group(build)
    inputs = _inputs(graph)
    _check(graph, compiler.compile(graph, target="cpu")(*inputs), inputs, "transposed")
