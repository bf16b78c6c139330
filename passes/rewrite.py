"""The pattern-rewrite engine: rules as data, one driver that applies a table of them to a fixpoint.

A `Rule` pairs a `Pattern` with a named function. A pattern describes a small tree of nodes: the
op (or ops) of each node and patterns for its inputs; its leaves match any value (`var`) or only a
constant (`const`: a `const` or `full` node). Where every op of a node pattern is commutative
(`Law.COMMUTATIVE` in the op table), its two inputs also match in swapped order. Named parts of
a pattern are captured: a node pattern binds the `Node` it matched, a leaf binds the `Value`;
a name used twice must bind the same thing both times (`pat("maximum", var("x"), var("x"))`).

The function is called as `rewrite(rewriter, **captures)` and returns the values that replace the
root node's outputs, or `None` for "no match after all" (conditions a pattern cannot say: an
attribute, a shape, a constant's contents). It builds new nodes with `rewriter.op` and new
constants with `rewriter.constant`, and asks `rewriter.array(value)` for a constant's contents and
`rewriter.only_used_here(value)` before it absorbs a node whose result others may still need. A
rule must keep the types of the node it replaces; the driver checks, so a rule that would change
an output's shape or dtype fails loudly instead of corrupting the graph.

`rewrite_to_fixpoint(graph, rules)` sweeps the graph in order with `passes.editing.map_nodes`,
trying the rules of each node's op in table order, each on every match of its pattern, and
taking the first replacement a function returns; a node whose inputs were rewritten earlier in
the sweep is matched against the rewritten inputs. Sweeps
repeat, with dead nodes pruned in between, until one changes nothing. A rule set that never
settles (two rules undoing each other) stops after `max_sweeps` with a `RewriteLoopError` naming
the rules still firing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ir import OPS, Graph, GraphBuilder, KilnError, Law, Node, Value
from ir.printer import print_node, value_names
from passes.editing import map_nodes
from passes.prune_dead_nodes import PruneDeadNodes


class RewriteError(KilnError):
    """A rewrite rule misbehaved: it changed an output's type, or rules never reached a fixpoint."""


class RewriteLoopError(RewriteError):
    """The rules kept rewriting the graph for `max_sweeps` sweeps without reaching a fixpoint."""


# -- patterns ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """A tree of node patterns whose leaves match values. Build with `pat`, `var` and `const`."""

    ops: frozenset[str] | None = None
    """The ops a matching node may apply; None makes this a leaf that matches a value."""
    inputs: tuple[Pattern, ...] | None = None
    """Patterns for the node's inputs in order; None accepts any inputs."""
    name: str | None = None
    """The capture name: a node pattern binds its `Node`, a leaf its `Value`."""
    constant: bool = False
    """A leaf that matches only values made by `const` or `full`."""

    @cached_property
    def commutative(self) -> bool:
        """Whether the two inputs may match in either order: every op here is commutative."""
        return (
            self.ops is not None
            and self.inputs is not None
            and len(self.inputs) == 2
            and all(Law.COMMUTATIVE in OPS[op].laws for op in self.ops)
        )


def pat(ops: str | Iterable[str], *inputs: Pattern, name: str | None = None) -> Pattern:
    """A node applying `ops` (one name or several) to inputs matching `inputs`; no inputs given
    means any inputs."""
    names = frozenset((ops,) if isinstance(ops, str) else ops)
    unknown = sorted(n for n in names if n not in OPS)
    if unknown or not names:
        raise ValueError(f"pattern over unknown ops {unknown or 'none'}")
    return Pattern(names, tuple(inputs) if inputs else None, name)


def var(name: str | None = None) -> Pattern:
    """Any value."""
    return Pattern(name=name)


def const(name: str | None = None) -> Pattern:
    """A value made by a `const` or `full` node: its contents are known at compile time."""
    return Pattern(name=name, constant=True)


# -- rules and tables ----------------------------------------------------------------------------

RewriteFn = Callable[..., Sequence[Value] | Value | None]
"""`rewrite(rewriter, **captures)`: the values that replace the root's outputs, or None."""


@dataclass(frozen=True)
class Rule:
    """A pattern and the function that rewrites what it matches."""

    name: str
    pattern: Pattern
    rewrite: RewriteFn
    exact: bool = True
    """Whether the rewrite keeps every output bit-identical in the reference interpreter."""

    def __post_init__(self) -> None:
        if self.pattern.ops is None:
            raise ValueError(f"rule {self.name}: the root of a pattern must be a node pattern")


