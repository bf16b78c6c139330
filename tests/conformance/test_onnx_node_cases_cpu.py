"""ONNX's own backend node test cases through the CPU target: each case imported by the ONNX
frontend, lowered to kernels, compiled by LLVM for this host and run by the runtime's executor.

The full run asserts that the number passing never drops below the floor in
`onnx_node_floor_cpu.txt` (raise it when coverage grows) and that every case that passes on the
reference target passes here too, except those in `KNOWN_DIFFERENCES`, each with its reason. It
takes ~2 minutes on 2 cores (LLVM's O3 pipeline and code generation are most of it, ~0.1 s a
case), so it is one test (pytest-xdist would run a fixture shared by several tests once per
worker) and marked slow; a sample of one case per op runs in the quick suite.
`python -m compiler.conformance --target cpu` prints the per-op table and the differences.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

from compiler.conformance import PASSED, collect_cases, describe, differences, run_cases, summarize

FLOOR = int(Path(__file__).with_name("onnx_node_floor_cpu.txt").read_text().split()[0])

KNOWN_DIFFERENCES: dict[str, str] = {}
"""Cases that pass on the reference target and may fail on the CPU target: name -> why."""

THREADS = 2
"""Workers per program: more than one, so that every parallel kernel's work split is exercised."""


@pytest.fixture(scope="module")
def cases():
    return collect_cases()


def _check_against_reference(cases, **options):
    reference = run_cases(cases, target="reference", **options)
    results = run_cases(cases, target="cpu", threads=THREADS, **options)
    print(summarize(results))
    missing = [r for r in differences(reference, results) if r.name not in KNOWN_DIFFERENCES]
    crashes = [r for r in results if r.status == "crash"]
    assert not missing, "pass on the reference target, fail on cpu:\n" + "\n".join(map(describe, missing))
    assert not crashes, "\n".join(map(describe, crashes))
    return results


@pytest.mark.slow
def test_cpu_target_passes_the_floor_and_every_case_the_reference_target_passes(cases):
    results = _check_against_reference(cases)
    passed = sum(r.status == PASSED for r in results)
    assert passed >= FLOOR, f"{passed} ONNX node cases pass on cpu, fewer than the floor {FLOOR}"


def test_one_case_per_op_passes_on_cpu_where_it_passes_on_the_reference_target(cases):
    first: dict[str, object] = {}
    for case in cases:  # the first case of each model's last op: ~190 of them
        op = case.model.graph.node[-1].op_type if case.model.graph.node else "?"
        first.setdefault(op, case)
    results = _check_against_reference(list(first.values()))
    assert sum(r.status == PASSED for r in results) >= 100


def test_errors_raised_in_the_backend_are_their_own_kind(cases, monkeypatch):
    from backends.lowering import scalar

    abs_case = [c for c in cases if c.name == "test_abs"]
    assert run_cases(abs_case, target="cpu", threads=1)[0].status == PASSED
    monkeypatch.delitem(scalar.SCALAR, "abs")  # the lowering no longer knows abs
    (result,) = run_cases(abs_case, target="cpu", threads=1)
    assert result.status == "backend" and "abs" in result.detail, result
    assert run_cases(abs_case, target="reference")[0].status == PASSED  # the frontend and passes are fine
