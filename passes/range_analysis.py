"""range_analysis: a bound on max |v| for every value of a graph, for passes that must know whether
a value fits a narrower type (lower_precision: f16's largest finite value is 65504).

Two ways to get one:

- `sampled_bounds`: run the graph in the reference interpreter on example inputs and take each
  value's max |v|, times a safety margin. Tight, but only as good as the examples.
- `interval_bounds`: propagate bounds through the graph from constants (their exact max |v|),
  attributes and an assumed bound on the graph inputs (unbounded unless given), with one rule per
  op below. Sound in exact arithmetic (never below the true max |v|) but loose; an op without a
  rule gets an infinite bound, so a rule missing here only makes a client more careful.

A bound is one float per value (a magnitude, not an interval): it is all that "does it fit f16"
needs, and it keeps each rule one line. nan counts as unbounded: a value that may be nan is
not known to fit anything. Integer and bool values are bounded by their type as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ir import DType, Graph, Node, OpKind, Value, get_op, run_all

Bounds = dict[Value, float]
"""max |v| of each value (inf when unknown)."""

LARGEST_FINITE: dict[DType, float] = {
    DType.f64: float(np.finfo(np.float64).max),
    DType.f32: float(np.finfo(np.float32).max),
    DType.f16: float(np.finfo(np.float16).max),  # 65504
    DType.bf16: (2 - 2**-7) * 2.0**127,  # f32's exponent, 8 significant bits (numpy's finfo knows no bf16)
}


def sampled_bounds(graph: Graph, inputs: Sequence[Any] | Mapping[str, Any], margin: float = 1.0) -> Bounds:
    """max |v| of every value when `graph` runs on `inputs`, times `margin` (>= 1)."""
    return {value: max_abs(array) * margin for value, array in run_all(graph, inputs).items()}


def merge_sampled(samples: Sequence[Bounds]) -> Bounds:
    """The largest bound of each value over several sample runs."""
    merged: Bounds = {}
    for bounds in samples:
        for value, bound in bounds.items():
            merged[value] = max(merged.get(value, 0.0), bound)
    return merged


def max_abs(array: np.ndarray) -> float:
    """max |a|: 0 for an empty array, inf when any element is nan or infinite."""
    array = np.asarray(array)
    if array.size == 0:
        return 0.0
    if array.dtype.kind not in "fiub":  # bf16 (numpy kind "V"): exactly in f32
        array = array.astype(np.float32)
    # The two ends, not max(abs(a)) in f64: no temporary copies of a large activation (compile
    # samples every value of the graph on the example inputs).
    ends = (float(np.max(array)), float(np.min(array)))
    largest = max(abs(ends[0]), abs(ends[1]))
    return math.inf if math.isnan(largest) else largest


def interval_bounds(graph: Graph, input_bound: float | None = None) -> Bounds:
    """Bounds from constants and op rules; float inputs are bounded by `input_bound` (None:
    unbounded), integer and bool inputs by their type."""
    start = math.inf if input_bound is None else float(input_bound)
    return _propagate(
        graph, [_capped(v.type.dtype, start if v.type.dtype.is_float else math.inf) for v in graph.inputs]
    )


def _propagate(graph: Graph, input_bounds: Sequence[float]) -> Bounds:
    bounds: Bounds = dict(zip(graph.inputs, input_bounds))
    for node in graph.nodes:
        if node.op == "const":
            results: Sequence[float] = [max_abs(graph.constants[node.attrs["name"]])]
        elif isinstance(node.attrs.get("body"), Graph):  # a region: its body's bounds, value for value
            body = node.attrs["body"]
            inner = _propagate(body, [bounds[v] for v in node.inputs])
            results = [inner[v] for v in body.outputs]
        else:
            result = rule_for(node)(node, [bounds[v] for v in node.inputs])
            results = [result] * len(node.outputs)
        for value, bound in zip(node.outputs, results):
            bounds[value] = _capped(value.type.dtype, bound)
    return bounds


def _capped(dtype: DType, bound: float) -> float:
    """Integers wrap and bools are 0 or 1, so their type bounds them; a float bound beyond its
    type's largest finite value means the value may be inf."""
    if math.isnan(bound):
        return math.inf
    if dtype == DType.bool:
        return 1.0
    if dtype.is_integer:
        info = np.iinfo(dtype.numpy)
        return min(bound, float(max(abs(int(info.min)), int(info.max))))
    if dtype.is_float and bound > LARGEST_FINITE[dtype]:
        return math.inf
    return bound


