"""`build_cuda_program`: a fused graph becomes a CUDA program (launches with their grid and block,
buffers by kind, the arena planned by liveness) whose code holds the module's CUDA C and a cubin
per architecture with ptxas's report; checked without a GPU, by NVRTC and the kernel-IR
interpreter."""

from __future__ import annotations

import base64

import numpy as np
import pytest

import ir
from backends.cuda import launch_dims
from backends.cuda.program import build_cuda_program, compile_for_arch, cubin, module_source, ptx, resources
from ir import DType, GraphBuilder, KilnError
from ir.loop import LoopKind
from passes import PassManager, parse_pipeline
from tests.backends.cuda.kernels import requires_nvrtc, run_program_in_lockstep


def _fused(graph: ir.Graph) -> ir.Graph:
    return PassManager(parse_pipeline("fuse")).run(graph)


def _norm_graph() -> ir.Graph:
    """A row softmax feeding a residual add and a column reduction: two kernels, one intermediate."""
    b = GraphBuilder("norm")
    x = b.input("x", (8, 40), DType.f32)
    bias = b.constant(np.linspace(0, 1, 40, dtype=np.float32), "bias")
    h = b.softmax(b.add(x, bias), axis=-1)
    y = b.softmax(b.mul(h, x), axis=0)
    return _fused(b.build(b.add(y, h)))


@requires_nvrtc
def test_one_launch_per_kernel_with_its_grid_block_and_buffers():
    graph = _norm_graph()
    program, kernels = build_cuda_program(graph)
    fused = [node for node in graph.nodes if node.op == "fused"]
    assert program.target == "cuda" and len(program.launches) == len(kernels) == len(fused)
    for launch, kernel, node in zip(program.launches, kernels, fused, strict=True):
        assert launch.kernel == kernel.name
        assert (launch.grid, launch.block) == launch_dims(kernel)
        assert len(launch.args) == len(kernel.params) == len(node.inputs) + len(node.outputs)
        for index, buffer in zip(launch.args, kernel.params, strict=True):
            spec = program.buffers[index]
            assert spec.shape == buffer.shape or np.prod(spec.shape) == buffer.size
            assert spec.dtype == buffer.dtype.numpy.name
        assert not any(loop.kind is LoopKind.PARALLEL for loop in _loops(kernel.body))  # every loop is scheduled
    kinds = [spec.kind for spec in program.buffers]
    assert kinds.count("input") == 1 and kinds.count("constant") == 1 and kinds.count("intermediate") >= 1
    assert program.arena_bytes >= max(s.nbytes for s in program.buffers if s.kind == "intermediate")


@requires_nvrtc
def test_the_code_holds_the_module_source_and_a_cubin_and_report_per_architecture():
    program, kernels = build_cuda_program(_norm_graph())
    code = program.code
    assert code["cuda_source"] == module_source(kernels)
    assert code["cuda_source"].count("__global__") == len(kernels)
    assert all(f" {k.name}(" in code["cuda_source"] for k in kernels)
    assert sorted(code["cubins"]) == ["sm_80", "sm_90"] and code["nvrtc_version"][0] >= 12
    for arch in ("sm_80", "sm_90"):
        image = cubin(program, arch)
        assert image[:4] == b"\x7fELF" and base64.b64encode(image).decode() == code["cubins"][arch]
        report = resources(program, arch)
        assert sorted(report) == sorted(k.name for k in kernels)
        assert all(r.registers > 0 and r.spill_stores == r.spill_loads == 0 for r in report.values())
    assert cubin(program, "sm_75") is None


@requires_nvrtc
def test_one_architecture_may_be_asked_for_and_the_carried_source_compiles_for_another():
    program, _ = build_cuda_program(_norm_graph(), arch="sm_90")
    assert list(program.code["cubins"]) == ["sm_90"]
    assert compile_for_arch(program.code["cuda_source"], "sm_86")[:4] == b"\x7fELF"
    with pytest.raises(ValueError, match="at least one architecture"):
        build_cuda_program(_norm_graph(), arch=[])


@requires_nvrtc
def test_the_scheduled_kernels_run_in_launch_order_match_the_interpreter():
    """The program's launch table, run by the lockstep kernel-IR interpreter (a block's threads
    together) over numpy buffers laid out as the program says (intermediates in one arena at
    their planned offsets): the same outputs as the graph, so the memory plan and the argument
    order are right."""
    graph = _norm_graph()
    program, kernels = build_cuda_program(graph, arch="sm_90")
    x = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    (got,) = run_program_in_lockstep(program, kernels, [x])
    (want,) = ir.run(graph, [x])
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


@requires_nvrtc
def test_ptx_is_the_modules_text_for_the_architecture():
    program, kernels = build_cuda_program(_norm_graph(), arch="sm_80")
    text = ptx(program.code["cuda_source"], "sm_80")
    assert ".target sm_80" in text
    assert all(f".entry {k.name}(" in text for k in kernels)


def test_an_unfused_graph_is_refused():
    b = GraphBuilder("raw")
    x = b.input("x", (2,), DType.f32)
    with pytest.raises(KilnError, match=r"the cuda target runs fused graphs.*relu.*run fuse"):
        build_cuda_program(b.build(b.relu(x)))


def _loops(body):
    from ir.loop import For, If

    for stmt in body:
        if isinstance(stmt, For):
            yield stmt
            yield from _loops(stmt.body)
        elif isinstance(stmt, If):
            yield from _loops(stmt.then)
            yield from _loops(stmt.otherwise)
