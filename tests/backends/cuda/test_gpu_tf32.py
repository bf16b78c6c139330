"""TF32 tensor cores for f32 GEMMs and convolutions when the user allows it
(`backends.cuda.templates_gpu_tf32`, `compile(..., allow_tf32=True)`): the kernels run in the
lockstep interpreter and in the CUDA emulator, compile with NVRTC for sm_80 and sm_90 without
spills, and without `allow_tf32` nothing changes (f32 keeps the FMA tiles).

The graph interpreter has no TF32, so the reference is a numpy model of it, written here
independently of the interpreter's and the prelude's bit arithmetic: each operand of the
contraction rounded to TF32 (11 significant bits, to nearest with ties away from zero, by
`frexp`), then the graph run in f64 (`ir.run(oracle=True)`). Tolerances:

- against that model, `assert_close`'s f32 bound (1e-5 relative plus 1e-5 of the output's largest
  magnitude): the products of TF32 values are exact, only the f32 accumulation differs;
- against the f32 product of the unrounded operands (the stated loose bound), 2^-10 (1 + 2^-11)
  sum over k of |a_ik| |b_kj|, plus the f32 bound: each operand moves by at most 2^-11 of itself,
  so each product by at most 2^-10 (1 + 2^-12) of itself;
- and TF32 did happen: the result is outside the f32 bound around the f32 product, where an FMA
  kernel stays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ir
from backends.cuda import GpuKernel, compile_cuda, emit_kernel, schedule_group
from backends.cuda.templates_gpu_conv import conv_template
from backends.cuda.templates_gpu_gemm import gemm_template
from backends.cuda.templates_gpu_mma import MmaTiles
from backends.cuda.templates_gpu_tf32 import TF32_MMA
from ir import DType, Graph, GraphBuilder
from ir.errors import InterpreterError
from ir.loop import Assign, Call, Const, For, If, Kernel, Load, LoopKind, Ref, Store, Var, run_lockstep
from ir.loop.lockstep import launch_dims
from ir.loop.nodes import Buffer
from passes import make_pass
from runtime.cuda import cuda_unavailable
from runtime.cuda_emulator import emulator_unavailable
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK
from tests.backends.lowering.lowered import assert_close

SMALL = MmaTiles(32, 16, 16, 2, 2)
"""One m16n8 fragment per warp: 40 x 24 x 20 has edge tiles in M, N and K, and two K stages."""
WIDE = MmaTiles(64, 32, 16, 2, 2)
"""2 x 2 fragments per warp: each A fragment serves two products, each B fragment two."""
KERNELS: dict[str, tuple[Kernel, str]] = {}
"""Every kernel the tests ran, by name, with its template: the NVRTC test compiles them all."""


def tf32_model(x: np.ndarray) -> np.ndarray:
    """f32 `x` rounded to TF32: 11 significant bits (quantum 2^-136 below the normal range), to
    nearest, ties away from zero; past the largest finite f32, infinity; NaN stays NaN."""
    with np.errstate(all="ignore"):  # (signalling NaNs among the random bit patterns)
        x64 = np.asarray(x, np.float32).astype(np.float64)
        exponent = np.frexp(x64)[1]  # x = m 2^e with 1/2 <= |m| < 1: the leading bit is worth 2^(e - 1)
        quantum = np.ldexp(1.0, np.maximum(exponent - 11, -136))
        rounded = np.copysign(np.floor(np.abs(x64) / quantum + 0.5) * quantum, x64)
        return np.where(np.isfinite(x64), rounded, x64).astype(np.float32)


def _node(graph: Graph):
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    return node


def _inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, v.type.shape).astype(np.float32) for v in graph.inputs]


def _references(graph: Graph, inputs: list[np.ndarray], operands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The TF32 model's output (the `operands` inputs rounded, then f64) and the f32 interpreter's."""
    rounded = [tf32_model(a) if v.name in operands else a for v, a in zip(graph.inputs, inputs)]
    (model,) = ir.run(graph, rounded, oracle=True)
    (exact,) = ir.run(graph, inputs)
    return model.astype(np.float32), exact


