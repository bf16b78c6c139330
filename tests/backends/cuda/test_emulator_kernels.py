"""The GPU templates' CUDA C in the emulator (runtime/cuda_emulator.py) at tile-edge shapes, in every
mode, and random drawn graphs compiled for CUDA: both against the graph interpreter.

- The GEMM templates (`gemm.fma` for f32, tensor-core `gemm.mma` for f16 and bf16, with small tiles
  so that 40 x 24 x 20 has partial tiles in M, N and K, and the default tiles at 70 x 65 x 33), the
  fused attention kernel (causal, bool-masked, float-masked; L and S not multiples of the tiles)
  and a warp-per-row reduction run as one program, built once per mode: plain, race
  (ThreadSanitizer: no race between barriers) and bounds (AddressSanitizer: the partial tiles'
  guards keep every global access inside its buffer).
- Random graphs drawn by `ir.testing.graphs` (as tests/backends/lowering/test_random_graphs.py
  draws them), fused, scheduled by `schedule_group` and printed, run in the emulator, plain and
  in bounds mode (the generic schedule's indexing at odd shapes): four derandomized examples of
  six graphs each (some 60 kernels: pointwise, spread, single-thread, row reductions, GEMMs), one
  g++ build per example.

Tolerance: `assert_close` of the lowering tests: f32 within 1e-5 relative plus 1e-5 of the output's
largest magnitude (the kernels sum in another order than numpy; host libm against numpy's), f16
and bf16 within two units in the last place (f32 arithmetic, one rounding at the store).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ir
from ir import DType, Graph, GraphBuilder
from ir.testing import graphs, input_arrays
from passes import make_pass
from runtime.cuda_emulator import emulator_unavailable
from tests.backends.attention_cases import attention_graph
from tests.backends.cuda.emulated import emulation_program, gemm_graph, graph_inputs, run_emulated, small_gemm_tiles
from tests.backends.lowering.lowered import assert_close, conditioning, has_undefined_cast

pytestmark = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")


def row_sum_graph(dtype: DType) -> Graph:
    builder = GraphBuilder(f"row_sum_{dtype}")
    x = builder.input("x", (33, 100), dtype)
    return builder.build(builder.sum(builder.exp(x), axes=(1,)))


# (graph, the template its kernel must take); every size is off the tiles somewhere.
CASES = [
    (gemm_graph(40, 24, 20, DType.f32), "gemm.fma"),
    (gemm_graph(40, 24, 20, DType.f16), "gemm.mma"),
    (gemm_graph(40, 24, 20, DType.bf16), "gemm.mma"),
    (gemm_graph(5, 3, 7, DType.f16), "gemm.mma"),
    (gemm_graph(40, 24, 20, DType.bf16, epilogue=True), "gemm.mma"),
    (gemm_graph(40, 24, 20, DType.f32, epilogue=True), "gemm.fma"),
    (attention_graph(33, 33, 16, DType.f16, True, None), "attention.fma"),
    (attention_graph(33, 33, 16, DType.bf16, True, None), "attention.fma"),
    (attention_graph(33, 20, 16, DType.f16, False, "bool"), "attention.fma"),
    (attention_graph(7, 33, 8, DType.bf16, False, "float"), "attention.fma"),
    (row_sum_graph(DType.bf16), "rows.sum"),
]


@pytest.fixture(scope="module")
def templated():
    """One program of every case (small GEMM tiles), the fused graphs and their inputs."""
    fused = [make_pass("fuse").run(graph) for graph, _ in CASES]
    program = emulation_program(fused, small_gemm_tiles, "templates")
    for j, (_, template) in enumerate(CASES):
        (taken,) = [t for name, t in program.code["templates"].items() if name.startswith(f"g{j}_")]
        assert taken == template, CASES[j][0].name
    return program, fused, [graph_inputs(graph) for graph, _ in CASES]


@pytest.mark.parametrize("mode", ["plain", "race", "bounds"])
def test_gemm_attention_and_reduction_kernels_at_tile_edges_in_every_mode(templated, mode):
    program, fused, inputs = templated
    results = run_emulated(program, fused, inputs, mode)
    for (graph, _), arrays, got in zip(CASES, inputs, results, strict=True):
        for value, actual, expected in zip(graph.outputs, got, ir.run(graph, arrays), strict=True):
            assert_close(actual, expected, value.type.dtype, f"{graph.name} ({mode})")


def test_the_default_tensor_core_tiles_at_an_edge_shape_and_their_launch():
    """schedule_group's own tiles (64 x 64, BK 32) on 70 x 65 x 33: partial tiles everywhere."""
    cases = [gemm_graph(70, 65, 33, DType.f16), gemm_graph(70, 65, 33, DType.bf16, epilogue=True)]
    fused = [make_pass("fuse").run(graph) for graph in cases]
    program = emulation_program(fused, name="default_tiles")
    assert set(program.code["templates"].values()) == {"gemm.mma"}
    assert {launch.grid for launch in program.launches} == {(4, 1, 1)}  # 2 x 2 tiles
    inputs = [graph_inputs(graph) for graph in cases]
    for graph, arrays, got in zip(cases, inputs, run_emulated(program, fused, inputs, "race"), strict=True):
        (expected,) = ir.run(graph, arrays)
        assert_close(got[0], expected, graph.outputs[0].type.dtype, graph.name)


# -- random graphs ---------------------------------------------------------------------------------


@st.composite
def graphs_and_inputs(draw: st.DrawFn) -> tuple[Graph, list[np.ndarray]]:
    graph = draw(graphs(max_nodes=8, max_dim=5), label="graph")
    return graph, draw(input_arrays(graph), label="inputs")


# Every example costs a g++ build (about 2 s): a few derandomized ones, each of six graphs in one
# program. No shrinking: each step would be another build; a failure prints the graph instead.
@settings(max_examples=4, derandomize=True, phases=[Phase.explicit, Phase.generate], deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(drawn=st.lists(graphs_and_inputs(), min_size=6, max_size=6))
@pytest.mark.parametrize("mode", ["plain", "bounds"])
def test_random_graphs_compiled_for_cuda_match_the_interpreter_in_the_emulator(mode, drawn):
    kept = []
    for graph, inputs in drawn:
        try:
            expected = ir.run(graph, inputs)
        except ir.KilnError:  # data the ops reject (a gather index out of range): nothing to compare
            continue
        if not has_undefined_cast(graph, inputs):
            kept.append((graph, inputs, expected))
    fused = [make_pass("fuse").run(graph) for graph, _, _ in kept]
    program = emulation_program(fused, name="drawn")
    results = run_emulated(program, fused, [inputs for _, inputs, _ in kept], mode)
    for (graph, inputs, expected), got in zip(kept, results, strict=True):
        scale = conditioning(graph, inputs)
        for position, (value, a, e) in enumerate(zip(graph.outputs, got, expected, strict=True)):
            assert_close(a, e, value.type.dtype, f"output {position} of\n{ir.print_graph(graph)}", scale=scale)
