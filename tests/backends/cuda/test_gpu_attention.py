"""The fused attention GPU template (`backends.cuda.templates_gpu_attention`, through
`schedule_group`) runs in the lockstep interpreter (a block's threads together: shared tiles,
shuffles, barriers; races checked where it is cheap enough) and matches the graph interpreter,
which expands attention into its decomposition; its kernels compile with NVRTC for sm_80 and
sm_90 with a clean ptxas report; the model tests' attention groups take it.

Tolerance (`assert_close` of the lowering tests): f32 within 1e-5 relative plus 1e-5 of the
output's largest magnitude; f16/bf16 within two units in the last place. The kernel sums the dot
products and the softmax in another order (per key tile, rescaled as the running max grows) than
the interpreter (BLAS, then a row softmax), so results differ by rounding; rows that may attend
nothing are nan in both."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ir
from backends.cuda import GpuKernel, compile_cuda, emit_kernel, schedule_group
from backends.cuda.templates_gpu_attention import SHARED_LIMIT, TEMPLATE, plan_attention
from ir import DType, Graph, GraphBuilder
from ir.loop import Barrier, For, If, RaceError, run_lockstep
from passes import make_pass
from tests.backends.attention_cases import BATCH, HEADS, SDPA
from tests.backends.attention_cases import attention_graph as _attention
from tests.backends.attention_cases import attention_inputs as _inputs
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK
from tests.backends.lowering.lowered import assert_close

SCHEDULED: dict[str, GpuKernel] = {}
"""Every attention kernel the tests ran, by name: the NVRTC test compiles them."""


def _check(graph: Graph, node=None, check_races: bool = False, **options) -> GpuKernel:
    """Schedule the graph's one `fused` node, run it in lockstep and compare every output with
    the graph interpreter."""
    if node is None:
        (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    name = f"attention_{len(SCHEDULED)}"
    scheduled = schedule_group(node, name, **options)
    assert scheduled.template == TEMPLATE, ir.print_graph(node.attrs["body"])
    inputs = _inputs(graph)
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(scheduled.kernel, [*inputs, *outputs], check_races=check_races)
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs)):
        assert_close(actual, expected, value.type.dtype, f"{name} {options}")
    SCHEDULED[name] = scheduled
    return scheduled


# (L, S, E, dtype, causal, mask, threads per row); races are checked on the small ones.
CASES = [
    (1, 1, 8, DType.f32, False, None, None),
    (7, 7, 8, DType.f32, True, None, None),
    (33, 33, 16, DType.f32, True, None, None),  # two key tiles, the second partly past S and skipped by some blocks
    (33, 33, 16, DType.f32, False, "bool", None),
    (7, 33, 16, DType.f32, False, "float", 32),
    (33, 7, 8, DType.f32, True, None, 4),  # more queries than keys: the last ones attend every key
    (7, 7, 16, DType.f16, True, "bool", None),
    (33, 33, 8, DType.bf16, False, "float", 16),
    (7, 7, 64, DType.f32, False, None, 32),
    (1, 33, 64, DType.f16, False, None, 32),
    (33, 33, 64, DType.bf16, True, None, 32),
]


IDS = [f"L{c[0]}-S{c[1]}-E{c[2]}-{c[3]}-{'causal' if c[4] else 'full'}-{c[5]}" for c in CASES]


@pytest.mark.parametrize(("length", "source", "features", "dtype", "causal", "mask", "width"), CASES, ids=IDS)
def test_attention_matches_the_graph_interpreter(length, source, features, dtype, causal, mask, width):
    graph = _attention(length, source, features, dtype, causal, mask)
    scheduled = _check(graph, check_races=features <= 16 and length * source <= 7 * 33, threads_per_row=width)
    plan = plan_attention(BATCH * HEADS, length, source, features, features, width)
    assert scheduled.grid == (BATCH * HEADS * plan.query_tiles, 1, 1) and scheduled.block == (plan.threads, 1, 1)
    assert scheduled.block[0] % 32 == 0 and scheduled.shared_bytes == plan.shared_bytes <= SHARED_LIMIT


def test_an_explicit_scale_and_different_value_width():
    builder = GraphBuilder("attention")
    q, k = (builder.input(n, (BATCH, HEADS, 5, 8), DType.f32) for n in "qk")
    v = builder.input("v", (BATCH, HEADS, 5, 12), DType.f32)  # Ev = 12: the last column group is partial
    graph = builder.build(builder.op(SDPA, q, k, v, causal=False, scale=0.7))
    _check(graph, check_races=True)


def test_a_prologue_and_an_epilogue_are_computed_in_the_kernel():
    """A hand-made group: q read through a transpose and a cast, k through a transpose, v through
    tanh; the result goes through gelu and a residual add before it is stored."""
    body = GraphBuilder("attention_group")
    xq = body.input("xq", (BATCH, 7, HEADS, 16), DType.f32)  # [batch, seq, heads, dim]
    kt = body.input("kt", (BATCH, HEADS, 16, 9), DType.bf16)  # k stored transposed
    xv = body.input("xv", (BATCH, HEADS, 9, 16), DType.bf16)
    residual = body.input("residual", (BATCH, HEADS, 7, 16), DType.bf16)
    q = body.cast(body.transpose(xq, perm=(0, 2, 1, 3)), dtype=DType.bf16)
    k = body.transpose(kt, perm=(0, 1, 3, 2))
    y = body.op(SDPA, q, k, body.tanh(xv), causal=True)
    inner = body.build(body.add(body.gelu(y, approximate="tanh"), residual))
    outer = GraphBuilder("attention_outer")
    inputs = [outer.input(v.name, v.type.shape, v.type.dtype) for v in inner.inputs]
    graph = outer.build(outer.op("fused", *inputs, body=inner, kind="attention"))
    (node,) = graph.nodes
    _check(graph, node=node, check_races=True)


def test_an_epilogue_that_moves_the_result_writes_each_element_where_it_lands():
    """A transpose after attention (heads back beside the features): each thread writes the
    element it holds at its transposed position (`backends.cuda.epilogue_scatter`)."""
    body = GraphBuilder("attention_group")
    q, k, v = (body.input(n, (BATCH, HEADS, 4, 8), DType.f32) for n in "qkv")
    inner = body.build(body.transpose(body.op(SDPA, q, k, v), perm=(0, 2, 1, 3)))
    outer = GraphBuilder("outer")
    inputs = [outer.input(v.name, v.type.shape, v.type.dtype) for v in inner.inputs]
    graph = outer.build(outer.op("fused", *inputs, body=inner, kind="attention"))
    (node,) = graph.nodes
    _check(graph, node=node, check_races=True)


def test_f64_attention_is_left_to_the_generic_schedule():
    (node,) = [n for n in make_pass("fuse").run(_attention(4, 4, 8, DType.f64, False, None)).nodes if n.op == "fused"]
    assert schedule_group(node, "f64").template != TEMPLATE


@pytest.mark.parametrize("features", [64, 128, 256, 512])
def test_the_tiles_fit_in_shared_memory(features):
    plan = plan_attention(16, 2048, 2048, features, features)
    assert plan is not None and plan.shared_bytes <= SHARED_LIMIT and plan.threads % 32 == 0
    assert plan.keys % plan.width == 0 and plan.rows * plan.width <= 1024
    assert plan_attention(1, 8, 8, 8192, 8192) is None  # even one warp of rows with 8-key tiles is too large
    with pytest.raises(ValueError, match="power of two"):
        plan_attention(1, 8, 8, 8, 8, width=6)


@pytest.mark.parametrize("barrier", [0, 1, 2])
def test_removing_any_barrier_is_a_race(barrier):
    """Loaded tiles are read by other threads (0), the probabilities are read by the row's other
    lanes (1), and the next tile overwrites what this one still reads (2)."""
    graph = _attention(7, 40, 8, DType.f32, False, None)
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    kernel = schedule_group(node, "race").kernel
    broken = dataclasses.replace(kernel, body=_without_barrier(kernel.body, barrier))
    outputs = [np.zeros(v.type.shape, np.float32) for v in graph.outputs]
    with pytest.raises(RaceError, match=r"data race on (q|k|v|p)_tile\d*\[\d+\] \(shared\)"):
        run_lockstep(broken, [*_inputs(graph), *outputs])


def _without_barrier(body, which: int):
    seen = []

    def strip(statements):
        kept = []
        for stmt in statements:
            if isinstance(stmt, Barrier):
                seen.append(stmt)
                if len(seen) - 1 == which:
                    continue
            if isinstance(stmt, For):
                stmt = dataclasses.replace(stmt, body=strip(stmt.body))
            elif isinstance(stmt, If):
                stmt = dataclasses.replace(stmt, then=strip(stmt.then), otherwise=strip(stmt.otherwise))
            kept.append(stmt)
        return tuple(kept)

    stripped = strip(body)
    assert len(seen) > which, "the kernel has fewer barriers"
    return stripped


# -- the model tests' groups ---------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["transformer_encoder_layer", "gpt_decoder_block", "gpt_decoder_block_masked"])
def test_the_models_attention_takes_the_template_and_only_gemms_stay_on_one_thread(name, precision):
    """(The templated groups' lockstep runs against their CPU lowering are test_gpu_templates'.)"""
    from tests.backends.cuda.test_gpu_templates import model_groups

    attention = 0
    for i, node in enumerate(model_groups(name, precision)):
        ops = {n.op for n in node.attrs["body"].nodes}
        scheduled = schedule_group(node, f"{name}_{precision}_{i}")
        if SDPA in ops:
            attention += 1
            assert scheduled.template == TEMPLATE
            SCHEDULED[scheduled.kernel.name] = scheduled
        elif scheduled.template == "single-thread":
            assert ops & {"gemm", "matmul"}, ir.print_graph(node.attrs["body"])
    assert attention == 1  # the masked block's explicit softmax(q k^T) v is recognised as attention too


# -- NVRTC ---------------------------------------------------------------------------------------

LARGE = [(512, 512, 64, DType.f16, True, None), (128, 1024, 128, DType.bf16, False, "bool"),
         (64, 64, 256, DType.f32, True, "float")]  # fmt: skip


@requires_nvrtc
def test_every_attention_kernel_compiles_for_ampere_and_hopper_without_spills():
    """The kernels the tests above ran (file order), and realistic sizes scheduled only."""
    kernels = dict(SCHEDULED)
    for i, case in enumerate(LARGE):
        (node,) = [n for n in make_pass("fuse").run(_attention(*case)).nodes if n.op == "fused"]
        kernels[f"attention_large_{i}"] = schedule_group(node, f"attention_large_{i}")
    distinct = {}  # one kernel per launch shape, tiles and dtypes: the rest differ in constants only
    for name, s in kernels.items():
        distinct.setdefault((s.block, s.shared_bytes, frozenset(b.dtype for b in s.kernel.params)), name)
    for name in distinct.values():
        scheduled = kernels[name]
        source = emit_kernel(scheduled.kernel)
        threads = scheduled.block[0] * scheduled.block[1] * scheduled.block[2]
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == scheduled.shared_bytes <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where
