"""Building the CPU program of a fused graph.

Every `fused` node becomes one kernel (`backends.lowering.group.lower_group`) and one launch;
graph inputs, constants and outputs become program buffers of those kinds, and every other
value an intermediate in the arena, packed by liveness (`runtime.plan_arena`). The kernels are
printed into one LLVM module (`backends.llvm.codegen.emit_module`), which the runtime compiles
for the host when the program is loaded.
"""

from __future__ import annotations

from backends.llvm.codegen import emit_module
from backends.lowering.group import lower_group
from ir import Graph, KilnError, Value
from ir.loop import For, Kernel, LoopKind
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

    def add(value: Value, name: str, kind: str) -> int:
        index[value] = len(buffers)
        buffers.append(BufferSpec(name, value.type.dtype.numpy.name, value.type.shape, kind))
        return index[value]

    for value in graph.inputs:
        add(value, value.name, "input")
    outputs = set(graph.outputs)
    kernels: list[Kernel] = []
    launches: list[Launch] = []
    for node in graph.nodes:
        if node.op == "const":
            name = node.attrs["name"]
            constants[add(node.outputs[0], name, "constant")] = graph.constants[name]
            continue
        kernel = lower_group(node, f"k{len(kernels)}_{node.attrs['body'].name}")
        for position, value in enumerate(node.outputs):
            add(value, f"{kernel.name}_out{position}", "output" if value in outputs else "intermediate")
        kernels.append(kernel)
        args = tuple(index[v] for v in (*node.inputs, *node.outputs))
        launches.append(Launch(kernel.name, args, parallel=_is_parallel(kernel)))
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


def _is_parallel(kernel: Kernel) -> bool:
    """Whether more than one worker has work: the body is one parallel loop (the ABI's rule)."""
    body = kernel.body
    return len(body) == 1 and isinstance(body[0], For) and body[0].kind is LoopKind.PARALLEL
