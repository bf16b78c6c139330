"""The int8 GEMM (`backends.lowering.templates_quant`) and the `dot4_u8s8` call it is built on: the
call's meaning in the kernel interpreter against byte arithmetic in Python; its LLVM forms (vpdpbusd
and the portable one) bit for bit against the interpreter; `matmul_integer` of many shapes, operand
types and zero points through the kernel interpreter (tiny tiles: small shapes have edges) and the
CPU target, equal to the graph interpreter bit for bit; the dequantizing epilogue in the same kernel;
vpdpbusd in the assembly on a VNNI host."""

from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
from backends.llvm import codegen, compile_module
from backends.lowering.templates_gemm import GemmTiles, override_tiles
from ir import DType, GraphBuilder, run
from ir.loop import Buffer, Call, For, Kernel, Load, LoopKind, Ref, Store, Var
from ir.loop.interpreter import dot4_u8s8
from ir.loop.printer import print_kernel
from tests.backends.llvm.harness import assert_bit_identical, compile_kernels, run_both
from tests.backends.lowering.lowered import lower_graph, run_lowered

_RNG = np.random.default_rng(10)


def _words(n: int) -> np.ndarray:
    return _RNG.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)


def _calls(kernel: Kernel) -> set[str]:
    return set(re.findall(r"(\w+)<i32>\(", print_kernel(kernel)))


# -- dot4_u8s8 -----------------------------------------------------------------------------------


def test_dot4_sums_unsigned_bytes_of_a_times_signed_bytes_of_b_and_wraps():
    acc, a, b = _words(200), _words(200), _words(200)
    acc[:4] = [2**31 - 1, -(2**31), 0, 5]
    a[:4], b[:4] = -1, np.int32(-(2**31))  # a: four 255s; b: bytes 0, 0, 0, -128
    expected = []
    for x, y, z in zip(acc.tolist(), a.tolist(), b.tolist()):
        total = x + sum(((y >> 8 * q) & 0xFF) * (((z >> 8 * q) & 0xFF) - 256 * (((z >> 8 * q) & 0xFF) >= 128))
                        for q in range(4))  # fmt: skip
        expected.append((total + 2**31) % 2**32 - 2**31)
    got = dot4_u8s8(acc, a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.array(expected, np.int32))
    assert dot4_u8s8(np.int32(0), np.int32(-1), np.int32(-(2**31))) == -128 * 255


def _dot4_kernel(n: int, kind: LoopKind) -> Kernel:
    acc, a, b, out = (Buffer(name, DType.i32, (n,)) for name in ("acc", "a", "b", "out"))
    i = Var("i")
    value = Call("dot4_u8s8", tuple(Load(x, Ref(i)) for x in (acc, a, b)), DType.i32)
    return Kernel(f"dot4_{kind.value}_{n}", (acc, a, b, out), (For(i, n, (Store(out, Ref(i), value),), kind),))


@pytest.mark.parametrize("vnni", [True, False], ids=["vpdpbusd", "portable"])
@pytest.mark.parametrize(("n", "kind"), [(64, LoopKind.VECTORIZED), (21, LoopKind.VECTORIZED), (7, LoopKind.SERIAL)])
def test_dot4_compiled_equals_the_interpreter(monkeypatch, vnni, n, kind):
    if vnni and not codegen.host_has_vnni():
        pytest.skip("the host has no AVX-512 VNNI")
    monkeypatch.setattr(codegen, "use_vnni", lambda: vnni)
    kernel = _dot4_kernel(n, kind)
    arrays = [_words(n), _words(n), _words(n), np.zeros(n, np.int32)]
    module = compile_kernels([kernel], f"dot4_{vnni}_{n}")
    interpreted, compiled = run_both(module, kernel, arrays)
    assert_bit_identical(compiled[3], interpreted[3], "dot4_u8s8")
    assert ("vpdpbusd" in module.assembly) == vnni


# -- matmul_integer -------------------------------------------------------------------------------