# -- rules: (node, bounds of its inputs) -> bound of its outputs --------------------------------

Rule = Callable[[Node, list[float]], float]


def _same_dtype_inputs(node: Node, bounds: list[float]) -> float:
    """Ops that only move or select elements: the largest bound among inputs of the output's
    dtype (indices, masks and conditions do not become output elements)."""
    dtype = node.outputs[0].type.dtype
    selected = [b for v, b in zip(node.inputs, bounds) if v.type.dtype == dtype]
    extra = abs(node.attrs["value"]) if "value" in node.attrs else 0.0  # pad's fill value
    return max([*selected, extra], default=0.0)


def _clip(node: Node, bounds: list[float]) -> float:
    # clip(x) = median(lo, x, hi): inside [lo, hi] it is x; below it lo, above it hi.
    low = -math.inf if node.attrs["min"] is None else node.attrs["min"]
    high = math.inf if node.attrs["max"] is None else node.attrs["max"]
    return min(max(bounds[0], low, -high, 0.0), max(abs(low), abs(high)))


def _matmul(node: Node, bounds: list[float]) -> float:
    return node.inputs[0].type.shape[-1] * bounds[0] * bounds[1]  # |sum of K products|


def _gemm(node: Node, bounds: list[float]) -> float:
    a = node.inputs[0].type.shape
    k = a[0] if node.attrs["trans_a"] else a[1]
    bias = abs(node.attrs["beta"]) * bounds[2] if len(bounds) > 2 else 0.0
    return abs(node.attrs["alpha"]) * k * bounds[0] * bounds[1] + bias


def _conv(node: Node, bounds: list[float]) -> float:
    taps = math.prod(node.inputs[1].type.shape[1:])  # w [out, in / groups, *kernel]
    return taps * bounds[0] * bounds[1] + (bounds[2] if len(bounds) > 2 else 0.0)


