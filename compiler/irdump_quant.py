"""`irdump --precision int8-...`: the quantization report (`passes.quantize.QuantizationReport`),
printed after the pass summaries as `#` comments: which contractions became int8 and how, which kept
float and why, and the error against the float graph (max abs, cosine, top-1 agreement).

irdump has no user data, so the pass measures on (and static mode calibrates from) random input
sets: standard normal floats, zeros for integer inputs, seeded, and the report says so. For real
figures, compile with `calibration=` or `example_inputs` and read `.stats["quantization"]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ir import Graph
from passes import Pass
from passes.observers import random_input_sets

INT8_PRECISIONS = ("int8-weight", "int8-dynamic", "int8-static")


def with_report(steps: list[Pass], graph: Graph, sets: int, observer: str) -> tuple[list[Pass], list[Any]]:
    """The steps with the quantize pass given random calibration sets, the observer and a report list."""
    reports: list[Any] = []
    if not any(step.name == "quantize" for step in steps):
        return steps, reports
    inputs = random_input_sets(graph, sets)
    changed = [
        dataclasses.replace(step, calibration=inputs, observer=observer, reports=reports)
        if step.name == "quantize"
        else step
        for step in steps
    ]
    return changed, reports


def report_lines(reports: list[Any], sets: int) -> list[str]:
    """The last quantization report as comment lines (empty when no quantize pass ran)."""
    if not reports:
        return []
    lines = [f"# quantization, measured on {sets} random normal input set(s) (seed 0):"]
    lines += [f"#   {line}" for line in str(reports[-1]).splitlines()]
    return lines