def _graph(shape_a, n, a_dtype: DType, zero_point: str | None, *, weight_dtype=DType.i8, epilogue=False):
    """matmul_integer(a, w) with an optional zero point of a ("tensor": a scalar input, "row": [..., M, 1])."""
    b = GraphBuilder("int8_gemm")
    a = b.input("a", shape_a, a_dtype)
    low, high = (0, 256) if weight_dtype == DType.u8 else (-128, 128)
    weight = b.constant(_RNG.integers(low, high, (shape_a[-1], n)).astype(weight_dtype.numpy), "w")
    inputs = [a, weight]
    if zero_point is not None:
        point_shape = () if zero_point == "tensor" else (*shape_a[:-1], 1)
        inputs.append(b.input("za", point_shape, a_dtype))
    y = b.op("matmul_integer", *inputs)
    if epilogue:  # dequantize: i32 -> f32, times a per-column scale
        scale = b.constant(_RNG.uniform(0.01, 0.1, (n,)).astype(np.float32), "scale")
        y = b.mul(b.cast(y, dtype=DType.f32), scale)
    return b.build(y)


def _inputs(graph) -> list[np.ndarray]:
    arrays = []
    for value in graph.inputs:
        info = np.iinfo(value.type.dtype.numpy)
        arrays.append(_RNG.integers(info.min, int(info.max) + 1, value.type.shape).astype(value.type.dtype.numpy))
    return arrays


_INTERPRETED = [  # (shape of a, n, dtype of a, zero point of a)
    ((5, 9), 35, DType.u8, None),
    ((5, 9), 35, DType.i8, None),
    ((3, 4), 16, DType.i8, "tensor"),
    ((7, 1), 17, DType.u8, "row"),
    ((2, 3, 6), 18, DType.i8, "row"),
    ((4, 11), 3, DType.u8, "tensor"),
]


@pytest.mark.parametrize(("shape_a", "n", "a_dtype", "zero_point"), _INTERPRETED)
def test_int8_gemm_through_the_kernel_interpreter_is_exact(shape_a, n, a_dtype, zero_point):
    graph = _graph(shape_a, n, a_dtype, zero_point)
    inputs = _inputs(graph)
    with override_tiles(lambda shape: GemmTiles(mr=2, nr=16, block_tiles=2)):
        (got,) = run_lowered(graph, inputs)
        _, kernels = lower_graph(graph)
    assert "dot4_u8s8" in _calls(kernels[0])
    np.testing.assert_array_equal(got, run(graph, inputs)[0])


_COMPILED = [  # edges: rows % 6, columns % 16 and % 64, depth % 4; per-row zero points; batched a
    ((1, 4), 16, DType.i8, None),
    ((7, 13), 19, DType.u8, None),
    ((7, 13), 19, DType.i8, None),
    ((13, 37), 33, DType.i8, "row"),
    ((50, 130), 130, DType.u8, "tensor"),
    ((2, 9, 64), 80, DType.i8, "tensor"),
    ((97, 256), 64, DType.i8, None),
]


@pytest.mark.parametrize(("shape_a", "n", "a_dtype", "zero_point"), _COMPILED)
def test_int8_gemm_on_the_cpu_equals_the_interpreter(shape_a, n, a_dtype, zero_point):
    graph = _graph(shape_a, n, a_dtype, zero_point)
    compiled = compiler.compile(graph, target="cpu", threads=2)
    inputs = _inputs(graph)
    for _ in range(2):  # a second run: nothing depends on what the first left in memory
        np.testing.assert_array_equal(np.asarray(compiled(*inputs)), run(graph, inputs)[0])
        inputs = _inputs(graph)


def test_the_dequantizing_epilogue_runs_in_the_gemm_kernel():
    graph = _graph((6, 20), 24, DType.i8, None, epilogue=True)
    compiled = compiler.compile(graph, target="cpu", threads=1)
    assert [n.attrs["kind"] for n in compiled.graph.nodes if n.op == "fused"] == ["contraction"]
    inputs = _inputs(graph)
    np.testing.assert_array_equal(np.asarray(compiled(*inputs)), run(graph, inputs)[0])


@pytest.mark.parametrize("case", ["u8 weights", "per-column weight zero point"])
def test_forms_without_the_int8_kernel_take_the_i32_gemm(case):
    b = GraphBuilder("fallback")
    a = b.input("a", (5, 8), DType.u8)
    if case == "u8 weights":
        weight = b.constant(_RNG.integers(0, 256, (8, 20)).astype(np.uint8), "w")
        graph = b.build(b.op("matmul_integer", a, weight))
    else:
        weight = b.constant(_RNG.integers(-128, 128, (8, 20)).astype(np.int8), "w")
        point = b.constant(_RNG.integers(-3, 4, (1, 20)).astype(np.int8), "wz")
        graph = b.build(b.op("matmul_integer", a, weight, b.constant(np.uint8(3), "az"), point))
    _, kernels = lower_graph(graph)
    assert "dot4_u8s8" not in _calls(kernels[0])
    inputs = _inputs(graph)
    np.testing.assert_array_equal(np.asarray(compiler.compile(graph, target="cpu")(*inputs)), run(graph, inputs)[0])


