"""The int8 GEMM on tensor cores (`backends.cuda.templates_gpu_quant`) and `dot4_u8s8` as dp4a.

The quantized group (`matmul_integer` and its dequantizing epilogue, dynamic: i8 x i8; static: u8
with a zero point x i8) runs as mma.sync m16n8k32 in the lockstep interpreter (races checked; the
warp's A and B assembled by `ir.loop.lockstep_int8` from the PTX ISA layout) and as printed CUDA C
in the emulator (the prelude's host twin, a second encoding of the layout), bit-exact with the graph
interpreter at tile-edge shapes; the model tests' MLP and encoder compiled with
precision="int8-dynamic" (and the MLP "int8-weight"/"int8-static") match the interpreter in the
emulator; every kernel compiles with NVRTC for sm_80 and sm_90 without spills. Weight-only int8's
GEMM reads the int8 weight and dequantizes it while staging B (lockstep, NVRTC); no group of the
quantized model tests runs on one thread (dynamic int8's row quantization takes the row template).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import ir
from backends.cuda import compile_cuda, emit_kernel, gpu_schedule, schedule_group
from backends.cuda.templates_gpu_mma import MmaTiles
from backends.cuda.templates_gpu_quant import int8_gemm_template
from backends.lowering.group import lower_group
from ir import DType, Graph, GraphBuilder
from ir.loop import Assign, Call, For, RaceError, run_lockstep
from passes import make_pass
from passes.quantize import Quantize
from runtime.cuda_emulator import emulator_unavailable
from tests.backends.cuda.kernels import requires_nvrtc, rewrite_statements, without_first_barrier
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK

SMALL = MmaTiles(32, 16, 32, 2, 2, stages=1)
"""Tiles small enough that 40 x 24 x 70 has edge tiles in M, N and K, and three K steps."""
KERNELS: dict[str, object] = {}
"""Every kernel the lockstep tests ran, by name: the NVRTC test compiles them all."""
requires_emulator = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")


def _quantized(m: int, n: int, k: int, a_dtype: DType, zero_point: str | None, epilogue: bool = True,
               lead: tuple[int, ...] = ()) -> Graph:  # fmt: skip
    """matmul_integer(a, w[, za]) on [*lead, m, k] x [k, n], then (with `epilogue`) the dynamic
    mode's dequantization: f32, times a per-row and a per-column scale, plus a bias, relu.
    `zero_point`: None, "tensor" (a scalar constant) or "row" (an input [*lead, m, 1])."""
    builder = GraphBuilder(f"q{m}x{n}x{k}_{a_dtype}")
    a = builder.input("a", (*lead, m, k), a_dtype)
    w = builder.input("w", (k, n), DType.i8)
    operands = [a, w]
    if zero_point == "tensor":
        operands.append(builder.constant(np.array(9 if a_dtype == DType.u8 else -5, a_dtype.numpy), "za"))
    elif zero_point == "row":
        operands.append(builder.input("za", (*lead, m, 1), a_dtype))
    y = builder.op("matmul_integer", *operands)
    if epilogue:
        row_scale, column_scale = builder.input("sx", (*lead, m, 1), DType.f32), builder.input("sw", (n,), DType.f32)
        bias = builder.input("bias", (n,), DType.f32)
        y = builder.relu(builder.add(builder.mul(builder.mul(builder.cast(y, dtype=DType.f32), row_scale),
                                                 column_scale), bias))  # fmt: skip
    return builder.build(y)


def _inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        dtype = value.type.dtype
        if dtype.is_float:
            arrays.append(rng.uniform(-0.01, 0.01, value.type.shape).astype(np.float32))
        else:
            info = np.iinfo(dtype.numpy)
            arrays.append(rng.integers(info.min, int(info.max) + 1, value.type.shape).astype(dtype.numpy))
    return arrays


def _node(graph: Graph):
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    return node


def _check(graph: Graph, tiles: MmaTiles | None = SMALL):
    """The template's kernel run in lockstep, bit-exact against the graph interpreter."""
    name = f"{graph.name}_{len(KERNELS)}"
    kernel, template = int8_gemm_template(_node(graph), name, tiles=tiles)
    assert template == "gemm.mma_s8"
    inputs = _inputs(graph, len(KERNELS))
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(kernel, [*inputs, *outputs])
    for actual, expected in zip(outputs, ir.run(graph, inputs), strict=True):
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    KERNELS[name] = kernel
    return kernel, inputs, outputs


# -- lockstep: bit-exact at the tile edges ----------------------------------------------------------


