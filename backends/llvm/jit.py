"""LLVM IR text to machine code for this CPU, for tests and for `irdump --emit llvm|asm`.

The runtime owns the one path from LLVM IR to machine code (`runtime.cpu.optimize_llvm_ir` and
`jit`: O3 for the host's CPU name and features, the C libraries that generated code calls into
loaded, unresolved symbols refused), because a saved program must compile with the runtime
alone; this module wraps it. `compile_module` returns a `CompiledModule` holding the engine
(the machine code lives as long as that object), the address of every kernel by name, the
optimised LLVM IR and, on first use, the assembly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from backends.llvm.codegen import CodegenError
from runtime.cpu import host_target, host_target_machine, jit, optimize_llvm_ir
from runtime.errors import CodeCompilationError


@dataclass(frozen=True)
class HostCPU:
    triple: str
    name: str
    features: str


@functools.cache
def host_cpu() -> HostCPU:
    """The host's target triple, CPU name (e.g. znver4) and features."""
    host = host_target()
    return HostCPU(host["triple"], host["cpu"], host["features"])


@dataclass(eq=False)
class CompiledModule:
    """Machine code for a module of kernels, alive as long as this object is."""

    llvm_ir: str
    """The module as generated (with the kernels' comments)."""
    optimized_ir: str
    """The module after the O3 pipeline."""
    addresses: dict[str, int]
    _engine: Any = field(repr=False)

    def address(self, name: str) -> int:
        """The entry point of kernel `name`: `void name(void **args, int64_t worker, int64_t workers)`."""
        try:
            return self.addresses[name]
        except KeyError:
            raise KeyError(f"no kernel {name!r} in this module (it has {', '.join(sorted(self.addresses))})") from None

    @functools.cached_property
    def assembly(self) -> str:
        """The machine code as assembly text (compiled again from `optimized_ir` on first use, so
        a program that never prints it does not pay for it)."""
        import llvmlite.binding as llvm

        return host_target_machine().emit_assembly(llvm.parse_assembly(self.optimized_ir))


def compile_module(llvm_ir: str) -> CompiledModule:
    """Optimise `llvm_ir` at O3 for the host CPU and compile it to machine code."""
    try:
        module = optimize_llvm_ir(llvm_ir, skip_if_cached=False)
        optimized_ir = str(module)
        kernels = [f.name for f in module.functions if not f.is_declaration]
        engine = jit(module)
    except CodeCompilationError as error:  # our generator wrote code LLVM rejects: a bug, with its cause
        raise CodegenError(f"LLVM rejected the generated module: {error}") from error
    addresses = {name: engine.get_function_address(name) for name in kernels}
    return CompiledModule(llvm_ir, optimized_ir, addresses, engine)
