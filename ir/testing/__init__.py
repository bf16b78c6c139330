"""Testing tools for the graph IR, for Kiln's own tests and for users writing passes.

- `graphs(...)`, `graphs_with_inputs(...)`, `input_arrays(graph)`: hypothesis strategies for
  random valid graphs and their inputs (`ir.testing.strategies`; how ops are drawn:
  `ir.testing.drawing`, `ir.testing.operands`);
- `random_inputs(graph, seed)` and `assert_equivalent(before, after, ...)`: run two graphs
  through the reference interpreter and compare every output (`ir.testing.checkers`).

The checkers need only numpy; hypothesis is imported when a strategy is first asked for.
"""

from typing import Any

from ir.testing.checkers import assert_equivalent, random_inputs

_STRATEGIES = ("graphs", "graphs_with_inputs", "input_arrays", "inputs_for", "drawable_ops")

__all__ = ["assert_equivalent", "random_inputs", *_STRATEGIES]


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        from ir.testing import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module 'ir.testing' has no attribute {name!r}")
