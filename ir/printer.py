"""The one printer of the text form, used by `irdump`, error messages and tests.

    graph @mlp(%x: f32[32,1024]) -> (f32[32,10]) {
      %w0 = const @w0 : f32[1024,10]
      %0 = matmul(%x, %w0) : f32[32,10]
      %1 = gelu(%0) {approximate="tanh"} : f32[32,10]    # model.py:12
      return %1
    }

    constants {
      @w0 : f32[1024,10] = [0.5, -1.25, ...]
    }

Inputs keep their names, constants are named after their entry in the constant table and
every other value is numbered in order, so printing is deterministic and `ir.parser` reads
the text back to a graph that prints the same. Attributes equal to their default are left
out; a node's source, if known, follows as a comment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ir.dtype import DType
from ir.graph import Graph, Node, Value
from ir.ops import OPS
from ir.types import TensorType


def value_names(graph: Graph) -> dict[Value, str]:
    """The printed name of every value the graph defines (without the `%`)."""
    names: dict[Value, str] = {}
    taken: set[str] = set()
    for value in graph.inputs:
        names[value] = value.name
        taken.add(value.name)
    counter = 0
    for node in graph.nodes:
        for value in node.outputs:
            constant = node.attrs.get("name") if node.op == "const" else None
            if isinstance(constant, str) and constant not in taken:
                name = constant
            else:
                name, counter = str(counter), counter + 1
            names.setdefault(value, name)  # a value defined twice keeps its first name
            taken.add(name)
    return names


def format_attr_value(value: Any, indent: str = "", max_constant_elements: int | None = None) -> str:
    if isinstance(value, Graph):  # a region's body: its lines nest one level inside the node's
        return "\n".join(graph_lines(value, max_constant_elements, indent))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, DType):
        return value.value
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same double, incl. inf, nan
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr_value(v) for v in value) + "]"
    return str(value)


def format_attrs(node: Node, indent: str = "", max_constant_elements: int | None = None) -> str:
    """Attributes that differ from their op's defaults; all of them for ops or attributes the
    table does not know (the verifier prints such broken nodes in its messages)."""
    definition = OPS.get(node.op)
    declared = definition.attr_index if definition else {}
    shown = [
        f"{name}={format_attr_value(value, indent, max_constant_elements)}"
        for name, value in node.attrs.items()
        if name not in declared or not declared[name].is_default(value, node.op)
    ]
    return " {" + ", ".join(shown) + "}" if shown else ""


def print_node(
    node: Node, names: Mapping[Value, str], indent: str = "", max_constant_elements: int | None = None
) -> str:
    """One node as text without leading indentation (a region's body spans several lines,
    indented past `indent`); unknown values print as `%?`."""

    def ref(value: Value) -> str:
        return "%" + names.get(value, "?")

    lhs = ", ".join(ref(v) for v in node.outputs)
    types = ", ".join(str(v.type) for v in node.outputs)
    if node.op == "const":
        text = f"{lhs} = const @{node.attrs.get('name', '?')} : {types}"
    else:
        operands = ", ".join(ref(v) for v in node.inputs)
        attrs = format_attrs(node, indent, max_constant_elements)
        text = f"{lhs} = {node.op}({operands}){attrs} : {types}"
    source = " ".join((node.source or "").split())  # one line; blank means none
    if source:
        text += "    # " + source
    return text


def format_scalar(value: Any, dtype: DType) -> str:
    if dtype == DType.bool:
        return "true" if value else "false"
    if dtype.is_integer:
        return str(int(value))
    if dtype == DType.bf16:  # ml_dtypes' str is not round-trip exact; every bf16 is an exact f32
        value = np.float32(value)
    text = str(value)  # numpy prints the shortest text that reads back to the same value
    return text if any(c in text for c in ".enia") else text + ".0"


def format_constant(array: np.ndarray, max_elements: int | None = None) -> str:
    """The data of a constant: a flat list, `splat(v)`, or a note that it was elided."""
    dtype = DType.from_numpy(array.dtype)
    flat = array.reshape(-1)
    # Compared as bytes: == would find -0.0 equal to 0.0 and nan unequal to itself.
    if flat.size > 1 and flat.tobytes() == flat[:1].tobytes() * flat.size:
        return f"splat({format_scalar(flat[0], dtype)})"
    if max_elements is not None and flat.size > max_elements:
        return f"<{flat.size} elements elided>"
    return "[" + ", ".join(format_scalar(v, dtype) for v in flat) + "]"


def print_graph(graph: Graph, max_constant_elements: int | None = None) -> str:
    """The text form of `graph`. Constants with more than `max_constant_elements` elements are
    elided (the text then no longer parses); by default all data is printed."""
    return "\n".join(graph_lines(graph, max_constant_elements)) + "\n"


def graph_lines(graph: Graph, max_constant_elements: int | None = None, indent: str = "") -> list[str]:
    """The lines of `graph`'s text; all but the first start with `indent`."""
    names = value_names(graph)
    inner = indent + "  "
    params = ", ".join(f"%{names[v]}: {v.type}" for v in graph.inputs)
    results = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"graph @{graph.name}({params}) -> ({results}) {{"]
    lines += [inner + print_node(node, names, inner, max_constant_elements) for node in graph.nodes]
    lines.append(inner + "return " + ", ".join("%" + names.get(v, "?") for v in graph.outputs))
    lines.append(indent + "}")
    if graph.constants:
        lines += ["", indent + "constants {"]
        for name, array in graph.constants.items():
            data = format_constant(array, max_constant_elements)
            lines.append(f"{inner}@{name} : {TensorType(array.shape, DType.from_numpy(array.dtype))} = {data}")
        lines.append(indent + "}")
    return lines
