"""Values, nodes and graphs: the typed SSA graph that frontends build and passes rewrite.

A `Value` is defined once (by a graph input or a node output) and has a type. A `Node`
applies an op from the op table to input values, with normalised attributes, and defines its
output values. A `Graph` holds inputs, outputs, nodes in topological order and named constant
arrays. All three are immutable: passes build new graphs (`dataclasses.replace`,
`GraphBuilder`) rather than edit old ones, so a graph handed out stays valid.

Values and nodes compare by identity: two `add` nodes with equal inputs are different nodes
until CSE says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import numpy as np

from ir.attributes import Attributes
from ir.types import TensorType

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*$")


def is_identifier(name: str) -> bool:
    """Whether `name` can name an input, constant or graph in the text form."""
    return bool(_IDENTIFIER.match(name))


def to_identifier(text: str) -> str:
    """`text` as a name the text form accepts: other characters become `_`, and a name that
    cannot start an identifier (`0.weight`) gets a `t_` in front."""
    cleaned = re.sub(r"[^A-Za-z0-9_.]", "_", text)
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"t_{cleaned}"


@dataclass(frozen=True, slots=True, eq=False)
class Value:
    """An SSA value. `name` is a hint for the printer (inputs keep theirs; others are numbered)."""

    type: TensorType
    name: str = ""

    def __repr__(self) -> str:
        return f"Value(%{self.name or hex(id(self))}: {self.type})"


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One application of an op."""

    op: str
    inputs: tuple[Value, ...]
    attrs: Attributes
    outputs: tuple[Value, ...]
    source: str | None = None
    """Where the node came from (a model's source line, an ONNX node name), for error messages."""

    @property
    def output(self) -> Value:
        """The only output of a single-output node."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]


def _freeze(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.flags.writeable:
        array = array.copy()
        array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Graph:
    """A function from input tensors to output tensors. Nodes are in topological order."""

    name: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Named constant arrays, read-only; `const` nodes refer to them by name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        frozen = {name: _freeze(array) for name, array in self.constants.items()}
        object.__setattr__(self, "constants", MappingProxyType(frozen))

    @cached_property
    def producers(self) -> Mapping[Value, Node]:
        """The node that defines each non-input value."""
        return MappingProxyType({v: node for node in self.nodes for v in node.outputs})

    @cached_property
    def users(self) -> Mapping[Value, tuple[Node, ...]]:
        """The nodes that read each value, in graph order (a node reading twice appears once)."""
        result: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for v in dict.fromkeys(node.inputs):
                result.setdefault(v, []).append(node)
        return MappingProxyType({v: tuple(nodes) for v, nodes in result.items()})

    def values(self) -> Iterator[Value]:
        """Every value the graph defines: inputs first, then node outputs in order."""
        yield from self.inputs
        for node in self.nodes:
            yield from node.outputs

    def to_networkx(self):
        """A networkx DiGraph over nodes, with an edge wherever one node reads another's output."""
        import networkx as nx

        digraph = nx.DiGraph()
        digraph.add_nodes_from(self.nodes)
        producers = self.producers
        for node in self.nodes:
            for v in node.inputs:
                if v in producers:
                    digraph.add_edge(producers[v], node, value=v)
        return digraph

    def __str__(self) -> str:
        from ir.printer import print_graph

        return print_graph(self)
