"""The int8 path on AVX2 hosts (`backends.llvm.dot4`), checked on whatever x86 host runs the tests with
the generated code's features limited (`runtime.cpu.limit_isa`): "avx2" keeps AVX-VNNI where the host
has it, so `dot4_u8s8` is the VEX `vpdpbusd` on ymm registers; "avx2-novnni" takes it away, so the
call is AVX2's exact `vpmaddwd` on bytes widened to i16 (never `vpmaddubsw`, whose i16 pair sums
saturate). Each form equals the kernel interpreter bit for bit on random words (every byte pattern
matters: 255 x -128 pairs are where a saturating form goes wrong), and the int8 GEMM and convolution
compiled under each limit equal the graph interpreter, their assembly holding the chosen instruction."""

from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
from backends.llvm import codegen, compile_module
from ir import DType, GraphBuilder, run
from ir.loop import Buffer, Call, For, Kernel, Load, LoopKind, Ref, Store, Var
from runtime.cpu import host_target, limit_isa
from tests.backends.llvm.harness import assert_bit_identical, compile_kernels, run_both

_NATIVE = host_target()["features"].split(",")
pytestmark = pytest.mark.skipif("+avx2" not in _NATIVE, reason="the host runs no AVX2 code")
_RNG = np.random.default_rng(14)


def _words(n: int) -> np.ndarray:
    words = _RNG.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32)
    words[:3] = [-1, np.int32(-(2**31)), 0x7F7F7F7F]  # bytes 255 255 255 255; 0 0 0 -128; 127 x 4
    return words


def _dot4_kernel(n: int, kind: LoopKind) -> Kernel:
    acc, a, b, out = (Buffer(name, DType.i32, (n,)) for name in ("acc", "a", "b", "out"))
    i = Var("i")
    value = Call("dot4_u8s8", tuple(Load(x, Ref(i)) for x in (acc, a, b)), DType.i32)
    return Kernel(f"dot4_{kind.value}_{n}", (acc, a, b, out), (For(i, n, (Store(out, Ref(i), value),), kind),))


def _worst_pairs(n: int) -> list[np.ndarray]:
    """a's bytes all 255 and b's all -128 in a third of the lanes (pair sums -65280: past i16)."""
    arrays = [_words(n), _words(n), _words(n), np.zeros(n, np.int32)]
    arrays[1][3::3], arrays[2][3::3] = -1, np.int32(-0x7F7F7F80)  # 0x80808080
    return arrays


_FORMS = {  # form -> (ISA limit, instruction the assembly must hold, instructions it must not)
    "vpdpbusd (AVX-VNNI, ymm)": ("avx2", "vpdpbusd", ("zmm", "vpmaddubsw")),
    "vpmaddwd (AVX2)": ("avx2-novnni", "vpmaddwd", ("vpdpbusd", "vpdpwssd", "vpmaddubsw", "zmm")),
}


def _skip_unless_runs(form: str) -> None:
    if form.startswith("vpdpbusd") and "+avxvnni" not in _NATIVE:
        pytest.skip("the host has no AVX-VNNI")


@pytest.mark.parametrize("form", list(_FORMS))
@pytest.mark.parametrize(("n", "kind"), [(64, LoopKind.VECTORIZED), (21, LoopKind.VECTORIZED), (7, LoopKind.SERIAL)])
def test_dot4_under_avx2_equals_the_interpreter_and_uses_the_chosen_instruction(form, n, kind):
    _skip_unless_runs(form)
    isa, wanted, unwanted = _FORMS[form]
    kernel = _dot4_kernel(n, kind)
    with limit_isa(isa):
        assert codegen.use_vnni() == (isa == "avx2")
        module = compile_kernels([kernel], f"dot4_{isa.replace('-', '_')}_{n}")
        assembly = module.assembly
        interpreted, compiled = run_both(module, kernel, _worst_pairs(n))
    assert_bit_identical(compiled[3], interpreted[3], f"dot4_u8s8 as {form}")
    assert wanted in assembly, f"no {wanted} in:\n{assembly[:3000]}"
    assert not [word for word in unwanted if word in assembly]
    if wanted == "vpdpbusd" and kind == LoopKind.VECTORIZED:
        assert re.search(r"vpdpbusd\s+[^\n]*ymm", assembly), "no 256-bit vpdpbusd"


def test_the_plain_arithmetic_form_equals_the_interpreter(monkeypatch):
    monkeypatch.setattr(codegen, "use_vnni", lambda: False)
    monkeypatch.setattr(codegen, "use_vpmaddwd", lambda: False)
    kernel = _dot4_kernel(40, LoopKind.VECTORIZED)
    module = compile_kernels([kernel], "dot4_arithmetic")
    interpreted, compiled = run_both(module, kernel, _worst_pairs(40))
    assert_bit_identical(compiled[3], interpreted[3], "dot4_u8s8 as arithmetic")
    assert "vpdpbusd" not in module.assembly  # (LLVM may find vpmaddwd in the arithmetic itself)


def _int8_graphs() -> dict[str, tuple]:
    """matmul_integer (i8 and u8 activations, the dequantizing epilogue) and conv_integer, with inputs."""
    graphs = {}
    for a_dtype in (DType.i8, DType.u8):
        b = GraphBuilder("int8_gemm")
        a = b.input("a", (13, 70), a_dtype)
        weight = b.constant(_RNG.integers(-128, 128, (70, 45)).astype(np.int8), "w")
        scale = b.constant(_RNG.uniform(0.01, 0.1, (45,)).astype(np.float32), "scale")
        graphs[f"gemm {a_dtype}"] = b.build(b.mul(b.cast(b.op("matmul_integer", a, weight), dtype=DType.f32), scale))
    b = GraphBuilder("int8_conv")
    x = b.input("x", (1, 8, 9, 9), DType.u8)
    w = b.constant(_RNG.integers(-128, 128, (12, 8, 3, 3)).astype(np.int8), "w")
    graphs["conv u8"] = b.build(b.op("conv_integer", x, w, pads=(1, 1, 1, 1)))
    cases = {}
    for name, graph in graphs.items():
        inputs = []
        for value in graph.inputs:
            info = np.iinfo(value.type.dtype.numpy)
            inputs.append(_RNG.integers(info.min, int(info.max) + 1, value.type.shape).astype(value.type.dtype.numpy))
        cases[name] = (graph, inputs)
    return cases


_CASES = _int8_graphs()


@pytest.mark.parametrize("form", list(_FORMS))
@pytest.mark.parametrize("case", list(_CASES))
def test_int8_kernels_compiled_for_avx2_equal_the_interpreter(form, case):
    _skip_unless_runs(form)
    graph, inputs = _CASES[case]
    isa, wanted, unwanted = _FORMS[form]
    with limit_isa(isa):
        compiled = compiler.compile(graph, target="cpu", threads=2)
        assert "dot4_u8s8" in "".join(compiled.kernels.values())
        np.testing.assert_array_equal(np.asarray(compiled(*inputs)), run(graph, inputs)[0])
        assembly = compile_module(compiled.program.code["llvm_ir"]).assembly
    assert re.search(rf"{wanted}\s+[^\n]*ymm", assembly), f"no 256-bit {wanted} in the int8 kernel"
    assert not [word for word in unwanted if word in assembly]