@pytest.mark.parametrize(("a_dtype", "zero_point"), [(DType.i8, None), (DType.u8, "tensor"), (DType.i8, "tensor")],
                         ids=["dynamic-s8s8", "static-u8s8", "s8-zero-point"])  # fmt: skip
@pytest.mark.parametrize(("m", "n", "k"), [(40, 24, 70), (32, 16, 64), (5, 3, 7)])
def test_integer_product_is_bit_exact_with_edge_tiles(m, n, k, a_dtype, zero_point):
    """i32 outputs: the sums wrap exactly as the interpreter's (operands over the full byte range)."""
    _check(_quantized(m, n, k, a_dtype, zero_point, epilogue=False))


@pytest.mark.parametrize(("a_dtype", "zero_point"), [(DType.i8, None), (DType.u8, "row")], ids=["dynamic", "per-row"])
def test_dequantizing_epilogue_on_a_batched_activation(a_dtype, zero_point):
    """A [2, 9, 40] (the batch's rows, through the epilogue's per-row scale) and a per-row zero point."""
    _check(_quantized(9, 20, 40, a_dtype, zero_point, lead=(2,)))


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 24), k=st.integers(1, 80), a_dtype=st.sampled_from([DType.i8, DType.u8]),
       zero_point=st.sampled_from([None, "tensor", "row"]), seed=st.integers(0, 2**16))  # fmt: skip
def test_any_shape_and_zero_point_is_bit_exact(m, n, k, a_dtype, zero_point, seed):
    graph = _quantized(m, n, k, a_dtype, zero_point, epilogue=False)
    kernel, _ = int8_gemm_template(_node(graph), "drawn", tiles=SMALL)
    inputs = _inputs(graph, seed)
    out = np.zeros((m, n), np.int32)
    run_lockstep(kernel, [*inputs, out])
    np.testing.assert_array_equal(out, ir.run(graph, inputs)[0])


def test_one_fragment_per_warp_and_the_default_tiles():
    _check(_quantized(16, 8, 32, DType.i8, None, epilogue=False), MmaTiles(16, 8, 32, 1, 1, stages=1))
    scheduled = schedule_group(_node(_quantized(70, 65, 100, DType.u8, "tensor")), "q_default")
    assert (scheduled.template, scheduled.block, scheduled.grid) == ("gemm.mma_s8", (128, 1, 1), (4, 1, 1))
    KERNELS["q_default"] = scheduled.kernel


def test_the_quantize_passs_groups_take_the_int8_template():
    """dynamic (i8 activations) and static (u8 with a zero point) as `passes.quantize` emits them."""
    for mode, calibration in (
        ("dynamic", None),
        ("static", [[np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)]]),
    ):
        builder = GraphBuilder(f"linear_{mode}")
        x = builder.input("x", (4, 16), DType.f32)
        w = builder.constant(np.linspace(-1, 1, 16 * 24, dtype=np.float32).reshape(16, 24), "w")
        graph = builder.build(builder.relu(builder.matmul(x, w)))
        quantize = Quantize(mode=mode, keep_first_last=False, calibration=calibration)
        fused = [n for n in make_pass("fuse").run(quantize.run(graph)).nodes if n.op == "fused"]
        templates = [schedule_group(node, f"{mode}_{i}").template for i, node in enumerate(fused)]
        assert "gemm.mma_s8" in templates, (mode, templates)


# -- lockstep: what the checks catch ----------------------------------------------------------------


def test_a_word_in_the_wrong_register_gives_a_wrong_product():
    """The lockstep MMA places each word by the PTX layout: swapping a lane's a0 and a1 (rows group
    and group + 8) or b0 and b1 (k and k + 16) must change the result."""
    kernel, inputs, outputs = _check(_quantized(32, 16, 64, DType.i8, None, epilogue=False))
    for first, second in ((0, 1), (4, 5)):

        def swap(stmt, first=first, second=second):
            if isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name.startswith("mma_"):
                args = list(stmt.value.args)
                args[first], args[second] = args[second], args[first]
                return dataclasses.replace(stmt, value=dataclasses.replace(stmt.value, args=tuple(args)))
            return stmt

        wrong = [np.zeros_like(o) for o in outputs]
        run_lockstep(dataclasses.replace(kernel, body=rewrite_statements(kernel.body, swap)), [*inputs, *wrong])
        assert not np.array_equal(wrong[0], outputs[0])


