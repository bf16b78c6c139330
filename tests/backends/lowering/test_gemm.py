"""The GEMM micro-kernel template (`backends.lowering.templates_gemm`): matmul and gemm of many
shapes, edges and dtypes through the kernel interpreter (tiny tiles, so that tiny shapes have
edge tiles) and through the CPU target (the real tiles), against numpy in float64 with a bound
that grows with K; the epilogue stays in the kernel; the assembly holds vector FMAs."""

from __future__ import annotations

import contextlib
import dataclasses
import re

import numpy as np
import pytest

import compiler
import ir
from backends.lowering import templates_gemm
from backends.lowering.templates_gemm import GemmShape, GemmTiles, choose_tiles, override_tiles
from ir import DType, GraphBuilder
from ir.loop import Binary, Call, Cast, For, If, Kernel, Load, LoopKind, Store, run_kernel
from tests.backends.lowering import lowered
from tests.backends.lowering.lowered import lower_graph, run_lowered

_RNG = np.random.default_rng(11)
_EPS = {DType.f32: 2.0**-24, DType.f16: 2.0**-24, DType.bf16: 2.0**-24, DType.f64: 2.0**-53}
"""Unit roundoff of the accumulation (f16/bf16 accumulate in f32)."""
_STORAGE_ULP = {DType.f16: 2.0**-10, DType.bf16: 2.0**-7}


# -- the interpreter has no fma yet: run its kernels with a * b + c (rounded twice) instead ------


def _without_fma(node):
    if isinstance(node, Call) and node.name == "fma":
        a, b, c = (_without_fma(arg) for arg in node.args)
        return Binary("add", Binary("mul", a, b), c)
    if isinstance(node, tuple):
        return tuple(_without_fma(item) for item in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type) and type(node).__eq__ is not object.__eq__:
        changes = {f.name: _without_fma(getattr(node, f.name)) for f in dataclasses.fields(node)}
        return dataclasses.replace(node, **changes)
    if isinstance(node, Kernel):
        return dataclasses.replace(node, body=_without_fma(node.body))
    return node


@pytest.fixture(autouse=True)
def _interpreter_without_fma(monkeypatch):
    """Until `ir.loop.interpreter` evaluates `fma`, the interpreted kernels use mul + add: the
    indexing under test is the same, the rounding within the tolerance."""
    monkeypatch.setattr(lowered, "run_kernel", lambda kernel, arrays: run_kernel(_without_fma(kernel), arrays))


# -- references and tolerances --------------------------------------------------------------------


def _random(shape, dtype: DType) -> np.ndarray:
    if dtype.is_float:
        return _RNG.uniform(-2, 2, shape).astype(dtype.numpy)
    return _RNG.integers(-4, 5, shape).astype(dtype.numpy)


def _assert_product_close(got: np.ndarray, graph: ir.Graph, inputs, depth: int, magnitudes=None) -> None:
    """`got` within the rounding error of a K-term sum of the reference's terms: for floats
    |got - exact| <= 2 K u (|A| |B| + |C| terms: `magnitudes`, by default the graph run on
    |inputs|) + an ulp of the storage type; integers exactly."""
    dtype = graph.outputs[0].type.dtype
    (expected,) = ir.run(graph, inputs, oracle=True)  # every op in float64
    assert got.shape == expected.shape and got.dtype == dtype.numpy
    if not dtype.is_float:
        (exact,) = ir.run(graph, inputs)
        np.testing.assert_array_equal(got, exact)
        return
    if magnitudes is None:
        magnitudes = ir.run(graph, [np.abs(a) for a in inputs], oracle=True)[0]  # abs is exact
    bound = 2 * (depth + 2) * _EPS[dtype] * np.abs(magnitudes) + _STORAGE_ULP.get(dtype, 0) * np.abs(expected)
    error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert (error <= bound + 1e-30).all(), f"at {worst}: {got[worst]} vs {expected[worst]} (bound {bound[worst]:.3g})"


