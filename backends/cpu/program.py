"""Building the CPU program of a fused graph.

Every `fused` node becomes one kernel (`backends.lowering.group.lower_group`), split into one
kernel per top-level loop nest where it holds several (`backends.cpu.split`), and one launch per
kernel; graph inputs, constants and outputs become program buffers of those kinds, and every other
value, and every local buffer that crosses between the pieces of a split kernel, an intermediate
in the arena, packed by liveness (`runtime.plan_arena`). Each launch is parallel when its kernel
is one parallel loop with enough work to pay for a barrier (`backends.cpu.cost`), and records the
buffers it writes, from which the executor places barriers. The kernels are printed into one LLVM
module (`backends.llvm.codegen.emit_module`), which the runtime compiles for the host when the
program is loaded.
"""

from __future__ import annotations

from backends.cpu.cost import worth_parallel
from backends.cpu.split import split_kernel
from backends.llvm.codegen import emit_module
from backends.lowering.group import lower_group
from ir import Graph, KilnError, Value
from ir.loop import Buffer, Kernel
from runtime import BufferSpec, Launch, Program, host_target, plan_arena


def build_program(graph: Graph) -> tuple[Program, list[Kernel]]:
    """The program of `graph` (whose nodes are `const` and `fused` only, as after `fuse`),
    and the kernels it launches, in launch order."""
    stray = sorted({node.op for node in graph.nodes if node.op not in ("const", "fused")})
    if stray:
        raise KilnError(f"the CPU target runs fused graphs; @{graph.name} still has {', '.join(stray)} (run fuse)")
    index: dict[Value, int] = {}
    buffers: list[BufferSpec] = []
    constants = {}

    def add(name: str, dtype: str, shape: tuple[int, ...], kind: str) -> int:
        buffers.append(BufferSpec(name, dtype, shape, kind))
        return len(buffers) - 1

    def add_value(value: Value, name: str, kind: str) -> int:
        index[value] = add(name, value.type.dtype.numpy.name, value.type.shape, kind)
        return index[value]

    for value in graph.inputs:
        add_value(value, value.name, "input")
    outputs = set(graph.outputs)
    kernels: list[Kernel] = []
    launches: list[Launch] = []
    groups = 0
    for node in graph.nodes:
        if node.op == "const":
            name = node.attrs["name"]
            constants[add_value(node.outputs[0], name, "constant")] = graph.constants[name]
            continue
        kernel = lower_group(node, f"k{groups}_{node.attrs['body'].name}")
        groups += 1
        for position, value in enumerate(node.outputs):
            add_value(value, f"{kernel.name}_out{position}", "output" if value in outputs else "intermediate")
        where: dict[Buffer, int] = dict(
            zip(kernel.params, (index[v] for v in (*node.inputs, *node.outputs)), strict=True)
        )
        pieces, crossing = split_kernel(kernel)
        for buffer in crossing:
            where[buffer] = add(f"{kernel.name}_{buffer.name}", buffer.dtype.numpy.name, buffer.shape, "intermediate")
        for piece in pieces:
            args = tuple(where[buffer] for buffer in piece.params)
            writes = tuple(args[p] for p in piece.outputs)
            launches.append(Launch(piece.name, args, parallel=worth_parallel(piece), writes=writes))
            kernels.append(piece)
    output_ids = tuple(index[v] for v in graph.outputs)
    planned, arena = plan_arena(buffers, launches, output_ids)
    program = Program(
        name=graph.name,
        buffers=planned,
        inputs=tuple(index[v] for v in graph.inputs),
        outputs=output_ids,
        constants=constants,
        launches=tuple(launches),
        arena_bytes=arena,
        code={"llvm_ir": emit_module(kernels, graph.name), **host_target()},
        target="cpu",
    )
    return program, kernels
