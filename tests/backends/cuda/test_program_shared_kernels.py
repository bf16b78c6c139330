"""`build_cuda_program` schedules, prints and compiles one kernel for groups with the same body
(the layers of a transformer): their launches name it, each with its own buffers, and the
program still computes the graph (run launch by launch in the lockstep interpreter)."""

from __future__ import annotations

import numpy as np

import ir
from backends.cuda.program import build_cuda_program
from ir import DType, GraphBuilder
from passes import PassManager, parse_pipeline
from tests.backends.cuda.kernels import requires_nvrtc, run_program_in_lockstep


def _layers(count: int) -> ir.Graph:
    """`count` identical layers (matmul, bias, relu; then a softmax), each with its own weights."""
    b = GraphBuilder("layers")
    x = b.input("x", (6, 16), DType.f32)
    rng = np.random.default_rng(0)
    for layer in range(count):
        w = b.constant(rng.standard_normal((16, 16)).astype(np.float32), f"w{layer}")
        bias = b.constant(rng.standard_normal(16).astype(np.float32), f"b{layer}")
        x = b.softmax(b.relu(b.add(b.matmul(x, w), bias)), axis=-1)
    return PassManager(parse_pipeline("fuse")).run(b.build(x))


@requires_nvrtc
def test_groups_with_the_same_body_share_one_kernel():
    graph = _layers(3)
    program, kernels = build_cuda_program(graph, arch="sm_90")
    assert len(program.launches) == 6 and len(kernels) == 2
    assert [launch.kernel for launch in program.launches] == [kernels[0].name, kernels[1].name] * 3
    assert program.code["cuda_source"].count("__global__") == 2
    names = [spec.name for spec in program.buffers]
    assert len(names) == len(set(names)), "every group's outputs keep buffers of their own"
    assert len({launch.args for launch in program.launches}) == 6

    x = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    (got,) = run_program_in_lockstep(program, kernels, [x])
    (want,) = ir.run(graph, [x])
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)
