"""`GraphBuilder`: the one way frontends, the parser, passes and tests make graphs.

Every `op` call looks the op up in the table, normalises its attributes and infers its output
types, so a graph built here is well typed by construction; a bad shape fails at the call that
made it, with the node quoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ir.dtype import DType
from ir.errors import ShapeError
from ir.graph import Graph, Node, Value, is_identifier
from ir.ops import get_op
from ir.types import TensorType, tensor_type_of


def check_name(name: str, what: str) -> str:
    """Names of inputs and constants appear in the text form, so they must be identifiers."""
    if not is_identifier(name):
        raise ValueError(f"{what} name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_.]*)")
    return name


class GraphBuilder:
    """Appends inputs, constants and nodes in order, then `build`s an immutable `Graph`."""

    def __init__(self, name: str = "main") -> None:
        self.name = check_name(name, "graph")
        self._inputs: list[Value] = []
        self._nodes: list[Node] = []
        self._constants: dict[str, np.ndarray] = {}
        self._names: set[str] = set()

    def input(self, name: str, shape: TensorType | Sequence[int], dtype: DType = DType.f32) -> Value:
        """A new graph input; `shape` is a `TensorType` or a shape with `dtype`."""
        check_name(name, "input")
        if name in self._names:
            raise ValueError(f"the name {name!r} is already taken")
        self._names.add(name)
        value = Value(shape if isinstance(shape, TensorType) else TensorType(tuple(shape), dtype), name)
        self._inputs.append(value)
        return value

    def constant(self, array: Any, name: str = "c", dtype: DType | None = None) -> Value:
        """A `const` node over a copy of `array`, under `name` or `name_<n>` if that is taken."""
        array = np.asarray(array, dtype=None if dtype is None else dtype.numpy)
        unique = check_name(name, "constant")
        counter = 0
        while unique in self._names:
            unique, counter = f"{name}_{counter}", counter + 1
        self._names.add(unique)
        self._constants[unique] = array
        value = Value(tensor_type_of(array), unique)
        self._nodes.append(Node("const", (), get_op("const").normalize_attrs({"name": unique}), (value,)))
        return value

    def adopt_inputs(self, values: Sequence[Value]) -> None:
        """Take existing values as the graph's inputs, so a pass's result keeps its input values."""
        for value in values:
            check_name(value.name, "input")
            if value.name in self._names:
                raise ValueError(f"the name {value.name!r} is already taken")
            self._names.add(value.name)
            self._inputs.append(value)

    def append(self, node: Node, constant: np.ndarray | None = None) -> Node:
        """Append an existing node as it is (a pass keeping a node); a `const` node brings its
        array. Returns the node appended: a constant whose name is taken gets a new name, and
        so a new node and value."""
        if node.op == "const":
            name = node.attrs["name"]
            if constant is None:
                raise ValueError(f"const @{name} needs its array to be appended")
            if name in self._names:
                self.constant(constant, name)
                return self._nodes[-1]
            self._names.add(name)
            self._constants[name] = constant
        self._nodes.append(node)
        return node

    def op(self, op: str, *inputs: Value, source: str | None = None, **attrs: Any) -> Value | tuple[Value, ...]:
        """Apply `op`; returns its output, or a tuple of outputs for multi-output ops."""
        definition = get_op(op)
        if op == "const":
            raise ValueError("make constants with GraphBuilder.constant")
        normalized = definition.normalize_attrs(attrs)
        try:
            output_types = definition.infer_types(tuple(v.type for v in inputs), normalized)
        except ShapeError as error:
            given = ", ".join(f"{v.name and '%' + v.name + ': '}{v.type}" for v in inputs)
            where = f" (from {source})" if source else ""
            raise ShapeError(f"{error}\n  in: {op}({given}){where}") from None
        outputs = tuple(Value(t) for t in output_types)
        self._nodes.append(Node(op, tuple(inputs), normalized, outputs, source))
        return outputs[0] if len(outputs) == 1 else outputs

    def __getattr__(self, op: str):
        """`builder.add(x, y)` is `builder.op("add", x, y)`."""
        if op.startswith("_"):
            raise AttributeError(op)
        get_op(op)  # raises UnknownOpError naming the table's ops

        def apply(*inputs: Value, **attrs: Any) -> Value | tuple[Value, ...]:
            return self.op(op, *inputs, **attrs)

        return apply

    def build(self, *outputs: Value) -> Graph:
        return Graph(self.name, tuple(self._inputs), tuple(outputs), tuple(self._nodes), dict(self._constants))