@dataclass(frozen=True)
class RuleTable:
    """Rules in priority order, looked up by the op of the node they rewrite; tables add with `+`."""

    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError(f"rules named twice: {repeated}")

    def __add__(self, other: RuleTable) -> RuleTable:
        return RuleTable(self.rules + other.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    def only_exact(self) -> RuleTable:
        return RuleTable(tuple(rule for rule in self.rules if rule.exact))

    def without(self, *names: str) -> RuleTable:
        unknown = sorted(set(names) - {rule.name for rule in self.rules})
        if unknown:
            raise ValueError(f"no rules named {unknown}")
        return RuleTable(tuple(rule for rule in self.rules if rule.name not in names))

    @cached_property
    def by_op(self) -> dict[str, tuple[Rule, ...]]:
        table: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for op in sorted(rule.pattern.ops or ()):
                table.setdefault(op, []).append(rule)
        return {op: tuple(rules) for op, rules in table.items()}


# -- what a rule sees ----------------------------------------------------------------------------


@dataclass
class _SweepState:
    """What one sweep knows about the graph being built: who produces each value, and the
    contents of constants. Nodes kept by `map_nodes` keep their output values, so a kept node
    is recorded as a view over its rewritten inputs."""

    graph: Graph
    producers: dict[Value, Node] = field(default_factory=dict)
    arrays: dict[Value, np.ndarray] = field(default_factory=dict)
    fired: Counter[str] = field(default_factory=Counter)
    rewritten: list[Node] = field(default_factory=list)

    @cached_property
    def outputs(self) -> frozenset[Value]:
        return frozenset(self.graph.outputs)

    def record(self, node: Node, array: np.ndarray | None = None) -> None:
        for value in node.outputs:
            self.producers[value] = node
        if array is not None:
            self.arrays[node.output] = array


class Rewriter:
    """The builder and queries a rule function works with, for the one node it rewrites."""

    def __init__(self, state: _SweepState, node: Node, builder: GraphBuilder) -> None:
        self._state = state
        self._builder = builder
        self.node = node
        """The node being rewritten, reading its rewritten inputs (outputs as in the old graph)."""

    def producer(self, value: Value) -> Node | None:
        """The node that makes `value` in the graph being built; None for a graph input."""
        return self._state.producers.get(value)

    def array(self, value: Value) -> np.ndarray | None:
        """The contents of a constant value (`const` or `full`), None for any other value."""
        if value in self._state.arrays:
            return self._state.arrays[value]
        node = self.producer(value)
        if node is not None and node.op == "full":
            attrs = node.attrs
            return np.full(attrs["shape"], attrs["value"], dtype=attrs["dtype"].numpy)
        return None

    def only_used_here(self, value: Value) -> bool:
        """Whether the node being rewritten is the one reader of `value`, and no output returns it,
        so a rule may absorb the node that makes it without computing it twice."""
        return self.only_read_by(value, self.node)

    def only_read_by(self, value: Value, reader: Node) -> bool:
        """Whether `reader` is the one reader of `value` and no output returns it (for an inner
        link of a pattern). Answered from the graph before this sweep (new uses only arise where
        an older reader exists), so it is conservative: a value that just lost a reader waits for
        the next sweep."""
        readers = self._state.graph.users.get(value, ())
        return len(readers) == 1 and readers[0].outputs == reader.outputs and value not in self._state.outputs

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Append a node (single output) that carries the rewritten node's source."""
        result = self._builder.op(op, *inputs, source=self.node.source, **attrs)
        if not isinstance(result, Value):
            raise RewriteError(f"rewriter.op makes single-output nodes; {op} has {len(result)} outputs")
        normalized = OPS[op].normalize_attrs(attrs)
        self._state.record(Node(op, tuple(inputs), normalized, (result,), self.node.source))
        return result

    def constant(self, array: np.ndarray, name: str) -> Value:
        """Append a new constant named `name` (or `name_<n>` where that is taken)."""
        value = self._builder.constant(array, name)
        node = Node("const", (), OPS["const"].normalize_attrs({"name": value.name}), (value,))
        self._state.record(node, np.asarray(array))
        return value


# -- matching ------------------------------------------------------------------------------------

Captures = dict[str, Any]
Producer = Callable[[Value], Node | None]
IsConstant = Callable[[Value], bool]


def matches(pattern: Pattern, node: Node, producer: Producer, is_constant: IsConstant) -> Iterator[Captures]:
    """Every way `pattern` matches at `node` (a commutative node in both orders), as captures.
    `producer` finds the node that makes a value, `is_constant` says whether a value is constant."""
    yield from _node_matches(pattern, node, producer, is_constant, {})


def match(pattern: Pattern, node: Node, producer: Producer, is_constant: IsConstant) -> Captures | None:
    """The first match of `pattern` at `node`, or None."""
    return next(matches(pattern, node, producer, is_constant), None)


def _bind(captures: Captures, name: str | None, thing: Any) -> Captures | None:
    if name is None:
        return captures
    if name in captures:
        return captures if captures[name] is thing else None
    return {**captures, name: thing}


def _node_matches(pattern: Pattern, node: Node, producer, is_constant, captures: Captures) -> Iterator[Captures]:
    if node.op not in (pattern.ops or ()):
        return
    if pattern.inputs is None:
        found: Iterable[Captures] = [captures]
    elif len(pattern.inputs) != len(node.inputs):
        return
    else:
        orders = [pattern.inputs, pattern.inputs[::-1]] if pattern.commutative else [pattern.inputs]
        found = (m for order in orders for m in _inputs_match(order, node.inputs, producer, is_constant, captures))
    for candidate in found:
        bound = _bind(candidate, pattern.name, node)
        if bound is not None:
            yield bound


def _inputs_match(patterns, values, producer, is_constant, captures: Captures) -> Iterator[Captures]:
    if not patterns:
        yield captures
        return
    for found in _value_matches(patterns[0], values[0], producer, is_constant, captures):
        yield from _inputs_match(patterns[1:], values[1:], producer, is_constant, found)


def _value_matches(pattern: Pattern, value: Value, producer, is_constant, captures: Captures) -> Iterator[Captures]:
    if pattern.ops is None:
        if pattern.constant and not is_constant(value):
            return
        bound = _bind(captures, pattern.name, value)
        if bound is not None:
            yield bound
        return
    node = producer(value)
    if node is not None:
        yield from _node_matches(pattern, node, producer, is_constant, captures)


# -- the driver ----------------------------------------------------------------------------------


def rewrite_to_fixpoint(graph: Graph, rules: RuleTable, *, max_sweeps: int = 32, prune_dead: bool = True) -> Graph:
    """Apply `rules` until none applies. With `prune_dead`, nodes no output needs are removed
    before the first sweep and after each (a rewritten node's old inputs often die), which also
    lets `only_used_here` see the readers that are left. Returns `graph` itself if no rule applied
    (and nothing was dead)."""
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps must be at least 1, got {max_sweeps}")
    prune = PruneDeadNodes()
    if prune_dead:
        pruned = prune.run(graph)
        graph = graph if len(pruned.nodes) == len(graph.nodes) else pruned
    for _ in range(max_sweeps):
        result, state = _sweep(graph, rules)
        if not state.fired:
            return graph
        graph = prune.run(result) if prune_dead else result
    fired = ", ".join(f"{name} ({count}x)" for name, count in sorted(state.fired.items()))
    names = value_names(state.graph)
    examples = "\n".join("  " + print_node(node, names) for node in state.rewritten[:5])
    raise RewriteLoopError(
        f"rewrite rules did not reach a fixpoint in {max_sweeps} sweeps; still firing: {fired}\n"
        f"nodes rewritten in the last sweep include:\n{examples}\n"
        "two rules probably undo each other: make one of them require what the other produces not to hold"
    )


def _sweep(graph: Graph, rules: RuleTable) -> tuple[Graph, _SweepState]:
    """One pass over the nodes in order: each node is replaced by the first rule that applies."""
    state = _SweepState(graph)

    def is_constant(value: Value) -> bool:
        node = state.producers.get(value)
        return value in state.arrays or (node is not None and node.op == "full")

    def replace(node: Node, inputs: list[Value], builder: GraphBuilder) -> Sequence[Value] | None:
        current = Node(node.op, tuple(inputs), node.attrs, node.outputs, node.source)
        for rule, captures in _candidates(rules, current, state.producers.get, is_constant):
            replacement = rule.rewrite(Rewriter(state, current, builder), **captures)
            if replacement is None:
                continue
            values = (replacement,) if isinstance(replacement, Value) else tuple(replacement)
            _check_types(rule, graph, node, values)
            state.fired[rule.name] += 1
            state.rewritten.append(node)
            return values
        # Kept: map_nodes appends it over `inputs` with its outputs unchanged.
        state.record(current, graph.constants[node.attrs["name"]] if node.op == "const" else None)
        return None

    return map_nodes(graph, replace), state


def _candidates(rules: RuleTable, node: Node, producer: Producer, is_constant: IsConstant):
    """(rule, captures) for every rule of the node's op and every way its pattern matches."""
    for rule in rules.by_op.get(node.op, ()):
        for captures in matches(rule.pattern, node, producer, is_constant):
            yield rule, captures


def _check_types(rule: Rule, graph: Graph, node: Node, values: Sequence[Value]) -> None:
    before = [v.type for v in node.outputs]
    after = [v.type for v in values]
    if before != after:
        text = print_node(node, value_names(graph))
        listed = ", ".join(map(str, after))
        raise RewriteError(f"rule {rule.name} replaced `{text}` by values of type(s) {listed}; a rule must keep types")