def test_removing_the_barrier_after_staging_is_a_race():
    kernel, inputs, outputs = _check(_quantized(40, 24, 70, DType.u8, "tensor", epilogue=False))
    broken = without_first_barrier(kernel)
    with pytest.raises(RaceError, match=r"data race on [ab]_words\d*\[\d+\] \(shared\)"):
        run_lockstep(broken, [*inputs, *outputs])


def test_other_integer_contractions_are_declined():
    """u8 weights (not what the quantizer makes) and a weight zero point keep the other schedules."""
    builder = GraphBuilder("u8_weights")
    a, w = builder.input("a", (8, 32), DType.i8), builder.input("w", (32, 8), DType.u8)
    assert int8_gemm_template(_node(builder.build(builder.op("matmul_integer", a, w))), "u8w") is None
    builder = GraphBuilder("weight_zero_point")
    a, w = builder.input("a", (8, 32), DType.i8), builder.input("w", (32, 8), DType.i8)
    zw = builder.input("zw", (1, 8), DType.i8)
    za = builder.constant(np.array(0, np.int8), "za")
    graph = builder.build(builder.op("matmul_integer", a, w, za, zw))
    assert int8_gemm_template(_node(graph), "zw") is None


# -- the printed CUDA C: the emulator and NVRTC ----------------------------------------------------


def _emulate(model, inputs, mode: str = "plain"):
    from runtime.cuda import CudaExecutor
    from runtime.cuda_emulator import EmulatorDriver

    return CudaExecutor(model.program, driver=EmulatorDriver(model.program, mode=mode)).run(inputs)


@requires_nvrtc
@requires_emulator
@pytest.mark.parametrize(("a_dtype", "zero_point"), [(DType.i8, None), (DType.u8, "tensor")], ids=["s8s8", "u8s8"])
def test_the_printed_kernel_is_bit_exact_in_the_emulator(a_dtype, zero_point):
    """40 x 70 @ 70 x 24 in the default 64 x 64 x 64 tiles: edges in M, N and K (two K steps)."""
    graph = _quantized(40, 24, 70, a_dtype, zero_point, epilogue=False)
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    source = model.program.code["cuda_source"]
    assert list(model.program.code["templates"].values()) == ["gemm.mma_s8"]
    assert f"kiln_mma_s8_{'s8' if a_dtype == DType.i8 else 'u8'}s8_x4(" in source
    inputs = _inputs(graph, 7)
    (got,) = _emulate(model, inputs)
    np.testing.assert_array_equal(got, ir.run(graph, inputs)[0])


@requires_nvrtc
@requires_emulator
def test_the_printed_kernel_is_race_free_under_thread_sanitizer():
    """The host twin's fragment exchange, the shared word tiles and the shared column sums (a
    static zero point) under ThreadSanitizer: no race, and still bit-exact."""
    graph = _quantized(40, 24, 70, DType.u8, "tensor")
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    inputs = _inputs(graph, 11)
    (got,) = _emulate(model, inputs, mode="race")
    np.testing.assert_array_equal(got, ir.run(graph, inputs)[0])


@requires_nvrtc
@requires_emulator
@pytest.mark.parametrize(("name", "precision"), [("mlp", "int8-dynamic"), ("transformer_encoder_layer", "int8-dynamic"),
                                                 ("mlp", "int8-static"), ("mlp", "int8-weight")])  # fmt: skip
def test_quantized_models_match_the_interpreter_in_the_emulator(name, precision):
    from tests.models.models import MODELS

    module, example = MODELS[name]()
    extra = {"calibration": [example]} if precision == "int8-static" else {}
    model = compiler.compile(module, example, target="cuda", precision=precision, arch="sm_80", **extra)
    templates = set(model.program.code["templates"].values())
    assert ("gemm.mma_s8" in templates) == (precision != "int8-weight"), templates
    inputs = [x.numpy() for x in example]
    got = _emulate(model, inputs)
    expected = ir.run(model.graph, inputs)
    for actual, wanted in zip(got, expected, strict=True):  # f32 kernels around the int8 ones: a few ulps
        np.testing.assert_allclose(actual, np.asarray(wanted), rtol=1e-5, atol=1e-5)


@requires_nvrtc
@requires_emulator
def test_dynamic_quantize_linear_is_one_bit_exact_kernel_in_the_emulator():
    """ONNX's DynamicQuantizeLinear (min and max of x, scale, zero point, q) as one printed row
    kernel, per tensor (a block for the whole of x) and per row."""
    from tests.passes.test_fusion_int8 import dynamic_quantize_linear

    for shape, axes in (((3, 40, 50), ()), ((6, 70), (1,))):
        graph = dynamic_quantize_linear(shape, axes)
        model = compiler.compile(graph, target="cuda", arch="sm_80")
        assert list(model.program.code["templates"].values()) == ["rows.min_max"]
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        for got, expected in zip(_emulate(model, [x]), ir.run(graph, [x]), strict=True):
            np.testing.assert_array_equal(got, expected)