def _matmul_graph(a_shape, b_shape, dtype: DType = DType.f32) -> ir.Graph:
    builder = GraphBuilder("mm")
    a, b = builder.input("a", a_shape, dtype), builder.input("b", b_shape, dtype)
    return builder.build(builder.matmul(a, b))


def _gemm_graph(m, n, k, dtype=DType.f32, *, trans_a=False, trans_b=False, bias=None, alpha=1.0, beta=1.0):
    builder = GraphBuilder("gemm")
    a = builder.input("a", (k, m) if trans_a else (m, k), dtype)
    b = builder.input("b", (n, k) if trans_b else (k, n), dtype)
    extra = [builder.input("c", bias, dtype)] if bias is not None else []
    y = builder.gemm(a, b, *extra, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    return builder.build(y)


def _inputs(graph: ir.Graph) -> list[np.ndarray]:
    return [_random(v.type.shape, v.type.dtype) for v in graph.inputs]


def _depth(graph: ir.Graph) -> int:
    node = next(n for n in graph.nodes if n.op in ("matmul", "gemm"))
    a = node.inputs[0].type.shape
    return a[0] if node.op == "gemm" and node.attrs["trans_a"] else a[-1]


# -- the cost model ------------------------------------------------------------------------------


def test_tiles_fill_the_vector_registers_of_the_host_width():
    big = GemmShape(1, 1024, 1024, 1024, DType.f32)
    assert choose_tiles(big, 512) == GemmTiles(6, 64, block_tiles=16, pack_b=True)  # 6 x 4 zmm accumulators
    assert choose_tiles(big, 256) == GemmTiles(6, 16, block_tiles=16, pack_b=True)  # 6 x 2 ymm
    narrow = choose_tiles(GemmShape(1, 3, 20, 7, DType.f32), 512)
    assert (narrow.mr, narrow.nr, narrow.pack_b) == (3, 20, False)  # one panel of all 20; too few rows to pack for
    with pytest.raises(ValueError):
        GemmTiles(0, 16)


@pytest.mark.parametrize("n, bits, nr", [(1, 512, 1), (8, 512, 8), (16, 512, 16), (24, 512, 24), (64, 512, 64),
                                         (65, 512, 64), (200, 512, 64), (12, 256, 12), (24, 256, 16)])  # fmt: skip
def test_an_output_narrower_than_a_tile_is_one_panel_of_its_own_width(n, bits, nr):
    """MR x N with N lanes when N fits in a tile: every column once, A read once."""
    assert choose_tiles(GemmShape(1, 4096, n, 16, DType.f32), bits).nr == nr


@pytest.mark.parametrize("cols, parts", [
    (64, [(0, 64, "V")]),
    (24, [(0, 16, "V"), (16, 8, "V")]),
    (30, [(0, 16, "V"), (16, 8, "V"), (24, 4, "V"), (28, 2, "S")]),
    (12, [(0, 8, "V"), (8, 4, "V")]),
    (7, [(0, 4, "V"), (4, 3, "S")]),
    (3, [(0, 3, "S")]),
])  # fmt: skip
def test_tile_columns_are_whole_vectors_of_16_8_and_4_lanes_then_a_serial_rest(cols, parts):
    kinds = {LoopKind.VECTORIZED: "V", LoopKind.SERIAL: "S"}
    got = [(start, width, kinds[kind]) for start, width, kind in templates_gemm._column_parts(cols)]
    assert got == parts


# -- through the kernel interpreter (tiny tiles: edges in tiny shapes) ------------------------------

TINY = GemmTiles(mr=2, nr=16)
SCHEDULES = {
    "tile": TINY,
    "registers": dataclasses.replace(TINY, accumulators="registers"),
    "packed": dataclasses.replace(TINY, pack_b=True, block_tiles=2),  # 3 row tiles: a short last block
    "packed_registers": GemmTiles(mr=2, nr=16, block_tiles=3, pack_b=True, accumulators="registers"),
}

MATMULS = [
    ((1, 1), (1, 1)),
    ((3, 2), (2, 17)),  # an edge row, a vector part of 16 and a serial column
    ((5, 3), (3, 33)),  # primes: edges both ways, two full panels
    ((2, 1, 3, 2), (3, 2, 16)),  # batch broadcast
    ((3,), (3, 18)),  # a vector times a matrix
    ((2, 4, 3), (3,)),  # a batch of matrices times a vector
]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("a_shape, b_shape", MATMULS)
def test_matmul_in_the_interpreter(a_shape, b_shape, schedule):
    graph = _matmul_graph(a_shape, b_shape)
    inputs = _inputs(graph)
    with override_tiles(lambda shape: SCHEDULES[schedule]):
        (got,) = run_lowered(graph, inputs)
    _assert_product_close(got, graph, inputs, _depth(graph))


@pytest.mark.parametrize("schedule", ["tile", "packed"])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_flags_scales_and_bias_in_the_interpreter(trans_a, trans_b, schedule):
    graph = _gemm_graph(5, 17, 2, trans_a=trans_a, trans_b=trans_b, bias=(17,), alpha=0.5, beta=2.0)
    inputs = _inputs(graph)
    with override_tiles(lambda shape: SCHEDULES[schedule]):
        (got,) = run_lowered(graph, inputs)
    _assert_product_close(got, graph, inputs, 2)


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16, DType.i32])
def test_low_precision_and_integers_in_the_interpreter(dtype):
    graph = _gemm_graph(3, 17, 3, dtype, bias=(3, 1))
    inputs = _inputs(graph)
    with override_tiles(lambda shape: TINY):
        (got,) = run_lowered(graph, inputs)
    _assert_product_close(got, graph, inputs, 3)


