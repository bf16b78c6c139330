"""The CPU target: a fused graph -> kernels (backends.lowering) -> LLVM IR (backends.llvm) ->
a `runtime.Program` that `runtime.CpuExecutor` runs."""

from backends.cpu.program import build_program

__all__ = ["build_program"]