def _run(graph: Graph, template: str, tiles: MmaTiles = SMALL, seed: int = 0, kernel: Kernel | None = None):
    """The kernel of `graph`'s one group on TF32 (`template`), run in the lockstep interpreter."""
    node = _node(graph)
    name = f"{graph.name}_{len(KERNELS)}"
    if kernel is None:
        maker = conv_template if template.startswith("conv") else gemm_template
        kernel, chosen = maker(node, name, mma_tiles=tiles, allow_tf32=True)
        assert chosen == template
        KERNELS[name] = (kernel, template)
    inputs = _inputs(graph, seed)
    given = dict(zip(graph.inputs, inputs))  # the group takes them in its own order
    (output,) = outputs = [np.full(v.type.shape, 123, np.float32) for v in graph.outputs]
    run_lockstep(kernel, [*(given[v] for v in node.inputs), *outputs])
    return kernel, inputs, output


def _check(graph: Graph, template: str, operands: tuple[str, ...] = ("x", "w"), **kwargs) -> Kernel:
    kernel, inputs, got = _run(graph, template, **kwargs)
    model, exact = _references(graph, inputs, operands)
    assert_close(got, model, DType.f32, f"{graph.name} against the TF32 model")
    magnitude = float(np.abs(exact).max())
    assert not np.allclose(got, exact, rtol=1e-5, atol=1e-5 * magnitude), "no TF32 rounding happened"
    return kernel


def _loose_bound(graph: Graph, inputs: list[np.ndarray], exact: np.ndarray) -> np.ndarray:
    """2^-10 (1 + 2^-11) sum |a||b| (the graph on |operands| in f64: a bare contraction) plus the f32 bound."""
    (absolute,) = ir.run(graph, [np.abs(a) for a in inputs], oracle=True)
    return 2.0**-10 * (1 + 2.0**-11) * absolute + 1e-5 * np.abs(exact) + 1e-5 * float(np.abs(exact).max())


def _matmul(m: int, n: int, k: int) -> Graph:
    builder = GraphBuilder(f"matmul_{m}x{n}x{k}")
    x, w = builder.input("x", (m, k), DType.f32), builder.input("w", (k, n), DType.f32)
    return builder.build(builder.matmul(x, w))


def _conv(name: str, x_shape, w_shape, **attrs) -> Graph:
    builder = GraphBuilder(f"conv_{name}")
    x, w = builder.input("x", x_shape, DType.f32), builder.input("w", w_shape, DType.f32)
    return builder.build(builder.conv(x, w, **attrs))


# -- the rounding and the fragment layout ------------------------------------------------------------


def _elementwise_kernel(name: str, count: int, value) -> Kernel:
    """out[i] = value(Load(x, i)) over `count` threads of one block."""
    x, out, thread = Buffer("x", DType.f32, (count,)), Buffer("out", DType.f32, (count,)), Var("thread")
    body = (Store(out, Ref(thread), value(Load(x, Ref(thread)))),)
    return Kernel(name, (x, out), (For(thread, count, body, LoopKind.THREAD_X),), outputs=(1,))


def _round_kernel(name: str = "tf32_round") -> Kernel:
    return _elementwise_kernel(name, 128, lambda x: Call("tf32_round", (x,), DType.f32))


def _rounding_cases() -> np.ndarray:
    """Ties (away from zero, both signs), just below ties, the largest finite f32 (rounds to
    infinity), infinities, NaNs (one with only low mantissa bits), zeros, subnormals, and random
    bit patterns."""
    one, half_ulp = 1.0, 2.0**-11
    special = np.array([one + half_ulp, -(one + half_ulp), one + 3 * half_ulp, one + half_ulp - 2.0**-23, 3.0,
                        np.finfo(np.float32).max, np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -3e-42, 2.0**-149],
                       np.float32)  # fmt: skip
    odd_nan = np.array([0x7F800001, 0xFF801000], np.uint32).view(np.float32)
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 128 - special.size - odd_nan.size, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([special, odd_nan, bits.view(np.float32)])


def _assert_rounded(got: np.ndarray, values: np.ndarray) -> None:
    expected = tf32_model(values)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def test_tf32_round_is_round_to_nearest_ties_away_on_11_significant_bits():
    values = _rounding_cases()
    out = np.zeros_like(values)
    run_lockstep(_round_kernel(), [values, out])
    _assert_rounded(out, values)
    assert out[0] == np.float32(1 + 2.0**-10) and out[1] == -np.float32(1 + 2.0**-10) and out[3] == 1.0
    assert out[5] == np.inf and np.signbit(out[10])


