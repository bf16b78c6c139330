"""The JIT: LLVM IR text to callable machine code for this CPU, and its errors."""

import ctypes

import pytest

from backends.llvm import CodegenError, compile_module, host_cpu

SQUARE = """
define double @square_erf(double %x) {
  %y = fmul double %x, %x
  %z = call double @erf(double %y)
  ret double %z
}
declare double @erf(double)
"""


def test_compiles_for_the_host_cpu_and_resolves_libm():
    cpu = host_cpu()
    assert cpu.name and cpu.name != "generic" and cpu.triple.startswith(("x86_64", "aarch64"))
    module = compile_module(SQUARE)
    function = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)(module.address("square_erf"))
    assert function(0.5) == pytest.approx(0.2763263901682369, rel=1e-15)  # erf(0.25)
    assert "square_erf" in module.optimized_ir and module.llvm_ir == SQUARE
    assert "square_erf:" in module.assembly


def test_invalid_ir_is_a_codegen_error():
    with pytest.raises(CodegenError, match="LLVM rejected the generated module"):
        compile_module("define void @f() { ret i32 0 }")


def test_an_unresolvable_call_is_an_error_not_an_abort():
    text = """
declare void @kiln_no_such_function()
define void @g() {
  call void @kiln_no_such_function()
  ret void
}
"""
    with pytest.raises(CodegenError, match="calls kiln_no_such_function, which no loaded library provides"):
        compile_module(text)