def _vector_code_takes_dot4() -> bool:
    """Whether `backends.llvm.vector_safety` lets a vectorized loop that calls dot4_u8s8 become vector code."""
    from backends.llvm.vector_safety import obstacle

    kernel = _dot4_kernel(64, LoopKind.VECTORIZED)
    return obstacle(kernel.body, kernel.body[0], 16) is None


@pytest.mark.skipif(not codegen.host_has_vnni(), reason="the host has no AVX-512 VNNI")
def test_the_assembly_multiplies_with_vpdpbusd_on_zmm_registers():
    assert _vector_code_takes_dot4(), "the vector emitter refuses loops that call dot4_u8s8"
    compiled = compiler.compile(_graph((24, 64), 128, DType.i8, None), target="cpu", threads=1)
    assembly = compile_module(compiled.program.code["llvm_ir"]).assembly
    assert re.search(r"vpdpbusd\s+[^\n]*zmm", assembly), "no 512-bit vpdpbusd in the int8 GEMM"


# -- weights packed at compile time --------------------------------------------------------------


@pytest.mark.parametrize(("depth", "columns", "width"), [(1, 1, 1), (7, 5, 5), (13, 130, 64), (64, 64, 64)])
def test_unpack_bytes_inverts_pack_bytes(depth, columns, width):
    from ir.ops.quantization import pack_bytes, unpack_bytes

    matrix = _RNG.integers(-128, 128, (depth, columns)).astype(np.int8)
    words = pack_bytes(matrix, width)
    assert words.dtype == np.int32 and words.shape == (-(-columns // width), -(-depth // 4), width)
    np.testing.assert_array_equal(unpack_bytes(words, dtype=DType.i8, shape=(depth, columns)), matrix)


@pytest.mark.parametrize(("shape_a", "n", "zero_point"), [((50, 130), 200, None), ((7, 13), 19, "row")])
def test_the_cpu_reads_weights_packed_at_compile_time(shape_a, n, zero_point):
    """The layout pass stores B as i32 words; the kernel loads them (no per-block packing left) and
    the result is the unpacked graph's, bit for bit."""
    graph = _graph(shape_a, n, DType.i8, zero_point)
    compiled = compiler.compile(graph, target="cpu", threads=2)
    (integer,) = [n for f in compiled.graph.nodes if f.op == "fused" for n in f.attrs["body"].nodes
                  if n.op == "matmul_integer"]  # fmt: skip
    assert integer.attrs["packed_columns"] == n and integer.inputs[1].type.dtype == DType.i32
    kernel = print_kernel(lower_graph(compiled.graph, fuse=False)[1][0])
    assert "in_w_words" in kernel and not re.search(r"\bt\d+\[[^\]]*\] = w\d+", kernel), "B still packed per block"
    inputs = _inputs(graph)
    np.testing.assert_array_equal(np.asarray(compiled(*inputs)), run(graph, inputs)[0])
    np.testing.assert_array_equal(run(compiled.graph, inputs)[0], run(graph, inputs)[0])


@pytest.mark.skipif(not codegen.host_has_vnni(), reason="the host has no AVX-512 VNNI")
def test_unsigned_activation_words_are_whole_32_bit_loads():
    """A u8 A's four bytes along K are one i32 load (LLVM merges the byte loads that `pack_bytes`
    spells out), the form dynamic int8 gives its activations: a 6-row tile would otherwise load 24
    bytes per group of four (an i8 A, shifted by +128 byte by byte, still does)."""
    compiled = compiler.compile(_graph((24, 64), 128, DType.u8, "tensor"), target="cpu", threads=1)
    assembly = compile_module(compiled.program.code["llvm_ir"]).assembly
    byte_loads = re.findall(r"\bmov[sz]b", assembly)
    assert len(byte_loads) <= 6, f"{len(byte_loads)} byte loads: A's words are assembled byte by byte"