@pytest.mark.parametrize("schedule", ["tile", "registers"])
@pytest.mark.parametrize("n", [13, 30])
def test_narrow_panels_of_8_and_4_lanes_in_the_interpreter(n, schedule):
    """The real cost model's one-panel tiles (13 = 8 + 4 + 1 serial, 30 = 16 + 8 + 4 + 2), with
    an edge row tile, every load and store bounds-checked."""
    graph = _gemm_graph(7, n, 5, bias=(n,))
    inputs = _inputs(graph)
    tiles = dataclasses.replace(choose_tiles(GemmShape(1, 7, n, 5, DType.f32), 512), mr=3)
    tiles = dataclasses.replace(tiles, accumulators=schedule)
    with override_tiles(lambda shape: tiles):
        (got,) = run_lowered(graph, inputs)
    _assert_product_close(got, graph, inputs, 5)


def test_contraction_is_the_public_definition_of_matmul_and_gemm():
    """`contraction(lowering, node)` gives what the CPU loops and the GPU templates schedule."""
    from backends.lowering.group import GroupLowering

    cases = [(_matmul_graph((2, 1, 3, 4), (3, 4, 5)), GemmShape(6, 3, 5, 4, DType.f32), (2, 3)),
             (_gemm_graph(7, 9, 5, trans_a=True, bias=(9,)), GemmShape(1, 7, 9, 5, DType.f32), ())]  # fmt: skip
    for graph, shape, batch in cases:
        fused, _ = lower_graph(graph)
        (group,) = [n for n in fused.nodes if n.op == "fused"]
        lowering = GroupLowering(group.attrs["body"], "k")
        (node,) = [n for n in lowering.body.nodes if n.op in ("matmul", "gemm")]
        problem = templates_gemm.contraction(lowering, node)
        assert (problem.shape, problem.batch_shape) == (shape, batch)
    with pytest.raises(ValueError, match="not a contraction"):
        templates_gemm.contraction(lowering, group)


