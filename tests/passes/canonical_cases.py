"""What the canonicalize tests share: run the pass and check it verifies and is stable, and
check one rule's Before/Expected case (exact rules bit for bit, on ordinary and on special
inputs; inexact ones against the f64 oracle, and never applied by exact_only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import ir
from ir.testing import assert_equivalent
from passes.canonicalize import EXACT_RULES, Canonicalize

EXACT = Canonicalize(exact_only=True)
FULL = Canonicalize()
EXACT_NAMES = frozenset(rule.name for rule in EXACT_RULES)


def canonical_and_stable(graph: ir.Graph, step: Canonicalize) -> ir.Graph:
    after = step.run(graph)
    ir.verify(after)
    assert str(step.run(after)) == str(after), "a second canonicalize changed the graph"
    return after


def check_rule_case(
    rule: str,
    before: str,
    expected: str,
    special_inputs: Callable[[ir.Graph], list[np.ndarray]],
    rtol: float,
    atol: float,
) -> None:
    graph = ir.parse_graph(before)
    after = canonical_and_stable(graph, FULL)
    assert str(after) == expected
    if rule in EXACT_NAMES:
        assert str(canonical_and_stable(graph, EXACT)) == expected
        assert_equivalent(graph, after)
        assert_equivalent(graph, after, special_inputs(graph))
    else:
        assert str(EXACT.run(graph)) == str(graph), "exact_only applied an inexact rule"
        assert_equivalent(graph, after, oracle=True, rtol=rtol, atol=atol)
