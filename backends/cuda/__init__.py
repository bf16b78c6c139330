"""The CUDA backend: a lowered kernel (`backends.lowering`) is scheduled for the GPU
(`schedule`: loops bound to blocks and threads, still kernel IR), printed as CUDA C
(`codegen`, with the helpers of `prelude.h`), and compiled to a cubin by NVRTC (`nvrtc`), which
needs no GPU. Loading and launching belong to the runtime (`runtime/cuda.py`, to come).
"""

from backends.cuda.codegen import CudaCodegenError, KernelPrinter, emit_kernel
from backends.cuda.nvrtc import (
    CudaBinary,
    CudaCompilationError,
    KernelResources,
    NvrtcMissingError,
    compile_cuda,
    missing_nvrtc,
    parse_resources,
)
from backends.cuda.schedule import gpu_schedule, launch_dims

__all__ = [
    "CudaBinary",
    "CudaCodegenError",
    "CudaCompilationError",
    "KernelPrinter",
    "KernelResources",
    "NvrtcMissingError",
    "compile_cuda",
    "emit_kernel",
    "gpu_schedule",
    "launch_dims",
    "missing_nvrtc",
    "parse_resources",
]