def _fragment_kernel(name: str = "tf32_fragments") -> Kernel:
    """One warp: lane (group, quad) loads its A, B and C elements by the PTX ISA's table for
    mma.m16n8k8 .tf32 (stated here: a0..a3 at A (g, q), (g + 8, q), (g, q + 4), (g + 8, q + 4); b0, b1
    at B (q, g), (q + 4, g); c0..c3 at C (g, 2q), (g, 2q + 1), (g + 8, 2q), (g + 8, 2q + 1)), runs the
    MMA and stores D where C came from."""
    a, b = Buffer("a", DType.f32, (16 * 8,)), Buffer("b", DType.f32, (8 * 8,))
    c, d = Buffer("c", DType.f32, (16 * 8,)), Buffer("d", DType.f32, (16 * 8,))
    thread = Var("thread")
    g, q = Ref(thread) // 4, Ref(thread) % 4
    a_at = [g * 8 + q, (g + 8) * 8 + q, g * 8 + (q + 4), (g + 8) * 8 + (q + 4)]
    b_at = [q * 8 + g, (q + 4) * 8 + g]
    c_at = [g * 8 + q * 2, g * 8 + (q * 2 + 1), (g + 8) * 8 + q * 2, (g + 8) * 8 + (q * 2 + 1)]
    registers = [Var(f"r{i}", DType.f32) for i in range(10)]
    results = [Var(f"d{i}", DType.f32) for i in range(4)]
    loads = [(a, at, True) for at in a_at] + [(b, at, True) for at in b_at] + [(c, at, False) for at in c_at]
    body = [
        Assign(r, Call("tf32_round", (Load(buffer, at),), DType.f32) if rounded else Load(buffer, at))
        for r, (buffer, at, rounded) in zip(registers, loads)
    ]
    body += [Assign(v, Call(TF32_MMA, (*map(Ref, registers), Const(e, DType.i32)), DType.f32))
             for e, v in enumerate(results)]  # fmt: skip
    body += [Store(d, at, Ref(v)) for at, v in zip(c_at, results)]
    return Kernel(name, (a, b, c, d), (For(thread, 32, tuple(body), LoopKind.THREAD_X),), outputs=(3,))


def _fragment_case(seed: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b, c = (rng.uniform(-2, 2, shape).astype(np.float32) for shape in ((16, 8), (8, 8), (16, 8)))
    expected = tf32_model(a).astype(np.float64) @ tf32_model(b).astype(np.float64) + c
    return [a, b, c], expected.astype(np.float32)


def test_the_tf32_mma_takes_each_lane_s_fragment_by_the_ptx_isa_table():
    arrays, expected = _fragment_case()
    out = np.zeros((16, 8), np.float32)
    run_lockstep(_fragment_kernel(), [*(x.reshape(-1) for x in arrays), out.reshape(-1)])
    assert_close(out, expected, DType.f32, "one m16n8k8 product")


def _unrounded(kernel: Kernel) -> Kernel:
    """`_fragment_kernel` without its `tf32_round`s: the MMA gets f32 operands as loaded."""

    def unround(stmt):
        if isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name == "tf32_round":
            return dataclasses.replace(stmt, value=stmt.value.args[0])
        return stmt

    loop = kernel.body[0]
    return dataclasses.replace(kernel, body=(dataclasses.replace(loop, body=tuple(map(unround, loop.body))),))


def test_an_operand_that_is_not_a_tf32_value_is_reported():
    """The device reads only an operand's upper 19 bits: a schedule that forgot to round is an error."""
    broken = _unrounded(_fragment_kernel())
    arrays, _ = _fragment_case()
    with pytest.raises(InterpreterError, match=r"operand a0 of thread 0 .* not a TF32 value"):
        run_lockstep(broken, [*(x.reshape(-1) for x in arrays), np.zeros(128, np.float32)])


# -- the GEMM and convolution templates ------------------------------------------------------------


@pytest.mark.parametrize(("m", "n", "k", "tiles"), [(40, 24, 20, SMALL), (5, 3, 7, SMALL), (70, 65, 33, WIDE)])
def test_matmul_on_tf32_with_edge_tiles(m, n, k, tiles):
    graph = _matmul(m, n, k)
    _, inputs, got = _run(graph, "gemm.tf32", tiles)
    model, exact = _references(graph, inputs, ("x", "w"))
    assert_close(got, model, DType.f32, "against the TF32 model")
    assert (np.abs(got.astype(np.float64) - exact) <= _loose_bound(graph, inputs, exact)).all(), "the loose bound"
    assert not np.allclose(got, exact, rtol=1e-5, atol=1e-5 * float(np.abs(exact).max())), "no TF32 rounding happened"


def test_batched_matmul_with_a_broadcast_batch():
    builder = GraphBuilder("bmm")
    x, w = builder.input("x", (2, 1, 9, 20), DType.f32), builder.input("w", (3, 20, 12), DType.f32)
    _check(builder.build(builder.matmul(x, w)), "gemm.tf32")


@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, True), (True, False)])
def test_gemm_with_bias_gelu_and_residual_epilogue(trans_a, trans_b):
    """Both stage layouts of each operand: K-contiguous (rows read at group * pitch + quad) and
    K-major (quad * pitch + group)."""
    m, n, k = 40, 24, 20
    builder = GraphBuilder("gemm")
    x = builder.input("x", (k, m) if trans_a else (m, k), DType.f32)
    w = builder.input("w", (n, k) if trans_b else (k, n), DType.f32)
    bias, residual = builder.input("bias", (n,), DType.f32), builder.input("residual", (m, n), DType.f32)
    y = builder.gemm(x, w, bias, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=2.0)
    _check(builder.build(builder.add(builder.gelu(y, approximate="tanh"), residual)), "gemm.tf32", tiles=WIDE)


