"""Small ONNX models made with `onnx.helper` for the ONNX frontend's tests: one node (or a few)
with graph inputs, initializers and omitted optional inputs, and a check against ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class In:
    """A graph input fed at run time."""

    array: np.ndarray


@dataclass(frozen=True)
class Init:
    """An initializer (a constant of the model)."""

    array: np.ndarray


def rand(*shape: int, dtype=np.float32, seed: int = 0, low: float = -2, high: float = 2) -> np.ndarray:
    rng = np.random.default_rng(seed + len(shape) + sum(shape))
    if np.issubdtype(dtype, np.integer):
        return rng.integers(int(low), int(high) + 1, shape).astype(dtype)
    return rng.uniform(low, high, shape).astype(dtype)


def node_model(
    op: str,
    operands: Sequence[In | Init | None],
    attrs: dict[str, Any] | None = None,
    *,
    outputs: int = 1,
    opset: int = 18,
    domain: str = "",
) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """A model of one `op` node over `operands` (None omits an optional input), and its run-time inputs."""
    names, inputs, initializers, feeds = [], [], [], []
    for index, operand in enumerate(operands):
        if operand is None:
            names.append("")
            continue
        name = f"in{index}"
        names.append(name)
        if isinstance(operand, In):
            dtype = helper.np_dtype_to_tensor_dtype(operand.array.dtype)
            inputs.append(helper.make_tensor_value_info(name, dtype, operand.array.shape))
            feeds.append(operand.array)
        else:
            initializers.append(numpy_helper.from_array(operand.array, name))
    output_names = [f"out{i}" for i in range(outputs)]
    node = helper.make_node(op, names, output_names, domain=domain, **(attrs or {}))
    graph = helper.make_graph([node], op.lower(), inputs, [], initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    # ONNX's shape inference types the outputs, which ONNX Runtime insists on.
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in output_names:  # (where inference knows nothing, the output is typed like input 0)
        model.graph.output.append(inferred.get(name) or helper.make_value_info(name, inputs[0].type))
    return model, feeds


def onnxruntime_outputs(model: onnx.ModelProto, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, feeds)))
