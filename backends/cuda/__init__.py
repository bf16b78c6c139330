"""The CUDA backend: a fused group is scheduled for the GPU (`schedule.schedule_group`: a GPU
template of `templates_gpu` where one fits, else the lowered kernel's loops bound to blocks and
threads; kernel IR either way), printed as CUDA C
(`codegen`, with the helpers of `prelude.h`), and compiled to a cubin by NVRTC (`nvrtc`), which
needs no GPU; `program` builds a whole graph's `runtime.Program` (launches with grid and block,
the module's source and a cubin per architecture). Loading and launching belong to the runtime
(`runtime/cuda.py`).
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
from backends.cuda.program import build_cuda_program
from backends.cuda.schedule import GpuKernel, gpu_schedule, launch_dims, schedule_group

__all__ = [
    "build_cuda_program",
    "CudaBinary",
    "CudaCodegenError",
    "CudaCompilationError",
    "GpuKernel",
    "KernelPrinter",
    "KernelResources",
    "NvrtcMissingError",
    "compile_cuda",
    "emit_kernel",
    "gpu_schedule",
    "launch_dims",
    "missing_nvrtc",
    "parse_resources",
    "schedule_group",
]