CONVS = {
    "3x3_pad1": ((2, 5, 6, 7), (20, 5, 3, 3), {"pads": (1, 1, 1, 1)}),
    "grouped_strided": ((1, 6, 9, 8), (12, 3, 3, 3), {"groups": 2, "strides": (2, 2), "pads": (1, 0, 2, 1)}),
    "1d": ((2, 3, 21), (9, 3, 5), {"strides": (2,), "pads": (2, 2)}),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_on_tf32(case):
    x_shape, w_shape, attrs = CONVS[case]
    graph = _conv(case, x_shape, w_shape, **attrs)
    _, inputs, got = _run(graph, "conv.tf32", MmaTiles(16, 32, 16, 1, 2))
    model, exact = _references(graph, inputs, ("x", "w"))
    assert_close(got, model, DType.f32, f"{case} against the TF32 model")
    assert (np.abs(got.astype(np.float64) - exact) <= _loose_bound(graph, inputs, exact)).all(), "the loose bound"


def _swap_a_registers(kernel: Kernel) -> Kernel:
    """Every TF32 MMA with its a0 and a1 exchanged (rows group and group + 8 of A)."""

    def change(body):
        changed = []
        for stmt in body:
            if isinstance(stmt, For):
                stmt = dataclasses.replace(stmt, body=change(stmt.body))
            elif isinstance(stmt, If):
                stmt = dataclasses.replace(stmt, then=change(stmt.then), otherwise=change(stmt.otherwise))
            elif isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name == TF32_MMA:
                a0, a1, *rest = stmt.value.args
                stmt = dataclasses.replace(stmt, value=dataclasses.replace(stmt.value, args=(a1, a0, *rest)))
            changed.append(stmt)
        return tuple(changed)

    return dataclasses.replace(kernel, body=change(kernel.body))


def test_a_swapped_fragment_register_gives_a_wrong_product():
    graph = _matmul(40, 24, 20)
    kernel, _, got = _run(graph, "gemm.tf32")
    _, _, wrong = _run(graph, "gemm.tf32", kernel=_swap_a_registers(kernel))
    assert not np.allclose(wrong, got, rtol=0.05, atol=0.05)


# -- without allow_tf32 nothing changes; the user sees where TF32 ran ------------------------------------


def test_without_allow_tf32_f32_keeps_the_fma_tiles_and_low_precision_keeps_its_mma():
    node = _node(_matmul(70, 65, 33))
    assert schedule_group(node, "f32").template == "gemm.fma"
    assert schedule_group(node, "tf32", allow_tf32=True).template == "gemm.tf32"
    conv = _node(_conv("plain", (1, 4, 6, 6), (8, 4, 3, 3)))
    assert schedule_group(conv, "conv").template == "conv.fma"
    assert schedule_group(conv, "conv_tf32", allow_tf32=True).template == "conv.tf32"
    builder = GraphBuilder("half")
    x, w = builder.input("x", (32, 16), DType.f16), builder.input("w", (16, 8), DType.f16)
    half = _node(builder.build(builder.matmul(x, w)))
    assert schedule_group(half, "half", allow_tf32=True).template == "gemm.mma"


@requires_nvrtc
def test_compile_records_the_kernels_that_run_on_tf32():
    import compiler

    builder = GraphBuilder("mlp")
    x, w = builder.input("x", (64, 32), DType.f32), builder.input("w", (32, 48), DType.f32)
    graph = builder.build(builder.relu(builder.matmul(x, w)))
    plain = compiler.compile(graph, target="cuda", arch="sm_80")
    assert plain.stats["tf32"] == [] and set(plain.program.code["templates"].values()) == {"gemm.fma"}
    fast = compiler.compile(graph, target="cuda", arch="sm_80", allow_tf32=True)
    assert list(fast.program.code["templates"].values()) == ["gemm.tf32"]
    assert fast.stats["tf32"] == list(fast.program.code["templates"])
    (source,) = fast.kernels.values()
    assert "kiln_mma_m16n8k8_tf32_x4(" in source


@requires_nvrtc
def test_every_tf32_kernel_compiles_for_ampere_and_hopper_without_spills():
    """The kernels above, and the default tiles (64 x 64, and 128 x 128 over 8 warps) of a GEMM and a conv."""
    if not KERNELS:  # run alone: make the small-tile kernels first
        test_gemm_with_bias_gelu_and_residual_epilogue(True, False)
    builder = GraphBuilder("large")
    x, w = builder.input("x", (512, 256), DType.f32), builder.input("w", (512, 256), DType.f32)
    large = builder.build(builder.gelu(builder.gemm(x, w, builder.input("b", (512,), DType.f32), trans_b=True)))
    defaults = [large, _matmul(70, 65, 33), _conv("default", (2, 16, 10, 10), (32, 16, 3, 3), pads=(1, 1, 1, 1))]
    for graph in defaults:
        scheduled = schedule_group(_node(graph), f"{graph.name}_default", allow_tf32=True)
        KERNELS[scheduled.kernel.name] = (scheduled.kernel, scheduled.template)
    for name, (kernel, template) in KERNELS.items():
        source = emit_kernel(kernel)
        assert "asm" not in source and "kiln_tf32_round(" in source
        assert "kiln_mma_m16n8k8_tf32_x4(" in source, "one mma instruction per product"
        threads = launch_dims(kernel)[1][0]
        shared = sum(b.size * b.dtype.itemsize for b in kernel.locals if b.scope.value == "shared")
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} ({template}) on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == shared <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where


