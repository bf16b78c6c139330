"""The reference interpreter: runs any graph with numpy. It is the ground truth that passes
and backends are checked against.

Two modes:

- dtype-faithful (default): every value has its declared dtype. Each op computes on f32 when
  its inputs are f16 or bf16 and rounds its result to the declared type, as a kernel that
  loads low precision, computes in f32 and stores low precision would.
- oracle (`oracle=True`): every float value, constant and dtype attribute is f64, so the
  result approximates the exact math that the graph's low-precision types only approach.

Floating-point exceptions follow IEEE (inf, nan) without numpy warnings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ir.attributes import Attributes
from ir.dtype import LOW_PRECISION_FLOATS, DType
from ir.errors import InterpreterError
from ir.graph import Graph, Node, Value
from ir.ops import get_op
from ir.types import TensorType


def run(graph: Graph, inputs: Sequence[Any] | Mapping[str, Any], *, oracle: bool = False) -> list[np.ndarray]:
    """The graph's outputs for `inputs` (positional, or by input name)."""
    env = run_all(graph, inputs, oracle=oracle)
    return [env[v] for v in graph.outputs]


def run_all(
    graph: Graph, inputs: Sequence[Any] | Mapping[str, Any], *, oracle: bool = False
) -> dict[Value, np.ndarray]:
    """Every value the graph defines, keyed by value: for analyses that need intermediates."""
    return _execute(graph, _check_inputs(graph, inputs, oracle), oracle)


def _execute(graph: Graph, arrays: list[np.ndarray], oracle: bool) -> dict[Value, np.ndarray]:
    """Run `graph` on inputs already checked and held in the mode's storage dtypes."""
    env: dict[Value, np.ndarray] = dict(zip(graph.inputs, arrays))
    for node in graph.nodes:
        body = node.attrs.get("body")
        if node.op == "const":
            results = (_compute_type(graph.constants[node.attrs["name"]], oracle),)
        elif isinstance(body, Graph):  # a region: its body computes it, value for value
            inner = _execute(body, [env[v] for v in node.inputs], oracle)
            results = tuple(inner[v] for v in body.outputs)
        else:
            definition = get_op(node.op)
            arrays = [_compute_type(env[v], oracle) for v in node.inputs]
            attrs = _oracle_attrs(node.attrs) if oracle else node.attrs
            with np.errstate(all="ignore"):
                try:
                    results = definition.run_reference(arrays, attrs)
                except (IndexError, ValueError) as error:  # data the op cannot take, e.g. an index out of range
                    raise InterpreterError(f"{_quote(graph, node)}: {error}") from error
        if len(results) != len(node.outputs):
            raise InterpreterError(f"{node.op}: reference gave {len(results)} results for {len(node.outputs)} outputs")
        for value, result in zip(node.outputs, results):
            env[value] = _to_declared(np.asarray(result), value.type, oracle, node.op)
    return env


def _quote(graph: Graph, node: Node) -> str:
    from ir.printer import print_node, value_names

    return print_node(node, value_names(graph))


def storage_dtype(dtype: DType, oracle: bool) -> np.dtype:
    """The numpy dtype that holds values of `dtype` in the given mode."""
    return np.dtype(np.float64) if oracle and dtype.is_float else dtype.numpy


def _check_inputs(graph: Graph, inputs: Sequence[Any] | Mapping[str, Any], oracle: bool) -> list[np.ndarray]:
    if isinstance(inputs, Mapping):
        expected = [v.name for v in graph.inputs]
        missing = [n for n in expected if n not in inputs]
        unknown = [n for n in inputs if n not in expected]
        if missing or unknown:
            raise InterpreterError(f"@{graph.name} takes inputs {expected}; missing {missing}, unknown {unknown}")
        inputs = [inputs[n] for n in expected]
    if len(inputs) != len(graph.inputs):
        raise InterpreterError(f"@{graph.name} takes {len(graph.inputs)} input(s), got {len(inputs)}")
    arrays = []
    for value, given in zip(graph.inputs, inputs):
        array = np.asarray(given)
        if array.shape != value.type.shape or array.dtype != value.type.dtype.numpy:
            got = f"{array.dtype}{list(array.shape)}"
            raise InterpreterError(f"input %{value.name} expects {value.type}, got {got}")
        arrays.append(array.astype(storage_dtype(value.type.dtype, oracle), copy=False))
    return arrays


def _compute_type(array: np.ndarray, oracle: bool) -> np.ndarray:
    """The array an op's reference computes on (bf16's numpy kind is "V", not "f")."""
    if array.dtype in _LOW_PRECISION_NUMPY:
        return array.astype(np.float64 if oracle else np.float32)
    if oracle and array.dtype.kind == "f":
        return array.astype(np.float64)
    return array


_LOW_PRECISION_NUMPY = {d.numpy for d in LOW_PRECISION_FLOATS}


def _oracle_attrs(attrs: Attributes) -> Attributes:
    if not any(isinstance(v, DType) and v.is_float for v in attrs.values()):
        return attrs
    return Attributes({k: DType.f64 if isinstance(v, DType) and v.is_float else v for k, v in attrs.items()})


def _to_declared(result: np.ndarray, declared: TensorType, oracle: bool, op: str) -> np.ndarray:
    if result.shape != declared.shape:
        raise InterpreterError(f"{op}: reference gave shape {list(result.shape)}, the op's rule says {declared}")
    with np.errstate(all="ignore"):
        return result.astype(storage_dtype(declared.dtype, oracle), copy=False)
