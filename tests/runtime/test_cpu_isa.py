"""The ISA code is generated for (`runtime.cpu.limit_isa`, KILN_CPU_ISA): a program generated for an
AVX-512 host that calls its intrinsics is refused, with an error that says what to do, where the
host (here: the same host limited to AVX2) lacks them, instead of LLVM aborting the process; a
program generated for AVX2 runs on the full host."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cpu import build_program
from ir import GraphBuilder
from passes import make_pass
from runtime import CpuExecutor
from runtime.cpu import host_target, limit_isa
from runtime.errors import CodeCompilationError

pytestmark = pytest.mark.skipif(
    "+avx512f" not in host_target()["features"].split(","), reason="the host has no AVX-512 to limit"
)


def _softmax_program():
    builder = GraphBuilder("softmax")
    x = builder.input("x", (4, 64))
    program, _ = build_program(make_pass("fuse").run(builder.build(builder.softmax(x, axis=-1))))
    return program


def test_avx512_code_is_refused_where_avx512_is_missing():
    program = _softmax_program()  # its exp scales with vscalefps
    assert "llvm.x86.avx512" in program.code["llvm_ir"]
    with limit_isa("avx2"), pytest.raises(CodeCompilationError, match="KILN_CPU_ISA=avx2"):
        CpuExecutor(program, threads=1)


def test_avx2_code_runs_on_the_full_host():
    with limit_isa("avx2"):
        program = _softmax_program()
    assert "llvm.x86" not in program.code["llvm_ir"] and "+avx512f" not in program.code["features"]
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    (y,) = CpuExecutor(program, threads=1).run([x])
    expected = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