def test_the_top_level_is_one_loop_over_tiles_with_vector_column_loops():
    graph = _matmul_graph((5, 3), (3, 33))
    with override_tiles(lambda shape: TINY):
        _, (kernel,) = lower_graph(graph)
    (loop,) = kernel.body
    assert isinstance(loop, For) and loop.kind is LoopKind.PARALLEL and loop.extent == 3 * 3  # row tiles x panels
    with override_tiles(lambda shape: SCHEDULES["packed"]):
        _, (kernel,) = lower_graph(graph)
    assert kernel.body[0].extent == 2 * 3  # blocks of two row tiles x panels
    text = ir.loop.print_kernel(kernel)
    assert "vectorized for" in text and "fma<f32>" in text


# -- through the CPU target (the host's tiles) -----------------------------------------------------

CPU_MATMULS = [
    ((1, 1), (1, 1)),
    ((7, 13), (13, 5)),
    ((6, 64), (64, 64)),  # exactly one tile
    ((13, 67), (67, 130)),  # edges: 1 row, 2 columns (and a 16-wide vector part)
    ((65, 31), (31, 129)),  # B packed per block of row tiles
    ((200, 20), (20, 70)),  # three blocks of 16 row tiles, the last one short
    ((2, 1, 7, 9), (3, 9, 70)),  # batch broadcast
    ((9,), (9, 40)),
    ((3, 5, 9), (9,)),
    ((50, 8), (8, 8)),  # skinny: one panel of 8 lanes
    ((61, 16), (16, 4)),
    ((37, 24), (24, 24)),  # 16 + 8 lanes
    ((29, 20), (20, 33)),  # 16 + 8 + 4 lanes and a serial column
]


@pytest.mark.parametrize("a_shape, b_shape", CPU_MATMULS)
def test_matmul_on_the_cpu(a_shape, b_shape):
    graph = _matmul_graph(a_shape, b_shape)
    inputs = _inputs(graph)
    got = compiler.compile(graph, target="cpu")(*inputs)  # one output: the array itself
    _assert_product_close(got, graph, inputs, _depth(graph))


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16, DType.f16, DType.i32])
def test_gemm_on_the_cpu(trans_a, trans_b, dtype):
    graph = _gemm_graph(19, 70, 33, dtype, trans_a=trans_a, trans_b=trans_b, bias=(70,), alpha=0.5, beta=2.0)
    inputs = _inputs(graph)
    got = compiler.compile(graph, target="cpu")(*inputs)  # one output: the array itself
    _assert_product_close(got, graph, inputs, 33)


def test_a_linear_with_a_constant_weight_is_relaid_and_matches():
    builder = GraphBuilder("linear")
    x = builder.input("x", (37, 200), DType.f32)
    w = _random((96, 200), DType.f32)
    graph = builder.build(builder.gemm(x, builder.constant(w, "w"), trans_b=True))
    compiled = compiler.compile(graph, target="cpu")
    assert "w_kn_panels" in compiled.graph.constants  # the layout pass stored it [K, N], in panels of 64
    inputs = _inputs(graph)
    magnitudes = np.abs(inputs[0]).astype(np.float64) @ np.abs(w).astype(np.float64).T
    _assert_product_close(compiled(*inputs), graph, inputs, 200, magnitudes)


def test_gemm_bias_gelu_residual_is_one_kernel_on_the_cpu():
    builder = GraphBuilder("linear_gelu_residual")
    x, residual = builder.input("x", (21, 48)), builder.input("residual", (21, 80))
    weight = builder.constant(_random((80, 48), DType.f32), "weight")
    bias = builder.constant(_random((80,), DType.f32), "bias")
    y = builder.add(builder.gelu(builder.add(builder.gemm(x, weight, trans_b=True), bias)), residual)
    graph = builder.build(y)
    compiled = compiler.compile(graph, target="cpu")
    assert [n.op for n in compiled.graph.nodes if n.op != "const"] == ["fused"]
    inputs = _inputs(graph)
    (expected,) = ir.run(graph, inputs, oracle=True)
    np.testing.assert_allclose(compiled(*inputs), expected, rtol=1e-5, atol=48 * 8 * 2.0**-24 * 4)