@pytest.mark.gpu
@pytest.mark.skipif(cuda_unavailable() is not None, reason=f"needs a GPU: {cuda_unavailable()}")
def test_on_the_device_tf32_matches_the_model_within_its_accumulation():
    """The device sums in its own order (and may keep fewer bits while it does): 10 times the f32
    bound against the TF32 model; the stated loose bound against f32."""
    import compiler

    builder = GraphBuilder("device")
    x, w = builder.input("x", (200, 300), DType.f32), builder.input("w", (300, 136), DType.f32)
    bias = builder.input("bias", (136,), DType.f32)
    conv = _conv("device", (2, 16, 18, 18), (40, 16, 3, 3), pads=(1, 1, 1, 1))
    for graph in (builder.build(builder.gemm(x, w, bias)), conv):
        compiled = compiler.compile(graph, target="cuda", allow_tf32=True)
        assert compiled.stats["tf32"], "no kernel ran on TF32"
        inputs = _inputs(graph, 7)
        got = np.asarray(compiled(*inputs))
        model, exact = _references(graph, inputs, ("x", "w"))
        assert_close(got, model, DType.f32, f"{graph.name} on the device", scale=10)
        assert (np.abs(got.astype(np.float64) - exact) <= _loose_bound(graph, inputs, exact)).all()


