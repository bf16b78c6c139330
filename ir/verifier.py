"""The verifier: checks that a graph keeps every invariant of the IR.

A graph built with `GraphBuilder` or read by the parser is valid by construction; graphs that
passes assemble by hand are checked here (after every pass in tests and debug mode). Problems
are collected and reported together, each with the offending node in the text form.
"""

from __future__ import annotations

import numpy as np

from ir.dtype import DType
from ir.errors import KilnError, VerificationError
from ir.graph import Graph, Node, Value, is_identifier
from ir.ops import OPS
from ir.printer import print_node, value_names
from ir.types import TensorType


def verify(graph: Graph) -> None:
    """Raise `VerificationError` listing every broken invariant; return quietly otherwise."""
    problems = find_problems(graph)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise VerificationError(f"graph @{graph.name} is invalid:\n{listed}")


def find_problems(graph: Graph) -> list[str]:
    names = value_names(graph)
    problems: list[str] = []
    defined: set[Value] = set()

    def define(value: Value, where: str) -> None:
        if value in defined:
            problems.append(f"%{names.get(value, '?')} is defined twice (values are SSA): {where}")
        defined.add(value)

    input_names: set[str] = set()
    for value in graph.inputs:
        define(value, f"input %{value.name}")
        if not is_identifier(value.name) or value.name in input_names:
            problems.append(f"input %{value.name}: input names must be distinct identifiers")
        input_names.add(value.name)
    every_output = {v for node in graph.nodes for v in node.outputs}
    for node in graph.nodes:
        text = print_node(node, names)
        for value in node.inputs:
            if value not in defined:
                why = "before it is defined" if value in every_output else "but nothing defines it"
                problems.append(f"{text}: uses a value {why}")
        problems += [f"{text}: {p}" for p in _check_node(graph, node)]
        for value in node.outputs:
            define(value, text)
    for value in graph.outputs:
        if value not in defined:
            problems.append(f"the graph returns %{names.get(value, '?')}, which nothing defines")
    if any("before it is defined" in p for p in problems):
        problems += _describe_cycles(graph, names)
    return problems


def _check_node(graph: Graph, node: Node) -> list[str]:
    definition = OPS.get(node.op)
    if definition is None:
        return [f"unknown op {node.op!r}"]
    try:
        attrs = definition.normalize_attrs(dict(node.attrs))
    except KilnError as error:
        return [str(error)]
    if attrs != node.attrs:
        return ["attributes are not normalised (build nodes through GraphBuilder or the op table)"]
    if node.op == "const":
        array = graph.constants.get(node.attrs["name"])
        if array is None:
            return [f"constant @{node.attrs['name']} is not in the graph's constants"]
        try:
            inferred = (TensorType(np.shape(array), DType.from_numpy(array.dtype)),)
        except TypeError as error:
            return [f"constant @{node.attrs['name']}: {error}"]
    else:
        try:
            inferred = definition.infer_types(tuple(v.type for v in node.inputs), attrs)
        except KilnError as error:
            return [str(error)]
    bodies = [(name, value) for name, value in node.attrs.items() if isinstance(value, Graph)]
    nested = [f"in {name} @{body.name}: {p}" for name, body in bodies for p in find_problems(body)]
    if nested:
        return nested
    declared = tuple(v.type for v in node.outputs)
    if declared != inferred:
        return [
            f"output types ({', '.join(map(str, declared))}) differ from the op's rule "
            f"({', '.join(map(str, inferred))})"
        ]
    return []


def _describe_cycles(graph: Graph, names: dict[Value, str]) -> list[str]:
    import networkx as nx

    try:
        cycle = nx.find_cycle(graph.to_networkx())
    except nx.NetworkXNoCycle:
        return ["nodes are not in topological order"]
    path = " -> ".join(f"%{names.get(edge[0].outputs[0], '?')}" for edge in cycle)
    return [f"the graph has a cycle: {path} -> %{names.get(cycle[0][0].outputs[0], '?')}"]