@requires_nvrtc
def test_every_int8_kernel_compiles_for_ampere_and_hopper_without_spills():
    """Every kernel above (small and default tiles) and the large default tiles (128 x 64)."""
    for a_dtype, zero_point in ((DType.i8, None), (DType.u8, "tensor")):
        scheduled = schedule_group(_node(_quantized(512, 256, 512, a_dtype, zero_point)), f"q_large_{a_dtype}")
        assert scheduled.block == (128, 1, 1)
        KERNELS[scheduled.kernel.name] = scheduled.kernel
    if len(KERNELS) < 4:  # run alone: make the small-tile kernels first
        test_integer_product_is_bit_exact_with_edge_tiles(40, 24, 70, DType.u8, "tensor")
        test_dequantizing_epilogue_on_a_batched_activation(DType.i8, None)
    for name, kernel in KERNELS.items():
        source = emit_kernel(kernel)
        assert "asm" not in source and "_x4(" in source, "the prelude's MMA, one instruction per product"
        threads = next(s.extent for s in kernel.body[0].body if isinstance(s, For))
        shared = sum(b.size * b.dtype.itemsize for b in kernel.locals if b.scope.value == "shared")
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == shared <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where


# -- weight-only: the f32 GEMM dequantizes B while staging it --------------------------------------


def _weight_only(m: int, k: int, n: int, trans_b: bool) -> Graph:
    """relu(gemm(x, w, bias)) (torch's linear when `trans_b`), quantized weight-only: `w` becomes
    dequantize_linear of int8 constants, which fusion puts into the GEMM's group."""
    rng = np.random.default_rng(m + k + n)
    builder = GraphBuilder(f"weight_only_{m}x{k}x{n}")
    x = builder.input("x", (m, k), DType.f32)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = builder.constant(rng.standard_normal(n).astype(np.float32), "bias")
    graph = builder.build(builder.relu(builder.gemm(x, builder.constant(w, "w"), bias, trans_b=trans_b)))
    return Quantize(mode="weight", keep_first_last=False).run(graph)


@pytest.mark.parametrize(("m", "k", "n", "trans_b"), [(40, 70, 24, True), (4, 64, 64, False), (130, 33, 70, True)])
def test_weight_only_gemm_reads_the_int8_weight_and_dequantizes_it_while_staging(m, k, n, trans_b):
    """One group, one kernel: the GEMM's B parameter is the i8 weight (no f32 weight is written
    or read), dequantized as the block stages it; lockstep (races checked) against the interpreter."""
    graph = _weight_only(m, k, n, trans_b)
    fused = make_pass("fuse").run(graph)
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    assert {"dequantize_linear", "gemm"} <= {n.op for n in node.attrs["body"].nodes}
    scheduled = schedule_group(node, f"w8_{m}x{k}x{n}")
    assert scheduled.template == "gemm.fma"
    params = {b.name: (b.dtype, b.shape) for b in scheduled.kernel.params}
    assert (DType.i8, (k, n)) in params.values(), params  # stored [K, N] by the quantize pass
    assert (DType.f32, (k, n)) not in params.values() and (DType.f32, (n, k)) not in params.values(), params
    x = np.random.default_rng(0).uniform(-1, 1, (m, k)).astype(np.float32)
    values = ir.run_all(fused, [x])  # the kernel's operands: x and the int8 weight, scales, bias
    (out,) = outputs = [np.full((m, n), 123, np.float32)]
    run_lockstep(scheduled.kernel, [*(values[v] for v in node.inputs), *outputs])
    np.testing.assert_allclose(out, ir.run(graph, [x])[0], rtol=1e-5, atol=1e-5)
    WEIGHT_ONLY[scheduled.kernel.name] = scheduled


WEIGHT_ONLY: dict[str, object] = {}
"""The weight-only kernels the lockstep test ran: the NVRTC test compiles them."""


