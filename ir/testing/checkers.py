"""Checks that tests of passes, the parser and backends share: `random_inputs` for a graph, and
`assert_equivalent`, which runs two graphs through the reference interpreter and says exactly
where they differ.

Exact comparison is bitwise (nan equals nan, -0.0 differs from 0.0), which is what a structural
pass (CSE, dead-code removal, reordering) must keep. Passes that change numerics state a
tolerance and are checked with `rtol`/`atol`. Needs only numpy, not hypothesis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ir.dtype import DType
from ir.errors import KilnError
from ir.graph import Graph
from ir.interpreter import run
from ir.printer import print_graph
from ir.verifier import find_problems


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Arrays for the graph's inputs: floats uniform in [-3, 3], ints in [-5, 5] (u8: [0, 5]), bools."""
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        shape, dtype = value.type.shape, value.type.dtype
        if dtype == DType.bool:
            arrays.append(rng.random(shape) < 0.5)
        elif dtype.is_float:
            arrays.append(rng.uniform(-3, 3, shape).astype(dtype.numpy))
        else:
            arrays.append(rng.integers(0 if not dtype.is_signed else -5, 6, shape).astype(dtype.numpy))
    return arrays


def assert_equivalent(
    before: Graph,
    after: Graph,
    inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    oracle: bool = False,
    seed: int = 0,
) -> list[np.ndarray]:
    """Assert that `after` computes what `before` does, and return `before`'s outputs.

    Both graphs must be valid, take the same input types and return the same number and types of
    outputs. Values are compared bitwise (nan == nan) unless `rtol` or `atol` is given, then with
    `|after - before| <= atol + rtol * |before|` (infinities and nans must still match). Inputs
    default to `random_inputs(before, seed)`.
    """
    for label, graph in (("before", before), ("after", after)):
        problems = find_problems(graph)
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems)
            _fail(f"the graph {label} is invalid:\n{listed}", before, after)
    before_types = [str(v.type) for v in before.inputs]
    after_types = [str(v.type) for v in after.inputs]
    if before_types != after_types:
        _fail(
            f"the graphs take different inputs: ({', '.join(before_types)}) vs ({', '.join(after_types)})",
            before,
            after,
        )
    if inputs is None:
        inputs = random_inputs(before, seed)
    try:
        expected = run(before, inputs, oracle=oracle)
        actual = run(after, inputs, oracle=oracle)
    except KilnError as error:
        _fail(f"the interpreter failed: {error}", before, after)
    if len(expected) != len(actual):
        _fail(f"the graphs return {len(expected)} vs {len(actual)} outputs", before, after)
    for index, (v_before, v_after, e, a) in enumerate(zip(before.outputs, after.outputs, expected, actual)):
        where = f"output {index} of {len(expected)}"
        if v_before.type != v_after.type:
            _fail(f"{where} has type {v_before.type} before but {v_after.type} after", before, after)
        mismatch = _mismatch(e, a, rtol, atol)
        if mismatch is not None:
            _fail(f"{where} ({v_before.type}) differs: {mismatch}", before, after, inputs)
    return expected


def _mismatch(expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> str | None:
    """None if equal; else which elements differ and the first of them."""
    if expected.dtype != actual.dtype or expected.shape != actual.shape:
        return f"arrays {expected.dtype}{list(expected.shape)} vs {actual.dtype}{list(actual.shape)}"
    differs = _differs(expected, actual, rtol, atol)
    if not differs.any():
        return None
    first = tuple(int(i) for i in np.argwhere(differs)[0])
    e, a = expected[first], actual[first]
    tolerance = f" (rtol={rtol}, atol={atol})" if rtol or atol else " (bitwise)"
    text = f"{int(differs.sum())} of {differs.size} elements differ{tolerance}; first at index {list(first)}: "
    text += f"before {e!r}, after {a!r}"
    if expected.dtype.kind in "fiuV":
        with np.errstate(all="ignore"):
            text += f" (|difference| {abs(float(a) - float(e))})"
    return text


def _differs(expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    if expected.dtype.kind != "f" and expected.dtype != DType.bf16.numpy:
        return expected != actual  # ints and bools: equal is exact
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    both_nan = np.isnan(e) & np.isnan(a)
    if rtol or atol:
        with np.errstate(all="ignore"):
            close = (e == a) | (np.abs(a - e) <= atol + rtol * np.abs(e))
        return ~(close | both_nan)
    # Bitwise, through f64 (exact for every float dtype), with the sign of zero kept.
    return ~((e == a) & (np.signbit(e) == np.signbit(a)) | both_nan)


def _fail(message: str, before: Graph, after: Graph, inputs: Any = None) -> None:
    parts = [message, "", "before:", _printed(before), "after:", _printed(after)]
    if inputs is not None:
        with np.printoptions(threshold=24, edgeitems=3, precision=6):
            listed = inputs.items() if isinstance(inputs, Mapping) else zip((v.name for v in before.inputs), inputs)
            parts += ["inputs:"] + [f"  %{name} = {np.asarray(array)!r}" for name, array in listed]
    raise AssertionError("\n".join(parts))


def _printed(graph: Graph) -> str:
    try:
        return print_graph(graph, max_constant_elements=16)
    except Exception as error:  # a graph broken badly enough that even the printer fails
        return f"  <cannot print: {error!r}>\n"
