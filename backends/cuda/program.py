"""Building the CUDA program of a fused graph: the GPU twin of `backends.cpu.program`.

Every `fused` node becomes one kernel (`backends.cuda.schedule.schedule_group`: a GPU template, or
the CPU lowering bound to blocks and threads; nodes with the same body share one) and one launch
carrying its grid and block; graph inputs, constants and outputs become program buffers of those
kinds, every other value an intermediate
in the arena, packed by liveness (`runtime.plan_arena`), exactly as on the CPU. The kernels are
printed (`backends.cuda.codegen`) into one CUDA C module, compiled by NVRTC once per
architecture (sm_80 and sm_90 by default: no GPU needed), and `Program.code` carries both:

    code = {"cuda_source": str,                 # the module, which includes "prelude.h"
            "prelude": str,                     # prelude.h itself, for the CPU emulator
            "cubins": {arch: base64 str},       # JSON-safe: the program's header is JSON
            "resources": {arch: {kernel: {registers, shared_bytes, ...}}},   # ptxas -v
            "nvrtc_version": [major, minor],
            "templates": {kernel: the schedule that made it}}

The runtime (`runtime.cuda`) loads the cubin that fits the device and, through
`compile_for_arch` (handed to it by `compiler`), compiles the carried source for a device no
cubin fits.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable, Sequence

from backends.cuda.codegen import emit_kernel
from backends.cuda.nvrtc import (
    PRELUDE,
    CudaCompilationError,
    KernelResources,
    _check,
    _include_folders,
    _log,
    _nvrtc,
    compile_cuda,
)
from backends.cuda.schedule import GpuKernel, schedule_group
from backends.cuda.shared_memory import dynamic_shared_bytes
from ir import Graph, KilnError, Node, Value
from ir.loop import Kernel
from ir.printer import graph_lines
from runtime import BufferSpec, Launch, Program, plan_arena

DEFAULT_ARCHITECTURES = ("sm_80", "sm_90")
"""Ampere (A100) and Hopper (H100): a cubin for sm_80 also runs on sm_86/sm_89 (same major)."""
MODULE_NAME = "kiln_module"


def build_cuda_program(
    graph: Graph, arch: str | Sequence[str] | None = None, allow_tf32: bool = False
) -> tuple[Program, list[Kernel]]:
    """The CUDA program of `graph` (whose nodes are `const` and `fused` only, as after `fuse`),
    compiled by NVRTC for `arch` (one "sm_XX" or several; default sm_80 and sm_90), and its
    scheduled kernels in launch order. `allow_tf32` lets f32 GEMMs and convolutions run on TF32
    tensor cores (their templates, "gemm.tf32" and "conv.tf32", say so in `code["templates"]`)."""
    architectures = DEFAULT_ARCHITECTURES if arch is None else (arch,) if isinstance(arch, str) else tuple(arch)
    if not architectures:
        raise ValueError("build_cuda_program needs at least one architecture, e.g. 'sm_90'")
    kernels: list[Kernel] = []
    templates: dict[str, str] = {}
    by_group: dict[str, GpuKernel] = {}

    def schedule(node: Node, name: str) -> tuple[Kernel, Launch]:
        # Groups with the same body (every layer of a transformer) launch one kernel: scheduled,
        # printed and compiled by NVRTC once (BERT-base's 12 layers: 12 times less of each).
        key = group_key(node)
        scheduled = by_group.get(key)
        if scheduled is None:
            scheduled = by_group[key] = schedule_group(node, name, allow_tf32=allow_tf32)
            kernels.append(scheduled.kernel)
            templates[name] = scheduled.template
        # Static shared memory is in the cubin; a kernel past the static limit asks its launch for
        # all of its shared memory dynamically (the printer places the buffers in it).
        shared = dynamic_shared_bytes(scheduled.kernel)
        launch = Launch(scheduled.kernel.name, (), grid=scheduled.grid, block=scheduled.block, shared_bytes=shared)
        return scheduled.kernel, launch

    program = assemble_program(graph, schedule, target="cuda")
    source = module_source(kernels)
    # The prelude travels with the source: the CUDA emulator (runtime/cuda_emulator.py) compiles both.
    code: dict = {
        "cuda_source": source,
        "prelude": PRELUDE.read_text(),
        "cubins": {},
        "resources": {},
        "templates": templates,
    }
    for name in architectures:
        binary = compile_cuda(source, name, MODULE_NAME)
        code["cubins"][name] = base64.b64encode(binary.cubin).decode("ascii")
        code["resources"][name] = {kernel: dataclasses.asdict(r) for kernel, r in binary.resources.items()}
        code["nvrtc_version"] = list(binary.nvrtc_version)
    return dataclasses.replace(program, code=code), kernels


def group_key(node: Node) -> str:
    """What a `fused` node's kernel is made from: its body's text without the body's name and
    with its values numbered in order (their names, which follow the weights they read, only
    name the kernel's parameters; the kernel's own name changes nothing else in it)."""
    first, *rest = graph_lines(node.attrs["body"])
    text = "\n".join([first.split("(", 1)[1], *rest])
    numbers: dict[str, str] = {}
    return re.sub(r"%[\w.]+", lambda m: numbers.setdefault(m.group(0), f"%{len(numbers)}"), text)


def assemble_program(graph: Graph, schedule: Callable[[Node, str], tuple[Kernel, Launch]], target: str) -> Program:
    """A program without code: one launch per fused node, made by `schedule(node, name)` (a
    kernel and its launch, whose buffer arguments are filled in here), buffers by kind, the
    arena planned by liveness. Target-neutral: the CPU's `build_program` could share it."""
    stray = sorted({node.op for node in graph.nodes if node.op not in ("const", "fused")})
    if stray:
        raise KilnError(f"the {target} target runs fused graphs; @{graph.name} still has {', '.join(stray)} (run fuse)")
    index: dict[Value, int] = {}
    buffers: list[BufferSpec] = []
    constants = {}

    def add(value: Value, name: str, kind: str) -> int:
        index[value] = len(buffers)
        buffers.append(BufferSpec(name, value.type.dtype.numpy.name, value.type.shape, kind))
        return index[value]

    for value in graph.inputs:
        add(value, value.name, "input")
    outputs = set(graph.outputs)
    launches: list[Launch] = []
    for node in graph.nodes:
        if node.op == "const":
            name = node.attrs["name"]
            constants[add(node.outputs[0], name, "constant")] = graph.constants[name]
            continue
        name = f"k{len(launches)}_{node.attrs['body'].name}"
        kernel, launch = schedule(node, name)  # (a kernel of another name where two groups share one)
        for position, value in enumerate(node.outputs):
            add(value, f"{name}_out{position}", "output" if value in outputs else "intermediate")
        # The kernel's parameters are the group's inputs then its outputs (lower_group's order).
        args = tuple(index[v] for v in (*node.inputs, *node.outputs))
        writes = tuple(args[p] for p in kernel.outputs) if kernel.outputs else None
        launches.append(dataclasses.replace(launch, args=args, writes=writes))
    output_ids = tuple(index[v] for v in graph.outputs)
    planned, arena = plan_arena(buffers, launches, output_ids)
    return Program(
        name=graph.name,
        buffers=planned,
        inputs=tuple(index[v] for v in graph.inputs),
        outputs=output_ids,
        constants=constants,
        launches=tuple(launches),
        arena_bytes=arena,
        target=target,
    )


