"""The CPU backend's code generation: kernel IR to LLVM IR text (`codegen`) and LLVM IR to machine
code for the host CPU (`jit`), through llvmlite."""

from backends.llvm.codegen import STACK_LIMIT, CodegenError, emit_module
from backends.llvm.jit import CompiledModule, HostCPU, compile_module, host_cpu

__all__ = ["STACK_LIMIT", "CodegenError", "CompiledModule", "HostCPU", "compile_module", "emit_module", "host_cpu"]
