"""What an ONNX op mapping sees while it turns one ONNX node into IR: `NodeContext`.

The ONNX frontend (`compiler.frontends.onnx`) walks the model's nodes in order and hands each to
its mapping function (`compiler.frontends.onnx_ops`) together with a `NodeContext`: the node,
its input values (`None` for an omitted optional input), the constant value of each input when
it is known at import time, the node's attributes with the ONNX schema's defaults filled in,
and a builder that stamps every IR node it makes with the ONNX node's name as `source`.

Inputs such as Reshape's shape or Slice's starts must be known at import time (the IR's shapes
are static); `NodeContext.const` gives them, or raises a `ShapeError` saying which input of
which node is computed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import ShapeError, StaticInputError
from ir import DType, GraphBuilder, Value

# ONNX element types the IR has; anything else (uint16, float8, strings, ...) is unsupported.
ONNX_TO_DTYPE: dict[int, DType] = {
    TensorProto.FLOAT: DType.f32,
    TensorProto.DOUBLE: DType.f64,
    TensorProto.FLOAT16: DType.f16,
    TensorProto.BFLOAT16: DType.bf16,
    TensorProto.INT64: DType.i64,
    TensorProto.INT32: DType.i32,
    TensorProto.INT8: DType.i8,
    TensorProto.UINT8: DType.u8,
    TensorProto.BOOL: DType.bool,
}


def onnx_type_name(elem_type: int) -> str:
    return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


class UnsupportedNode(Exception):
    """Raised by a mapping for a node it cannot import (an attribute value, a dtype, an output
    it cannot give); the frontend collects these for one `UnsupportedOperatorError`."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def dtype_of_onnx(elem_type: int, what: str) -> DType:
    """The IR dtype of an ONNX element type; `UnsupportedNode` naming `what` for one the IR lacks."""
    try:
        return ONNX_TO_DTYPE[elem_type]
    except KeyError:
        raise UnsupportedNode(f"{what} is {onnx_type_name(elem_type)}, which the IR has no dtype for") from None


def array_of_tensor(tensor: TensorProto, what: str) -> np.ndarray:
    """The numpy array of an ONNX tensor (initializer, Constant value), in its IR dtype."""
    dtype = dtype_of_onnx(tensor.data_type, what)
    return np.asarray(numpy_helper.to_array(tensor)).astype(dtype.numpy, copy=False)


_FROM_SCHEMA = object()


@dataclass
class NodeContext:
    """One ONNX node being imported."""

    node: onnx.NodeProto
    source: str
    """The node's name, or `OpType#index` when it has none: the `source` of every IR node made."""
    version: int
    """The version of the op's ONNX definition that the model's opset selects (its since_version)."""
    schema: Any
    """The op's `onnx.defs.OpSchema` at that version (attribute defaults come from it)."""
    builder: GraphBuilder
    inputs: list[Value | None]
    constants: list[np.ndarray | None]
    """The value of each input when it is known at import time, else None."""
    constant_arrays: dict[Value, np.ndarray] = field(default_factory=dict)
    """The constants this node's mapping made, so that outputs that are constants are known."""

    @property
    def op_type(self) -> str:
        return self.node.op_type

    # -- attributes ------------------------------------------------------------------------

    def attr(self, name: str, default: Any = _FROM_SCHEMA) -> Any:
        """The attribute as a Python value (str for strings, numpy array for tensors), else
        `default`, else the schema's default, else None."""
        for attribute in self.node.attribute:
            if attribute.name == name:
                return _python_value(attribute, f"attribute {name}")
        if default is not _FROM_SCHEMA:
            return default
        declared = self.schema.attributes.get(name) if self.schema is not None else None
        if declared is not None and declared.default_value.type:
            return _python_value(declared.default_value, f"attribute {name}")
        return None

    def has_attr(self, name: str) -> bool:
        return any(a.name == name for a in self.node.attribute)

    # -- inputs ----------------------------------------------------------------------------

    def input(self, index: int) -> Value:
        value = self.optional(index)
        if value is None:
            raise ShapeError(f"{self.op_type} node {self.source}: input {index} is required but missing")
        return value

    def optional(self, index: int) -> Value | None:
        return self.inputs[index] if index < len(self.inputs) else None

    def const(self, index: int, what: str) -> np.ndarray:
        """The import-time value of input `index` (an initializer, a Constant node, or folded
        from them); a `ShapeError` if it is only known at run time."""
        if self.optional(index) is None:
            raise ShapeError(f"{self.op_type} node {self.source}: input {index} ({what}) is required but missing")
        array = self.constants[index]
        if array is None:
            raise StaticInputError(
                f"{self.op_type} node {self.source}: input {index} ({what}, {self.node.input[index]!r}) is computed "
                "at run time, but Kiln needs it at import time because the IR's shapes are static",
                self.node.input[index],
            )
        return array

    def const_or(self, index: int, what: str, default: Any) -> Any:
        """Like `const`, with `default` when the optional input is absent."""
        return default if self.optional(index) is None else self.const(index, what)

    def ints(self, index: int, what: str) -> tuple[int, ...]:
        return tuple(int(v) for v in np.asarray(self.const(index, what)).reshape(-1))

    # -- building --------------------------------------------------------------------------

    def op(self, name: str, *inputs: Value, **attrs: Any) -> Any:
        return self.builder.op(name, *inputs, source=self.source, **attrs)

    def constant(self, array: Any, name: str = "c", dtype: DType | None = None) -> Value:
        array = np.asarray(array, dtype=None if dtype is None else dtype.numpy)
        value = self.builder.constant(array, constant_name(name))
        self.constant_arrays[value] = array
        return value

    def scalar(self, value: float, like: Value | DType) -> Value:
        """A scalar constant in the dtype of `like` (broadcasts against it)."""
        dtype = like if isinstance(like, DType) else like.type.dtype
        return self.builder.constant(np.array(value, dtype=dtype.numpy), "scalar")

    def cast(self, value: Value, dtype: DType) -> Value:
        return value if value.type.dtype == dtype else self.op("cast", value, dtype=dtype)


def constant_name(name: str) -> str:
    """An IR identifier made from an ONNX name (ONNX names may hold any character)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.") else "_" for c in name) or "c"
    return cleaned if cleaned[0].isalpha() or cleaned[0] == "_" else f"c_{cleaned}"


def _python_value(attribute: onnx.AttributeProto, what: str) -> Any:
    if attribute.type == onnx.AttributeProto.TENSOR:
        return array_of_tensor(attribute.t, what)
    if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise UnsupportedNode("subgraph attributes (control flow)")
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value