def module_source(kernels: Sequence[Kernel]) -> str:
    """One CUDA C translation unit holding every kernel (the prelude is `#pragma once`)."""
    return f"// Kiln CUDA module: {len(kernels)} kernel(s)\n\n" + "\n".join(emit_kernel(k) for k in kernels)


def cubin(program: Program, arch: str) -> bytes | None:
    """The cubin `program` carries for `arch`, or None."""
    encoded = program.code.get("cubins", {}).get(arch)
    return None if encoded is None else base64.b64decode(encoded)


def resources(program: Program, arch: str) -> dict[str, KernelResources]:
    """The ptxas report of `program`'s kernels for `arch`, by kernel name."""
    return {name: KernelResources(**fields) for name, fields in program.code.get("resources", {}).get(arch, {}).items()}


def compile_for_arch(source: str, arch: str) -> bytes:
    """A cubin of a program's carried source for `arch`: the runtime's fallback for a device
    that none of the program's cubins fits (`runtime.cuda.CudaExecutor(compile_source=...)`)."""
    return compile_cuda(source, arch, MODULE_NAME).cubin


def ptx(source: str, arch: str = "sm_90") -> str:
    """The PTX NVRTC generates for `source` on `arch` (for `irdump --emit ptx`). It compiles with
    the same options as `compile_cuda`, whose cubin is this PTX through ptxas."""
    # TODO(nvrtc.py): CudaBinary could carry the PTX of the compile it already does.
    nvrtc = _nvrtc()
    options = [f"--gpu-architecture={arch}", "-std=c++17", "--fmad=false"]
    options += [f"--include-path={folder}" for folder in (str(PRELUDE.parent), *_include_folders())]
    created = nvrtc.nvrtcCreateProgram(source.encode(), f"{MODULE_NAME}.cu".encode(), 0, [], [])
    program = _check(nvrtc, created, "create")[0]
    try:
        encoded = [option.encode() for option in options]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaCompilationError(f"NVRTC could not compile {MODULE_NAME} for {arch}:\n{_log(nvrtc, program)}")
        (size,) = _check(nvrtc, nvrtc.nvrtcGetPTXSize(program), "PTX size")
        text = b"\0" * size
        _check(nvrtc, nvrtc.nvrtcGetPTX(program, text), "PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return text.rstrip(b"\0").decode()
