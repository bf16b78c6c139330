"""The ONNX conformance runner: ONNX's own backend node test cases through Kiln (or ONNX Runtime).

    python -m compiler.conformance [--target reference|cpu] [--runtime kiln|onnxruntime] [--ops Add,Relu]

The cases ship inside the `onnx` package and are generated in memory by
`onnx.backend.test.case.node.collect_testcases()`: each is a small model with input and expected
output arrays and a tolerance. Each case is imported and run through `compiler.compile(model,
target=...)` (or an `onnxruntime.InferenceSession`, for the count beside ours) and its outputs
are compared as ONNX's backend test compares them: same dtype and shape, values within
`rtol`/`atol` (1e-3 and 1e-7 unless the case says otherwise). Every failure is caught and
classified, so one run gives a per-op table of what passes and why the rest does not. CI runs it
(`tests/conformance`) against a floor per target that only rises. On a compiled target (`cpu`) the
runner also runs the reference target, which is the oracle, and lists the cases that pass there
but not on the compiled target, with the reason (`differences`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PASSED = "passed"
STATUSES = (PASSED, "unsupported", "opset", "model", "shape", "mismatch", "backend", "error", "crash")
"""How a case ends: passed; an op, attribute or dtype Kiln does not support; an opset it cannot
read; a model it rejects as malformed; a shape error; wrong numbers (or dtype, or shape); an
error raised while lowering, compiling or running a compiled target's code (in `backends` or
`runtime`, of any type); another Kiln error (e.g. in the interpreter); an exception that is not
Kiln's (a bug)."""

_BACKEND_PACKAGES = ("backends", "runtime")
"""The packages whose errors are the "backend" kind: lowering, code generation, the JIT, the executor."""
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CaseResult:
    name: str
    op: str
    """The ONNX op the case tests (from its name), e.g. LayerNormalization for an _expanded case too."""
    status: str
    detail: str = ""
    seconds: float = 0.0


def collect_cases() -> list[Any]:
    """ONNX's node test cases (onnx 1.23: 1,884 of them), generated in memory."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        return [case for case in collect_testcases() if case.data_sets]


def _arrays(values: Sequence[Any]) -> list[Any]:
    """Data-set values as numpy arrays: some cases store TensorProtos (bf16, float8 data)."""
    from onnx import TensorProto, numpy_helper

    return [numpy_helper.to_array(v) if isinstance(v, TensorProto) else v for v in values]


def data_sets(case: Any) -> list[tuple[list[Any], list[Any]]]:
    return [(_arrays(inputs), _arrays(outputs)) for inputs, outputs in case.data_sets]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _op_names() -> list[tuple[str, str]]:
    import onnx.defs

    names = {s.name for s in onnx.defs.get_all_schemas_with_history()}
    return sorted(((_snake(n), n) for n in names), key=lambda pair: -len(pair[0]))


def case_op(case: Any, op_names: list[tuple[str, str]]) -> str:
    """The op a case tests: the op type whose snake_case name starts its test name (the longest
    such), else the op of its last node."""
    name = case.name.removeprefix("test_")
    for snake, op in op_names:
        if name == snake or name.startswith(snake + "_"):
            return op
    return case.model.graph.node[-1].op_type if case.model.graph.node else "?"


def _compare(actual: Sequence[Any], expected: Sequence[Any], rtol: float, atol: float) -> str:
    """Empty when the outputs match as ONNX's backend test requires, else what differs."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for index, (got, want) in enumerate(zip(actual, expected)):
        if isinstance(want, (list, dict)) or want is None:
            return f"output {index} is a {type(want).__name__}, which Kiln cannot give"
        got, want = np.asarray(got), np.asarray(want)
        if got.dtype != want.dtype:
            return f"output {index} is {got.dtype}, expected {want.dtype}"
        if got.shape != want.shape:
            return f"output {index} has shape {list(got.shape)}, expected {list(want.shape)}"
        if want.dtype == object:
            equal = np.array_equal(got, want)
        else:
            try:
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
                equal = True
            except AssertionError as error:
                return f"output {index} differs: {str(error).strip().splitlines()[-1]}"
        if not equal:
            return f"output {index} differs"
    return ""