def _conv_transpose(node: Node, bounds: list[float]) -> float:
    w = node.inputs[1].type.shape  # [in, out / groups, *kernel]: an output sums in / groups * kernel taps at most
    taps = (w[0] // node.attrs["groups"]) * math.prod(w[2:])
    return taps * bounds[0] * bounds[1] + (bounds[2] if len(bounds) > 2 else 0.0)


def _sum(node: Node, bounds: list[float]) -> float:
    return bounds[0] * node.inputs[0].type.numel / max(node.outputs[0].type.numel, 1)


def _prod(node: Node, bounds: list[float]) -> float:
    count = node.inputs[0].type.numel / max(node.outputs[0].type.numel, 1)
    return _power(max(bounds[0], 1.0), count)


def _power(base: float, exponent: float) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def _exp(node: Node, bounds: list[float]) -> float:
    try:
        return math.exp(bounds[0])
    except OverflowError:
        return math.inf


def _axis_length(node: Node) -> int:
    shape = node.inputs[0].type.shape
    return shape[node.attrs["axis"] % len(shape)] if shape else 1


def _trailing_norm(node: Node, bounds: list[float]) -> float:
    # A standardised vector of n elements has sum(z^2) <= n and sum(z) = 0, so |z_i| <= sqrt(n - 1);
    # x / rms(x) has |z_i| <= sqrt(n). Epsilon only shrinks both. Then * weight + bias.
    shape = node.inputs[0].type.shape
    n = math.prod(shape[node.attrs["axis"] % len(shape) :])
    weight = bounds[1] if len(bounds) > 1 else 1.0
    bias = bounds[2] if len(bounds) > 2 else 0.0
    return math.sqrt(n) * weight + bias


def _group_norm(node: Node, bounds: list[float]) -> float:
    shape = node.inputs[0].type.shape
    n = shape[1] // node.attrs["num_groups"] * math.prod(shape[2:])
    return math.sqrt(n) * bounds[1] + bounds[2]


def _batch_norm(node: Node, bounds: list[float]) -> float:
    x, scale, bias, mean, _var = bounds  # (x - mean) / sqrt(var + eps) * scale + bias, var >= 0
    return (x + mean) / math.sqrt(node.attrs["epsilon"]) * scale + bias if node.attrs["epsilon"] > 0 else math.inf


def _scatter(node: Node, bounds: list[float]) -> float:
    x, _indices, updates = bounds
    if node.attrs["reduction"] in ("none", "max", "min"):
        return max(x, updates)
    if node.attrs["reduction"] == "add":  # at most one update per position along the axis
        return x + updates * node.inputs[2].type.shape[node.attrs["axis"]]
    return math.inf


def _arange(node: Node, bounds: list[float]) -> float:
    return max(abs(node.attrs["start"]), abs(node.attrs["limit"]) + abs(node.attrs["delta"]))


def _first(node: Node, bounds: list[float]) -> float:
    return bounds[0]


def _constant(value: float) -> Rule:
    return lambda node, bounds: value


def _at_most(value: float) -> Rule:
    return lambda node, bounds: min(bounds[0], value)


def _sum_of_inputs(node: Node, bounds: list[float]) -> float:
    return bounds[0] + bounds[1]


# One rule per op whose bound differs from the default of its kind (below). Each comment says why.
RULES: dict[str, Rule] = {
    "neg": _first,
    "abs": _first,
    "relu": _first,  # |max(x, 0)| <= |x|
    "gelu": _first,  # |x * Phi(x)| <= |x| (the tanh form too)
    "silu": _first,  # |x * sigmoid(x)| <= |x|
    "floor": lambda node, b: b[0] + 1,
    "ceil": lambda node, b: b[0] + 1,
    "round": lambda node, b: b[0] + 1,
    "sign": _constant(1.0),
    "tanh": _at_most(1.0),  # |tanh x| <= min(|x|, 1)
    "erf": lambda node, b: min(2 / math.sqrt(math.pi) * b[0], 1.0),  # erf's slope is 2/sqrt(pi) at 0
    "sin": _at_most(1.0),
    "cos": _constant(1.0),
    "sigmoid": _constant(1.0),
    "softmax": _constant(1.0),  # weights in [0, 1]
    "exp": _exp,  # e^x <= e^max|x|
    "sqrt": lambda node, b: math.sqrt(b[0]),
    "clip": _clip,
    "cast": _first,  # a float -> int cast truncates towards zero; _capped handles the rest
    "add": _sum_of_inputs,
    "sub": _sum_of_inputs,
    "mul": lambda node, b: b[0] * b[1],
    "mod": lambda node, b: b[1],  # |a mod b| < |b| with either sign convention
    "maximum": _same_dtype_inputs,
    "minimum": _same_dtype_inputs,
    "where": _same_dtype_inputs,
    "matmul": _matmul,
    "gemm": _gemm,
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "scaled_dot_product_attention": lambda node, b: b[2],  # softmax weights sum to 1: a convex mix of v's rows
    "sum": _sum,
    "prod": _prod,
    "mean": _first,
    "max": _first,
    "min": _first,
    "max_pool": _first,
    "avg_pool": _first,  # an average of inputs and zero padding
    "global_avg_pool": _first,
    "argmax": lambda node, b: _axis_length(node),
    "argmin": lambda node, b: _axis_length(node),
    "cumsum": lambda node, b: b[0] * _axis_length(node),
    "layer_norm": _trailing_norm,
    "rms_norm": _trailing_norm,
    "group_norm": _group_norm,
    "batch_norm": _batch_norm,
    "scatter": _scatter,
    "full": lambda node, b: abs(node.attrs["value"]),
    "arange": _arange,
    "unpack_bytes": lambda node, b: math.inf,  # bytes of words: their type bounds them (_capped)
}


def _unbounded(node: Node, bounds: list[float]) -> float:
    return math.inf


def rule_for(node: Node) -> Rule:
    """The op's rule; movement ops without one only move elements; anything else is unbounded
    (div, reciprocal, rsqrt, log, pow, log_softmax: each can grow without limit)."""
    if node.op in RULES:
        return RULES[node.op]
    if get_op(node.op).kind == OpKind.MOVEMENT:
        return _same_dtype_inputs
    return _unbounded