@requires_nvrtc
def test_weight_only_kernels_compile_for_ampere_and_hopper_without_spills():
    if not WEIGHT_ONLY:
        test_weight_only_gemm_reads_the_int8_weight_and_dequantizes_it_while_staging(40, 70, 24, True)
    (node,) = [n for n in make_pass("fuse").run(_weight_only(512, 768, 768, True)).nodes if n.op == "fused"]
    WEIGHT_ONLY["w8_large"] = schedule_group(node, "w8_large")  # the large 128 x 128 FMA tiles
    for name, scheduled in WEIGHT_ONLY.items():
        source = emit_kernel(scheduled.kernel)
        assert "int8_t" in source, "the kernel reads the int8 weight"
        threads = scheduled.block[0] * scheduled.block[1] * scheduled.block[2]
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == scheduled.shared_bytes <= SHARED_BYTES_PER_BLOCK, where


# -- every group of the quantized model tests on a template ----------------------------------------


@pytest.mark.parametrize("precision", ["int8-weight", "int8-dynamic"])
@pytest.mark.parametrize("name", ["mlp", "transformer_encoder_layer", "gpt_decoder_block"])
def test_no_group_of_the_quantized_model_tests_runs_on_one_thread(name, precision):
    """Dynamic int8's per-row quantization (row max, scale, quantize_linear: two outputs) takes the
    row template, bit-exact with its CPU lowering in lockstep; weight-only int8 leaves no kernel
    that only dequantizes a weight (its GEMMs read the int8 weights)."""
    from compiler.frontends import import_model
    from passes import PassManager
    from passes.pipelines import default_pipeline
    from tests.models.models import MODELS

    module, example = MODELS[name]()
    graph = PassManager(default_pipeline("cuda", 2, precision=precision)).run(import_model(module, example).graph)
    rows = 0
    for i, node in enumerate(n for n in graph.nodes if n.op == "fused"):
        body = node.attrs["body"]
        scheduled = schedule_group(node, f"{name}_{i}")
        assert scheduled.template not in ("single-thread", "spread"), ir.print_graph(body)
        ops = {n.op for n in body.nodes if n.op != "const"}
        assert ops != {"dequantize_linear"}, "a kernel that only writes an f32 copy of an int8 weight"
        if "quantize_linear" not in ops:
            continue
        rows += 1
        assert scheduled.template == "rows.max_min"  # max |x| is written max(max(x), -min(x))
        reference = lower_group(node, scheduled.kernel.name)
        rng = np.random.default_rng(i)
        inputs = [rng.standard_normal(v.type.shape).astype(np.float32) for v in node.inputs]
        expected, actual = ([np.zeros(v.type.shape, v.type.dtype.numpy) for v in node.outputs] for _ in "ea")
        ir.loop.run_kernel(reference, [*inputs, *expected])
        run_lockstep(scheduled.kernel, [*inputs, *actual])
        for e, a in zip(expected, actual, strict=True):
            np.testing.assert_array_equal(a, e)
    assert rows == (0 if precision == "int8-weight" else {"mlp": 1, "transformer_encoder_layer": 3}.get(name, 4))


# -- dot4_u8s8 as dp4a ----------------------------------------------------------------------------


def _dot4_graph() -> Graph:
    builder = GraphBuilder("dot4")
    a, w = builder.input("a", (8, 22), DType.u8), builder.input("w", (22, 12), DType.i8)
    return builder.build(builder.op("matmul_integer", a, w, builder.constant(np.array(3, np.uint8), "za")))


@requires_nvrtc
def test_dot4_prints_as_one_dp4a_and_compiles():
    """The CPU int8 template's kernel (dot4_u8s8 per 4 bytes), scheduled generically: every dot4 is
    a `kiln_dp4a`, whose device form is inline PTX dp4a.u32.s32 (u8 x s8: CUDA's __dp4a has no such
    overload)."""
    kernel, _ = gpu_schedule(lower_group(_node(_dot4_graph()), "dot4"))
    source = emit_kernel(kernel)
    assert "kiln_dp4a(" in source and "kiln_dot4" not in source
    for arch in ("sm_80", "sm_90"):
        assert compile_cuda(source, arch, "dot4").resources["dot4"].spill_stores == 0


@requires_nvrtc
@requires_emulator
def test_dot4_is_bit_exact_in_the_emulator(monkeypatch):
    """With the int8 MMA template declined, the group takes the CPU template's dot4 loop; the host
    twin of kiln_dp4a wraps in i32 as dp4a does (operands over the full byte range)."""
    import backends.cuda.schedule as schedule

    monkeypatch.setattr(schedule, "int8_gemm_template", lambda *args, **kwargs: None)
    graph = _dot4_graph()
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    assert "kiln_dp4a(" in model.program.code["cuda_source"]
    inputs = _inputs(graph, 3)
    (got,) = _emulate(model, inputs)
    np.testing.assert_array_equal(got, ir.run(graph, inputs)[0])
