"""The lowering driver (`backends.lowering.group`): epilogues applied at the contraction's store,
one loop nest per kernel where that is possible, constants inside a body, and elementwise
operands that do not follow numpy broadcasting."""

from __future__ import annotations

import numpy as np

import ir
from ir import DType, GraphBuilder
from ir.loop import For, LoopKind, print_kernel
from tests.backends.lowering.lowered import assert_close, lower_graph, run_lowered

_RNG = np.random.default_rng(3)


def _random(*shape: int) -> np.ndarray:
    return _RNG.uniform(-3, 3, shape).astype(np.float32)


def _check(graph: ir.Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    actual = run_lowered(graph, inputs)
    for value, a, e in zip(graph.outputs, actual, ir.run(graph, inputs)):
        assert_close(a, e, value.type.dtype, ir.print_graph(graph))
    return actual


def test_gemm_bias_gelu_residual_is_one_loop_nest():
    builder = GraphBuilder("linear_gelu_residual")
    x, residual = builder.input("x", (4, 8)), builder.input("residual", (4, 6))
    weight = builder.constant(_random(6, 8), "weight")
    bias = builder.constant(_random(6), "bias")
    y = builder.gemm(x, weight, trans_b=True)
    y = builder.add(builder.gelu(builder.add(y, bias)), residual)
    graph = builder.build(y)

    _, kernels = lower_graph(graph)
    assert len(kernels) == 1
    (kernel,) = kernels
    text = print_kernel(kernel)
    assert len(kernel.body) == 1 and isinstance(kernel.body[0], For)
    assert kernel.body[0].kind is LoopKind.PARALLEL
    assert text.count("parallel for") == 1 and "erf(" in text
    # The gemm's result never reaches memory: no local holds it (the micro-kernel's own tiles may).
    assert all(local.shape != (4, 6) for local in kernel.locals)
    _check(graph, [_random(4, 8), _random(4, 6)])


def test_an_epilogue_through_a_reshape_is_still_one_loop_nest():
    # torch.export's linear on [B, T, C] is reshape -> gemm -> reshape; the residual add after the
    # reshape back must still be applied at the gemm's store, in one parallel loop nest.
    builder = GraphBuilder("linear_reshape_residual")
    x, residual = builder.input("x", (6, 8)), builder.input("residual", (2, 3, 5))
    weight = builder.constant(_random(5, 8), "weight")
    y = builder.reshape(builder.gemm(x, weight, trans_b=True), shape=(2, 3, 5))
    graph = builder.build(builder.add(residual, builder.relu(y)))

    _, kernels = lower_graph(graph)
    (kernel,) = kernels
    assert len(kernel.body) == 1 and kernel.body[0].kind is LoopKind.PARALLEL
    assert all(local.shape not in ((6, 5), (2, 3, 5)) for local in kernel.locals)
    _check(graph, [_random(6, 8), _random(2, 3, 5)])


def test_a_transpose_after_a_gemm_is_not_an_epilogue():
    # reading the gemm at another position than the one being stored: it needs the whole result first
    builder = GraphBuilder("linear_transpose")
    x = builder.input("x", (4, 8))
    weight = builder.constant(_random(6, 8), "weight")
    graph = builder.build(builder.relu(builder.transpose(builder.gemm(x, weight, trans_b=True), perm=(1, 0))))

    _, kernels = lower_graph(graph)
    (kernel,) = kernels
    # The gemm's result is materialized, then read transposed.
    assert [local.shape for local in kernel.locals].count((4, 6)) == 1
    _check(graph, [_random(4, 8)])


def test_a_shared_elementwise_value_is_computed_once():
    builder = GraphBuilder("shared")
    x = builder.input("x", (3, 5))
    e = builder.exp(x)
    graph = builder.build(builder.softmax(builder.add(e, e), axis=1), builder.sum(e, axes=(1,)))
    _, kernels = lower_graph(graph)
    pointwise = print_kernel(kernels[0])  # exp and add: exp is stored once and read twice
    assert pointwise.count("exp(") == 1 and pointwise.count("out00[") == 3
    _check(graph, [_random(3, 5)])


def test_causal_attention_lowers_its_mask_to_an_index_comparison():
    builder = GraphBuilder("attention")
    q, k, v = (builder.input(name, (2, 4, 3)) for name in "qkv")
    graph = builder.build(builder.scaled_dot_product_attention(q, k, v, causal=True))
    _, kernels = lower_graph(graph)
    assert "causal" not in " ".join(b.name for kernel in kernels for b in kernel.params)
    _check(graph, [_random(2, 4, 3), _random(2, 4, 3), _random(2, 4, 3)])


def test_batch_norm_parameters_follow_the_channel_axis():
    builder = GraphBuilder("bn")
    x = builder.input("x", (2, 3, 2, 1))
    params = [builder.input(name, (3,)) for name in ("scale", "bias", "mean", "var")]
    graph = builder.build(builder.batch_norm(x, *params, epsilon=1e-3))
    variance = np.abs(_random(3)) + 0.1
    _check(graph, [_random(2, 3, 2, 1), _random(3), _random(3), _random(3), variance])


def test_maximum_and_relu_pick_numpys_zero_on_a_tie():
    builder = GraphBuilder("zeros")
    a, b = builder.input("a", (4,)), builder.input("b", (4,))
    # 1 / x tells -0.0 from 0.0: numpy's maximum(a, b) returns b on a tie, the kernel IR's max a
    outputs = [builder.reciprocal(builder.op(op, a, b)) for op in ("maximum", "minimum")]
    graph = builder.build(*outputs, builder.reciprocal(builder.relu(a)))
    a_values = np.array([-0.0, 0.0, -0.0, np.nan], np.float32)
    b_values = np.array([0.0, -0.0, np.nan, 1.0], np.float32)
    maximum, minimum, relu = _check(graph, [a_values, b_values])
    np.testing.assert_array_equal(maximum, [np.inf, -np.inf, np.nan, np.nan])
    np.testing.assert_array_equal(minimum, [np.inf, -np.inf, np.nan, np.nan])
    np.testing.assert_array_equal(relu, [np.inf, np.inf, np.inf, np.nan])


def test_low_precision_values_round_at_each_op():
    builder = GraphBuilder("bf16")
    x = builder.input("x", (3, 4), DType.bf16)
    y = builder.mul(builder.add(x, x), builder.exp(x))
    graph = builder.build(builder.mean(y, axes=(1,)), builder.cumsum(y, axis=0))
    _check(graph, [_random(3, 4).astype(DType.bf16.numpy)])


def test_an_epilogue_on_a_scalar_reduction_reads_offset_zero():
    # Found by hypothesis: a 0-d max read through a 0-d tile. The row template stores the scalar
    # at its row variable's offset, the tile reads offset 0: both are the one element.
    builder = GraphBuilder("scalar_epilogue")
    x = builder.input("x", ())
    graph = builder.build(builder.tile(builder.max(x, axes=(), keepdims=False), repeats=()))
    _check(graph, [np.array(-3.5, np.float32)])


def test_a_cast_into_bf16_or_f16_rounds_once_not_through_f32():
    # Just above a tie of bf16 (and of f16) in f64: a nearest f32 lands on the tie itself.
    values = np.array([1 + 2.0**-8 + 2.0**-40, -(1 + 2.0**-8 + 2.0**-40), 1 + 2.0**-11 + 2.0**-40, 0.1])
    for target in (DType.bf16, DType.f16):
        builder = GraphBuilder(f"to_{target}")
        graph = builder.build(builder.cast(builder.input("x", (4,), DType.f64), dtype=target))
        (got,) = run_lowered(graph, [values])
        wanted = values.astype(target.numpy)
        assert np.asarray(got).view(np.uint16).tolist() == wanted.view(np.uint16).tolist(), target
