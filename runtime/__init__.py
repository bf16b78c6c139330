"""What runs a compiled program. Knows nothing of the graph IR, so a saved program runs with
only this package and its own dependencies installed.

- `program`: `Program` (buffers, launches, constants, code) and its one-file save format;
- `memory`: the memory plan, intermediates packed into one arena by liveness;
- `cpu`: `CpuExecutor`, which JIT-compiles a program's LLVM IR and runs it on a thread pool;
- `cuda`: `CudaExecutor`, which loads a program's cubins and launches them through pycuda;
- `errors`: what the runtime raises on purpose.

llvmlite is imported when a CPU program is first compiled, pycuda when a CUDA executor is
first made, not here.
"""

from __future__ import annotations

import os

from runtime.cpu import CpuExecutor, host_target
from runtime.cuda import CudaDriverError, CudaExecutor, CudaUnavailableError
from runtime.errors import (
    CodeCompilationError,
    InputMismatchError,
    ProgramError,
    ProgramFormatError,
    ProgramRuntimeError,
)
from runtime.memory import lifetimes_from_launches, plan_arena, plan_memory
from runtime.program import BufferSpec, Launch, Program, load


def load_executor(path: str | os.PathLike, threads: int | None = None) -> CpuExecutor | CudaExecutor:
    """Load a saved program, ready to `run`: a CPU program compiled for this machine, or a CUDA
    program loaded onto device 0 (its cubin for this GPU; `compiler.load` also compiles its
    source for a GPU that no cubin fits)."""
    program = load(path)
    return CudaExecutor(program) if program.target == "cuda" else CpuExecutor(program, threads=threads)


__all__ = [
    "BufferSpec",
    "CodeCompilationError",
    "CpuExecutor",
    "CudaDriverError",
    "CudaExecutor",
    "CudaUnavailableError",
    "InputMismatchError",
    "Launch",
    "Program",
    "ProgramError",
    "ProgramFormatError",
    "ProgramRuntimeError",
    "host_target",
    "lifetimes_from_launches",
    "load",
    "load_executor",
    "plan_arena",
    "plan_memory",
]
