"""LLVM IR text to machine code for this CPU: parse, optimise at O3 for the host's CPU name and
features (AVX-512 where the CPU has it), and JIT-compile with llvmlite's MCJIT.

`compile_module` returns a `CompiledModule` holding the engine (the machine code lives as long
as that object), the address of every kernel by name for the runtime to call, and, for
`irdump --emit llvm|asm`, the optimised LLVM IR and the assembly.

Calls that the code makes outside itself (libm's tanhf/erf/..., memset/memcpy that LLVM's loop
idioms produce, malloc/free for large locals, libgcc's half-precision helpers on CPUs without
F16C) are resolved from the C libraries of this process, loaded once for the JIT.
"""

from __future__ import annotations

import ctypes.util
import functools
from dataclasses import dataclass, field

import llvmlite.binding as llvm

from backends.llvm.codegen import CodegenError

_RUNTIME_LIBRARIES = ("m", "c", "gcc_s")


@dataclass(frozen=True)
class HostCPU:
    triple: str
    name: str
    features: str


@functools.cache
def host_cpu() -> HostCPU:
    """The host's target triple, CPU name (e.g. znver4) and features; prepares LLVM's native
    target and the libraries that JIT-compiled code calls into."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for library in _RUNTIME_LIBRARIES:
        path = ctypes.util.find_library(library)
        if path:
            llvm.load_library_permanently(path)
    return HostCPU(llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())


def _target_machine() -> llvm.TargetMachine:
    cpu = host_cpu()
    target = llvm.Target.from_triple(cpu.triple)
    return target.create_target_machine(cpu=cpu.name, features=cpu.features, opt=3, codemodel="jitdefault", jit=True)


@dataclass(eq=False)
class CompiledModule:
    """Machine code for a module of kernels, alive as long as this object is."""

    llvm_ir: str
    """The module as generated (with the kernels' comments)."""
    optimized_ir: str
    """The module after the O3 pipeline."""
    addresses: dict[str, int]
    _engine: llvm.ExecutionEngine = field(repr=False)

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
        module = llvm.parse_assembly(self.optimized_ir)
        return _target_machine().emit_assembly(module)


def compile_module(llvm_ir: str) -> CompiledModule:
    """Optimise `llvm_ir` at O3 for the host CPU and compile it to machine code."""
    cpu = host_cpu()
    try:
        module = llvm.parse_assembly(llvm_ir)
        module.verify()
    except RuntimeError as error:  # our generator wrote invalid IR: a bug, reported with its cause
        raise CodegenError(f"LLVM rejected the generated module: {error}") from error
    machine = _target_machine()
    module.triple = cpu.triple
    module.data_layout = str(machine.target_data)
    _optimize(module, machine)
    optimized_ir = str(module)
    _check_external_symbols(module)
    kernels = [f.name for f in module.functions if not f.is_declaration]
    engine = llvm.create_mcjit_compiler(module, _target_machine())  # the engine takes the module
    engine.finalize_object()
    addresses = {name: engine.get_function_address(name) for name in kernels}
    return CompiledModule(llvm_ir, optimized_ir, addresses, engine)


def _optimize(module: llvm.ModuleRef, machine: llvm.TargetMachine) -> None:
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    options.loop_unrolling = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)


def _check_external_symbols(module: llvm.ModuleRef) -> None:
    """MCJIT aborts the process on a symbol it cannot resolve; find them first and raise."""
    missing = [
        f.name
        for f in module.functions
        if f.is_declaration and not f.name.startswith("llvm.") and llvm.address_of_symbol(f.name) is None
    ]
    if missing:
        raise CodegenError(f"the generated code calls {', '.join(missing)}, which no loaded library provides")