def _raised_in_backend(error: BaseException) -> bool:
    """Whether any frame between the runner and the raise lies in `backends` or `runtime`: the
    graph was imported and optimised, and making or running its code failed."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(_ROOT) and path.relative_to(_ROOT).parts[0] in _BACKEND_PACKAGES:
            return True
    return False


def _classify(error: BaseException) -> str:
    from compiler import errors

    if _raised_in_backend(error):
        return "backend"
    if isinstance(error, errors.UnsupportedOperatorError):
        return "unsupported"
    if isinstance(error, errors.UnsupportedOpsetError):
        return "opset"
    if isinstance(error, errors.ModelFormatError):
        return "model"
    if isinstance(error, errors.ShapeError):
        return "shape"
    if isinstance(error, errors.KilnError):
        return "error"
    return "crash"


FROZEN = " (inputs fixed at import: {})"


def run_kiln(case: Any, target: str, threads: int | None = None) -> tuple[str, str]:
    """Compile and run each data set (a compiled target on `threads` workers). Where the model
    computes a shape (axes, pads, ...) from an input, which ONNX's node tests often do and Kiln's
    static shapes cannot take, that input is fixed to the data set's value at import
    (`constant_inputs`) and the detail says so."""
    import compiler
    from compiler.errors import StaticInputError
    from compiler.frontends.onnx import import_onnx

    names = _input_names(case.model)
    frozen: set[str] = set()
    for inputs, expected in data_sets(case):
        given = dict(zip(names, inputs))
        while True:
            try:
                # The data set's shapes fix any dynamic dims of the inputs that remain.
                examples = [given[n] for n in names if n not in frozen]
                imported = import_onnx(
                    case.model, example_inputs=examples, constant_inputs={n: given[n] for n in frozen}
                )
                break
            except StaticInputError as error:
                if not error.graph_inputs or set(error.graph_inputs) <= frozen:
                    raise
                frozen |= set(error.graph_inputs)
        compiled = compiler.compile(imported.graph, target=target, threads=threads)
        actual = compiled(*(given[n] for n in names if n not in frozen))
        actual = list(actual) if isinstance(actual, tuple) else [actual]
        problem = _compare(actual, expected, case.rtol, case.atol)
        if problem:
            return "mismatch", problem
    return PASSED, FROZEN.format(", ".join(sorted(frozen))) if frozen else ""


def _input_names(model: Any) -> list[str]:
    initialized = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initialized]


def run_onnxruntime(case: Any, target: str, threads: int | None = None) -> tuple[str, str]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for inputs, expected in data_sets(case):
        actual = session.run(None, dict(zip(names, inputs)))
        problem = _compare(actual, expected, case.rtol, case.atol)
        if problem:
            return "mismatch", problem
    return PASSED, ""


RUNTIMES = {"kiln": run_kiln, "onnxruntime": run_onnxruntime}


def run_cases(
    cases: Iterable[Any] | None = None,
    *,
    target: str = "reference",
    runtime: str = "kiln",
    ops: Iterable[str] | None = None,
    threads: int | None = None,
) -> list[CaseResult]:
    """Every case's result, in order; `ops` keeps only the cases of those ops; `threads` is a
    compiled target's worker count (default: the executor's, one per core)."""
    run = RUNTIMES[runtime]
    cases = collect_cases() if cases is None else list(cases)
    op_names = _op_names()
    wanted = set(ops) if ops else None
    results = []
    for case in cases:
        op = case_op(case, op_names)
        if wanted is not None and op not in wanted:
            continue
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                status, detail = run(case, target, threads)
        except Exception as error:  # every failure is one case's result, never the run's end
            status, detail = _classify(error) if runtime == "kiln" else "error", f"{type(error).__name__}: {error}"
        results.append(CaseResult(case.name, op, status, detail, time.perf_counter() - start))
    return results


def differences(reference: Sequence[CaseResult], results: Sequence[CaseResult]) -> list[CaseResult]:
    """The results of the cases that pass on the reference target (in `reference`) but not in
    `results`, in order: what a compiled target still gets wrong, each with its reason."""
    oracle = {r.name for r in reference if r.status == PASSED}
    return [r for r in results if r.name in oracle and r.status != PASSED]


def describe(result: CaseResult) -> str:
    """One line: the case, its op, how it ended and why."""
    reason = result.detail.splitlines()[0][:300] if result.detail else ""
    return f"{result.name} [{result.op}] {result.status}" + (f": {reason}" if reason else "")


def summarize(results: Sequence[CaseResult]) -> str:
    """A per-op table (passed/total and the failure kinds) and the totals."""
    by_op: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_op[result.op].append(result)
    width = max((len(op) for op in by_op), default=2)
    lines = [f"{'op':<{width}}  passed/total  failures"]
    for op in sorted(by_op):
        group = by_op[op]
        passed = sum(r.status == PASSED for r in group)
        failures = Counter(r.status for r in group if r.status != PASSED)
        shown = ", ".join(f"{status} {count}" for status, count in sorted(failures.items()))
        lines.append(f"{op:<{width}}  {passed:>6}/{len(group):<5}  {shown}")
    totals = Counter(r.status for r in results)
    passed = totals.pop(PASSED, 0)
    frozen = sum(r.status == PASSED and r.detail.startswith(FROZEN[:10]) for r in results)
    lines.append("")
    lines.append(
        f"total: {passed} of {len(results)} cases passed"
        + (f" ({frozen} with shape-giving inputs fixed at import)" if frozen else "")
        + (f" ({', '.join(f'{s} {c}' for s, c in sorted(totals.items()))})" if totals else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compiler.conformance", description="Run ONNX's backend node test cases through Kiln."
    )
    parser.add_argument("--target", default="reference", help="the Kiln target (default: reference)")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="kiln", help="kiln, or onnxruntime to compare")
    parser.add_argument("--ops", default=None, help="comma-separated ONNX op types to run (default: all)")
    parser.add_argument("--failures", action="store_true", help="also list every failing case with its reason")
    parser.add_argument("--threads", type=int, default=None, help="a compiled target's workers (default: one per core)")
    args = parser.parse_args(argv)
    from compiler.api import TARGETS

    if args.target not in TARGETS:
        parser.error(f"unknown target {args.target!r}; Kiln has {', '.join(TARGETS)}")
    ops = [op.strip() for op in args.ops.split(",")] if args.ops else None
    start = time.perf_counter()
    cases = collect_cases()
    results = run_cases(cases, target=args.target, runtime=args.runtime, ops=ops, threads=args.threads)
    elapsed = time.perf_counter() - start
    print(summarize(results))
    if args.failures:
        print()
        for result in results:
            if result.status != PASSED:
                print(describe(result))
    if args.runtime == "kiln" and args.target != "reference":
        reference = run_cases(cases, target="reference", ops=ops)
        missing = differences(reference, results)
        print(f"\n{len(missing)} of {sum(r.status == PASSED for r in reference)} cases that pass on the reference "
              f"target fail on {args.target}" + (":" if missing else ""))  # fmt: skip
        for result in missing:
            print("  " + describe(result))
    print(f"({args.runtime}, target {args.target}: {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
