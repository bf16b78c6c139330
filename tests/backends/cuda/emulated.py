"""What the emulator tests share: CUDA programs built straight from fused graphs (no NVRTC, whose
own tests compile every kernel), several graphs in one program so that one g++ build serves them
all (g++ costs about a second per module before the first kernel: the prelude and the C++ headers),
run in the emulator (runtime/cuda_emulator.py) through the real `CudaExecutor`.

`emulation_program(graphs)` schedules each graph's `fused` nodes (by `schedule_group`, or a
template the caller forces, e.g. small GEMM tiles so that small shapes have edge tiles), names
graph j's kernels `gj_kI_...` and concatenates the graphs' buffers, inputs, outputs and launches
into one program (intermediates planned again in one arena); `run_emulated` runs it and hands
back each graph's outputs; `mutated` swaps in a broken source. `gemm_graph` and
`small_gemm_tiles` make GEMM cases with edge tiles at small shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from backends.cuda import GpuKernel, schedule_group
from backends.cuda.nvrtc import PRELUDE
from backends.cuda.program import assemble_program, module_source
from backends.cuda.templates_gpu_gemm import FmaTiles, MmaTiles, gemm_template
from ir import DType, Graph, GraphBuilder, Node
from ir.loop.lockstep import launch_dims
from runtime import Launch, Program, plan_arena
from runtime.cuda import CudaExecutor
from runtime.cuda_emulator import EmulatorDriver
from tests.backends.attention_cases import attention_inputs

Schedule = Callable[[Node, str], GpuKernel]
"""How a `fused` node becomes a GPU kernel of the given name (`schedule_group`'s signature)."""


SMALL_TILES = {"fma_tiles": FmaTiles(32, 16, 8, 2, 2), "mma_tiles": MmaTiles(32, 16, 16, 2, 2)}
"""Tiles small enough that 40 x 24 x 20 has edge tiles in M, N and K, and two K stages."""


def small_gemm_tiles(node: Node, name: str) -> GpuKernel:
    """`schedule_group`, with `SMALL_TILES` for the GEMM templates."""
    templated = gemm_template(node, name, **SMALL_TILES)
    if templated is None:
        return schedule_group(node, name)
    kernel, template = templated
    return GpuKernel(kernel, *launch_dims(kernel), template)


def gemm_graph(m: int, n: int, k: int, dtype: DType, epilogue: bool = False) -> Graph:
    """x [m, k] @ w [k, n]; with `epilogue`, gemm with w transposed, a bias, tanh-gelu and a residual."""
    builder = GraphBuilder(f"gemm_{m}x{n}x{k}_{dtype}")
    x = builder.input("x", (m, k), dtype)
    if not epilogue:
        return builder.build(builder.matmul(x, builder.input("w", (k, n), dtype)))
    w, bias = builder.input("w", (n, k), dtype), builder.input("bias", (n,), dtype)
    y = builder.gelu(builder.gemm(x, w, bias, trans_b=True, alpha=0.5), approximate="tanh")
    return builder.build(builder.add(y, builder.input("residual", (m, n), dtype)))


def graph_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Inputs for a GEMM graph (uniform in [-2, 2]) or an attention case (its own maker's masks)."""
    if "q" in [value.name for value in graph.inputs]:
        return attention_inputs(graph, seed)
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, v.type.shape).astype(v.type.dtype.numpy) for v in graph.inputs]


def emulation_program(graphs: Sequence[Graph], schedule: Schedule = schedule_group, name: str = "emulated") -> Program:
    """One CUDA program running every graph of `graphs` (each of `const` and `fused` nodes only,
    as after `fuse`) one after another; its inputs and outputs are the graphs' in order."""
    kernels, templates, parts = [], {}, []
    for j, graph in enumerate(graphs):

        def launch(node: Node, kernel_name: str, prefix: str = f"g{j}_") -> tuple:
            scheduled = schedule(node, prefix + kernel_name)
            kernels.append(scheduled.kernel)
            templates[scheduled.kernel.name] = scheduled.template
            return scheduled.kernel, Launch(scheduled.kernel.name, (), grid=scheduled.grid, block=scheduled.block)

        parts.append(assemble_program(graph, launch, target="cuda"))
    buffers, inputs, outputs, constants, launches = [], [], [], {}, []
    for part in parts:
        base = len(buffers)
        buffers += [dataclasses.replace(spec, offset=None) for spec in part.buffers]
        inputs += [base + i for i in part.inputs]
        outputs += [base + i for i in part.outputs]
        constants.update({base + i: array for i, array in part.constants.items()})
        for launch in part.launches:
            writes = None if launch.writes is None else tuple(base + i for i in launch.writes)
            launches.append(dataclasses.replace(launch, args=tuple(base + i for i in launch.args), writes=writes))
    planned, arena = plan_arena(buffers, launches, outputs)
    # The emulator ignores the cubin; the executor only picks one by architecture.
    code = {"cuda_source": module_source(kernels), "prelude": PRELUDE.read_text(), "cubins": {"sm_80": ""},
            "templates": templates}  # fmt: skip
    return Program(name, planned, tuple(inputs), tuple(outputs), constants, tuple(launches), arena, code, "cuda")


def run_emulated(
    program: Program, graphs: Sequence[Graph], inputs: Sequence[Sequence[np.ndarray]], mode: str = "plain",
    timeout: float = 20.0,
) -> list[list[np.ndarray]]:  # fmt: skip
    """Each graph's outputs, from one run of `program` (`emulation_program(graphs)`) in the
    emulator in `mode` on each graph's `inputs`."""
    flat = [np.asarray(array) for arrays in inputs for array in arrays]
    got = CudaExecutor(program, driver=EmulatorDriver(program, mode, timeout)).run(flat)
    results, start = [], 0
    for graph in graphs:
        results.append(got[start : start + len(graph.outputs)])
        start += len(graph.outputs)
    assert start == len(got)
    return results


def mutated(program: Program, edit: Callable[[str], str]) -> Program:
    """`program` with its CUDA C changed by `edit`, which must change it."""
    source = program.code["cuda_source"]
    changed = edit(source)
    assert changed != source, "the mutation changed nothing"
    return dataclasses.replace(program, code={**program.code, "cuda_source": changed})
