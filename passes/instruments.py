"""Instruments for the pass manager: print the IR after passes, and a one-line summary per
pass (nodes before -> after, kernels, FLOPs, bytes moved, time). `irdump` is these plus the
printer.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TextIO

from ir import Graph, print_graph
from ir.summary import format_count, summarize
from passes.manager import Instrument, Pass


@dataclass
class PrintAfter(Instrument):
    """Print the graph after the passes named in `names` (all passes when `names` is None)."""

    names: Collection[str] | None = None
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    max_constant_elements: int | None = 16
    count: int = 0

    def after_pass(self, step: Pass, before: Graph, after: Graph, seconds: float) -> None:
        self.count += 1
        if self.names is None or step.name in self.names:
            self.stream.write(f"# IR after pass {self.count}: {step}\n")
            self.stream.write(print_graph(after, max_constant_elements=self.max_constant_elements))
            self.stream.write("\n")


@dataclass(frozen=True)
class PassRecord:
    step: str
    nodes_before: int
    nodes_after: int
    kernels: int
    flops: int
    bytes_moved: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.step:<28} nodes {self.nodes_before:>5} -> {self.nodes_after:<5} kernels {self.kernels:>4}  "
            f"{format_count(self.flops)}FLOPs  {format_count(self.bytes_moved)}B moved  {self.seconds * 1e3:8.2f} ms"
        )


@dataclass
class PassStatistics(Instrument):
    """Records a `PassRecord` per pass; `kernels` counts what would launch: fused groups and
    the nodes outside them (constants excluded)."""

    records: list[PassRecord] = field(default_factory=list)

    def after_pass(self, step: Pass, before: Graph, after: Graph, seconds: float) -> None:
        summary = summarize(after)
        self.records.append(
            PassRecord(
                str(step),
                count_nodes(before),
                count_nodes(after),
                count_kernels(after),
                summary.flops,
                summary.bytes_moved,
                seconds,
            )
        )

    def table(self) -> str:
        return "\n".join(str(r) for r in self.records)


def count_nodes(graph: Graph) -> int:
    """Nodes other than constants, counting each fused group's body nodes."""
    total = 0
    for node in graph.nodes:
        body = node.attrs.get("body")
        total += count_nodes(body) if isinstance(body, Graph) else node.op != "const"
    return total


def count_kernels(graph: Graph) -> int:
    return sum(1 for node in graph.nodes if node.op != "const")