# -- the printed CUDA C in the emulator ------------------------------------------------------------------


@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
def test_the_printed_kernels_in_the_cuda_emulator_and_a_mutation():
    """One emulator build: the rounding and the fragment table (hand-written kernels), GEMMs with
    both stage layouts and a conv match the TF32 model; the same GEMM with a swapped fragment
    register does not (the host twin gathers fragments by the PTX layout)."""
    from tests.backends.cuda.emulated import emulation_program, run_emulated

    rounding = GraphBuilder("rounding")
    rounding = rounding.build(rounding.neg(rounding.input("x", (128,), DType.f32)))
    fragments = GraphBuilder("fragments")
    a, b = fragments.input("a", (16, 8), DType.f32), fragments.input("b", (8, 8), DType.f32)
    fragments = fragments.build(fragments.add(fragments.matmul(a, b), fragments.input("c", (16, 8), DType.f32)))
    builder = GraphBuilder("gemm_tt")
    x, w = builder.input("x", (20, 40), DType.f32), builder.input("w", (24, 20), DType.f32)
    transposed = builder.build(builder.gemm(x, w, trans_a=True, trans_b=True))
    gemms = [_matmul(40, 24, 20), transposed, _matmul(70, 65, 33), _conv("emulated", (2, 5, 6, 7), (20, 5, 3, 3))]
    cases = [rounding, fragments, *gemms, _matmul(40, 24, 32)]
    mutated = len(cases) - 1

    def schedule(node, name):
        graph = int(name[1 : name.index("_")])
        if graph == 0:
            kernel, template = _round_kernel(name), "rounding"
        elif graph == 1:
            kernel, template = _fragment_kernel(name), "fragments"
        else:
            maker = conv_template if any(n.op == "conv" for n in node.attrs["body"].nodes) else gemm_template
            kernel, template = maker(node, name, mma_tiles=WIDE if graph == 4 else SMALL, allow_tf32=True)
            kernel = _swap_a_registers(kernel) if graph == mutated else kernel
        return GpuKernel(kernel, *launch_dims(kernel), template)

    fused = [make_pass("fuse").run(graph) for graph in cases]
    program = emulation_program(fused, schedule, "tf32")
    assert program.code["cuda_source"].count("kiln_mma_m16n8k8_tf32_x4(") >= len(gemms)
    values = _rounding_cases()
    fragment_arrays, fragment_expected = _fragment_case()
    inputs = [[values], fragment_arrays, *(_inputs(graph, j) for j, graph in enumerate(cases[2:]))]
    results = run_emulated(program, fused, inputs)
    _assert_rounded(results[0][0], values)
    assert_close(results[1][0], fragment_expected, DType.f32, "one m16n8k8 product in the emulator")
    for graph, arrays, got in zip(cases[2:], inputs[2:], results[2:]):
        model, _ = _references(graph, arrays, ("x", "w"))
        if graph is cases[mutated]:
            assert not np.allclose(got[0], model, rtol=0.05, atol=0.05), "the swapped register went unnoticed"
        else:
            assert_close(got[0], model, DType.f32, f"{graph.name} in the emulator")


@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
def test_the_emulator_reports_an_operand_that_is_not_a_tf32_value():
    from runtime.cuda_emulator_reports import EmulatedKernelError
    from tests.backends.cuda.emulated import emulation_program, run_emulated

    fragments = GraphBuilder("fragments")
    a, b = fragments.input("a", (16, 8), DType.f32), fragments.input("b", (8, 8), DType.f32)
    fragments = fragments.build(fragments.add(fragments.matmul(a, b), fragments.input("c", (16, 8), DType.f32)))

    def schedule(node, name):
        kernel = _unrounded(_fragment_kernel(name))
        return GpuKernel(kernel, *launch_dims(kernel), "fragments")

    fused = [make_pass("fuse").run(fragments)]
    arrays, _ = _fragment_case()
    with pytest.raises(EmulatedKernelError, match=r"operand a0 of thread \d+ is not a TF32 value"):
        run_emulated(emulation_program(fused, schedule, "unrounded"), fused, [arrays])