@pytest.mark.skipif(templates_gemm.host_vector_bits() < 512, reason="the host has no AVX-512 (no zmm registers)")
def test_the_gemm_kernel_uses_vector_fmas_on_zmm_registers():
    from backends.llvm import compile_module, emit_module

    graph = _matmul_graph((64, 64), (64, 128))
    _, kernels = lower_graph(graph)
    assembly = compile_module(emit_module(kernels, "gemm")).assembly
    fmas = re.findall(r"vfmadd\d+ps\s+[^\n]*%zmm", assembly)
    assert len(fmas) >= 24, f"{len(fmas)} zmm FMAs in:\n{assembly[:3000]}"


@pytest.mark.skipif(templates_gemm.host_vector_bits() < 256, reason="the host has no AVX (no ymm registers)")
def test_a_gemm_eight_columns_wide_uses_ymm_fmas():
    """N = 8 is one ymm per row of the tile, not eight serial columns."""
    from backends.llvm import compile_module, emit_module

    _, kernels = lower_graph(_matmul_graph((96, 8), (8, 8)))
    assembly = compile_module(emit_module(kernels, "gemm")).assembly
    fmas = re.findall(r"vfmadd\d+ps\s+[^\n]*%ymm", assembly)
    assert len(fmas) >= 6, f"{len(fmas)} ymm FMAs in:\n{assembly[:3000]}"


# -- B stored in panels at compile time (`passes.layout`, `packed_columns`) ------------------------


def _panel_graph(a_shape, depth: int, columns: int, width: int, *, op: str = "matmul", low: bool = False):
    """a @ W with W [depth, columns] stored as panels of `width` (maybe read through a bf16 cast);
    gemm adds a bias and scales. Returns the graph and W itself."""
    from ir.ops.contraction import pack_panels

    builder = GraphBuilder("panels")
    a = builder.input("a", a_shape, DType.f32)
    weight = _random((depth, columns), DType.f32)
    b = builder.constant(pack_panels(weight, width), "w_panels")
    if low:
        a, b = builder.cast(a, dtype=DType.bf16), builder.cast(b, dtype=DType.bf16)
    if op == "gemm":
        bias = builder.cast(builder.constant(_random((columns,), DType.f32), "bias"), dtype=a.type.dtype)
        y = builder.gemm(a, b, bias, alpha=0.5, beta=2.0, packed_columns=columns)
    else:
        y = builder.matmul(a, b, packed_columns=columns)
    return builder.build(builder.cast(y, dtype=DType.f32) if low else y), weight


PANEL_CASES = [  # a, K, N, stored width: tiles of 16 (TINY)
    ((5, 3), 3, 37, 16, "matmul"),  # tile = panel; a last panel 5 wide (zero-padded to 16)
    ((7, 4), 4, 45, 32, "matmul"),  # two tiles per stored panel: the second at an offset
    ((3, 5), 5, 50, 24, "gemm"),  # 24 is no multiple of 16: the tiles take the panel's width
    ((2, 3, 4), 4, 10, 16, "matmul"),  # a batch of A; N narrower than the one panel
    ((4, 6), 6, 33, 16, "gemm"),
]


@pytest.mark.parametrize("schedule", ["tile", "packed", "registers"])
@pytest.mark.parametrize("a_shape, depth, columns, width, op", PANEL_CASES)
def test_panels_read_in_place_in_the_interpreter(a_shape, depth, columns, width, op, schedule):
    graph, weight = _panel_graph(a_shape, depth, columns, width, op=op)
    inputs = _inputs(graph)
    with override_tiles(lambda shape: SCHEDULES[schedule]):
        (got,) = run_lowered(graph, inputs)
        _, kernels = lower_graph(graph)
    magnitudes = np.abs(inputs[0]).astype(np.float64) @ np.abs(weight).astype(np.float64)
    if op == "gemm":
        bias = graph.constants["bias"].astype(np.float64)
        magnitudes = 0.5 * magnitudes + 2.0 * np.abs(bias)
    _assert_product_close(got, graph, inputs, depth, magnitudes)
    if op == "matmul":  # the reference unpacks W: the plain product
        (plain,) = ir.run(graph, inputs, oracle=True)
        np.testing.assert_allclose(plain, inputs[0].astype(np.float64) @ weight.astype(np.float64), rtol=1e-12)
    # no panel of B copied at run time, even when the tiles ask for it ("packed")
    assert not [store for kernel in kernels for store in _copies(kernel)]


