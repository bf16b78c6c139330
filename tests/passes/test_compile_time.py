"""What keeps compile time down on large example inputs (BERT-base, batch 8, sequence 512): an
attention in-projection's weight is not expanded over the sequence, `lower_precision` in a
pipeline runs the graph once on the examples (its range check), not three times, and the range
check's max |v| makes no wide copies."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder
from passes import lower_precision as lower_precision_module
from passes import make_pass
from passes.lower_precision import LowerPrecision
from passes.range_analysis import max_abs


def _in_projection(expanded_shape: tuple[int, ...]) -> ir.Graph:
    """torch's packed in-projection: x [S, B, K] @ expand(transpose(w)) to `expanded_shape`."""
    b = GraphBuilder("in_projection")
    x = b.input("x", (6, 2, 8), DType.f32)
    w = b.constant(np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32), "w")
    return b.build(b.matmul(x, b.expand(b.transpose(w, perm=(1, 0)), shape=expanded_shape)))


def test_a_weight_expanded_over_batch_axes_is_read_unexpanded_as_one_gemm():
    graph = _in_projection((6, 8, 12))
    simplified = make_pass("canonicalize").run(graph)
    ops = [n.op for n in simplified.nodes if n.op != "const"]
    assert ops == ["gemm"], ops
    x = np.random.default_rng(1).standard_normal((6, 2, 8)).astype(np.float32)
    np.testing.assert_allclose(ir.run(simplified, [x])[0], ir.run(graph, [x])[0], rtol=1e-6, atol=1e-6)


def test_an_expand_that_also_stretches_the_result_batch_is_kept():
    graph = _in_projection((3, 6, 8, 12))  # a new leading axis: the product has it too
    assert "expand" in {n.op for n in make_pass("canonicalize").run(graph).nodes}


def test_lower_precision_in_a_pipeline_does_not_measure_its_report(monkeypatch):
    b = GraphBuilder("mlp")
    x = b.input("x", (4, 8), DType.f32)
    w = b.constant(np.ones((8, 8), np.float32), "w")
    graph = b.build(b.relu(b.matmul(x, w)))
    inputs = (np.ones((4, 8), np.float32),)

    def refuse(*_):
        raise AssertionError("measure_errors ran inside a pipeline")

    monkeypatch.setattr(lower_precision_module, "measure_errors", refuse)
    lowered = LowerPrecision(dtype=DType.f16, example_inputs=(inputs,)).run(graph)
    assert any(v.type.dtype == DType.f16 for n in lowered.nodes for v in n.outputs)
    with pytest.raises(AssertionError, match="measure_errors"):
        LowerPrecision(dtype=DType.f16, example_inputs=(inputs,)).run_with_report(graph)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([1.5, -3.0, 2.0], np.float32), 3.0),
        (np.array([1.5, -3.0], ml_dtypes.bfloat16), 3.0),
        (np.array([65504, -1], np.float16), 65504.0),
        (np.array([np.inf, 1.0]), math.inf),
        (np.array([np.nan, 1.0], np.float32), math.inf),
        (np.array([-128, 5], np.int8), 128.0),
        (np.array([True, False]), 1.0),
        (np.zeros((0,), np.float32), 0.0),
    ],
)
def test_max_abs(array, expected):
    assert max_abs(array) == expected