def test_a_panel_copy_is_seen_where_b_is_not_stored_in_panels():
    """`_copies` finds the run-time copy that `test_panels_read_in_place_in_the_interpreter` rules out."""
    graph = _matmul_graph((7, 4), (4, 45))
    with override_tiles(lambda shape: SCHEDULES["packed"]):
        _, kernels = lower_graph(graph)
    assert [store for kernel in kernels for store in _copies(kernel)]


def _copies(kernel: Kernel) -> list[Store]:
    """Stores into a local buffer of an element loaded from a parameter (maybe cast): a panel copy."""
    params, found = set(kernel.params), []

    def visit(node) -> None:
        if isinstance(node, Store) and node.buffer not in params:
            value = node.value.x if isinstance(node.value, Cast) else node.value
            if isinstance(value, Load) and value.buffer in params:
                found.append(node)
        if isinstance(node, tuple):
            for item in node:
                visit(item)
        elif isinstance(node, (For, If)):
            visit(node.body if isinstance(node, For) else node.then + node.otherwise)

    visit(kernel.body)
    return found


def test_panels_through_a_bf16_cast_in_the_interpreter():
    graph, _ = _panel_graph((5, 7), 7, 40, 16, op="gemm", low=True)
    inputs = _inputs(graph)
    with override_tiles(lambda shape: TINY):
        (got,) = run_lowered(graph, inputs)
    (expected,) = ir.run(graph, inputs)
    np.testing.assert_allclose(got, expected, rtol=2**-7, atol=2**-7 * 7 * 4)


def test_the_layout_panel_is_the_widest_tile_of_the_cost_model():
    """passes.layout may not import the backend: its panel width is checked against the tiles here."""
    from passes.layout import FLOAT_PANEL

    assert FLOAT_PANEL == templates_gemm.MAX_VECTOR_LANES
    assert choose_tiles(GemmShape(1, 256, 1000, 768, DType.f32), 512).nr == FLOAT_PANEL
    assert FLOAT_PANEL % choose_tiles(GemmShape(1, 256, 1000, 768, DType.f32), 256).nr == 0


@pytest.mark.parametrize("low, isa", [(False, None), (True, None), (False, "avx2")])
def test_a_wide_constant_weight_is_stored_in_panels_and_matches_on_the_cpu(low, isa):
    """On AVX2 the tiles are 16 wide: four of them read one stored panel of 64, at offsets."""
    from runtime.cpu import limit_isa

    builder = GraphBuilder("linear")
    x = builder.input("x", (37, 40), DType.f32)
    w = _random((150, 40), DType.f32)
    weight = builder.constant(w, "w")
    if low:
        x, weight = builder.cast(x, dtype=DType.bf16), builder.cast(weight, dtype=DType.bf16)
    y = builder.gemm(x, weight, trans_b=True)
    graph = builder.build(builder.cast(y, dtype=DType.f32) if low else y)
    with limit_isa(isa) if isa else contextlib.nullcontext():
        compiled = compiler.compile(graph, target="cpu")
    panels = [a for a in compiled.graph.constants.values() if a.ndim == 3]
    assert [p.shape for p in panels] == [(3, 40, 64)]  # two panels of 64 and one of 22, zero-padded
    inputs = _inputs(graph)
    (expected,) = ir.run(graph, inputs, oracle=True)
    magnitudes = np.abs(inputs[0]).astype(np.float64) @ np.abs(w).astype(np.float64).T
    bound = 2 * 42 * 2.0**-24 * magnitudes + (2.0**-7 * (np.abs(expected) + magnitudes) * 2 if low else 0)
    assert (np.abs(compiled(*inputs) - expected) <= bound + 1e-30).all()
