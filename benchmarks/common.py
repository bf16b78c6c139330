"""What every benchmark in `benchmarks/` shares: a time-boxed median timer, thread pinning of torch
and ONNX Runtime, one runner per contender (Kiln CPU, torch eager, torch.compile, ONNX Runtime),
and the markdown table printer.

A contender that cannot run a case (an export that fails, a compiler missing on this machine)
becomes a `Failure` that the table prints in its cell; a benchmark never crashes on one.

torch and onnxruntime are imported where they are used, so `import benchmarks.common` is cheap.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Budget:
    """How long one cell is timed. Timing stops once it has `min_runs` runs and `min_time_s` seconds,
    or `max_runs` runs, or `max_time_s` seconds (the time box: a slow cell gets fewer runs, never
    fewer than one). Warm-up calls come first and are not counted."""

    min_runs: int = 20
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    max_runs: int = 1000
    warmup_runs: int = 3


FULL = Budget()
QUICK = Budget(min_runs=5, min_time_s=0.2, max_time_s=1.5, max_runs=200, warmup_runs=2)
SMOKE = Budget(min_runs=1, min_time_s=0.0, max_time_s=0.5, max_runs=2, warmup_runs=1)
"""For tests: one or two calls, to prove the code path and nothing about speed."""


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median, the quartiles as a measure of noise, and the fastest call (on a
    busy machine, where every call may lose a time slice, the fastest is the better estimate)."""

    median_s: float
    q1_s: float
    q3_s: float
    runs: int
    min_s: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"median_s": self.median_s, "q1_s": self.q1_s, "q3_s": self.q3_s, "min_s": self.min_s,
                "runs": self.runs}  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """Why a contender has no number for a cell; printed in the cell."""

    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"failed": self.reason}


def failure(error: BaseException) -> Failure:
    """A one-line, cell-sized description of `error`."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip(": ")
    return Failure(text if len(text) <= 70 else text[:67] + "...")


def measure(fn: Callable[[], Any], budget: Budget = FULL, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time `fn()` within `budget` by `clock` (seconds). The garbage collector is off while timing,
    so a collection triggered by one contender's garbage is not billed to the next call."""
    box_start = clock()
    for _ in range(budget.warmup_runs):
        fn()
        if clock() - box_start > budget.max_time_s / 2:
            break  # a call this slow is its own warm-up: keep the rest of the box for timed runs
    times: list[float] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            before = clock()
            fn()
            after = clock()
            times.append(after - before)
            elapsed = after - start
            if len(times) >= budget.max_runs or elapsed >= budget.max_time_s:
                break
            if len(times) >= budget.min_runs and elapsed >= budget.min_time_s:
                break
    finally:
        if enabled:
            gc.enable()
    if len(times) == 1:
        return Timing(times[0], times[0], times[0], 1, times[0])
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Timing(statistics.median(times), q1, q3, len(times), min(times))


# Thread pinning: every contender gets the same number of threads.


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block (eager ops, and the OpenMP
    loops torch.compile's inductor writes, which read it when they are generated)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def ort_session_options(threads: int) -> Any:
    """ONNX Runtime options for `threads` intra-op threads and no inter-op parallelism (one graph
    runs at a time here, as it does for the other contenders)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


# Contenders. Each builder takes (module, example_inputs, threads) and returns a call with no
# arguments that runs the model once on those inputs. Building is not timed by `measure`.


def kiln_runner(module: Any, example_inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
    """Kiln's CPU target, called the way a user calls it (torch tensors in, torch tensors out).
    With as many threads as this process may use, Kiln runs at its default (`threads=None`: the
    worker pool starts only when a run is long enough to pay for waking it), as a user gets it."""
    import compiler

    default = threads == len(os.sched_getaffinity(0))
    fast = compiler.compile(module, example_inputs, target="cpu", threads=None if default else threads)
    return lambda: fast(*example_inputs)


def eager_runner(module: Any, example_inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
    del threads  # the caller runs this inside torch_threads
    return lambda: module(*example_inputs)


def torch_compile_runner(module: Any, example_inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
    """torch.compile with its default (inductor) backend, compiled here by one call so that the
    timed calls exclude compilation. Static shapes, and a reset first, so that earlier cases of
    other shapes do not turn this one into a dynamic-shape graph."""
    import torch

    torch._dynamo.reset()
    compiled = torch.compile(module, dynamic=False)
    with quiet():
        compiled(*example_inputs)
    return lambda: compiled(*example_inputs)


def export_onnx(module: Any, example_inputs: tuple[Any, ...]) -> bytes:
    """The model as ONNX bytes, exported by `torch.onnx.export` (the torch.export-based exporter),
    as the model tests export it, with the weights inside (no external data file, so the bytes are
    the whole model); its progress messages are silenced."""
    import torch

    with tempfile.TemporaryDirectory() as directory, quiet():
        path = Path(directory) / "model.onnx"
        torch.onnx.export(module, example_inputs, str(path), dynamo=True, verbose=False, external_data=False)
        return path.read_bytes()


def ort_runner(model: bytes, example_inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
    """ONNX Runtime's CPU provider on the exported `model` (bytes from `export_onnx`)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, ort_session_options(threads), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), example_inputs)}
    return lambda: session.run(None, feeds)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and inductor's chatter (stdout, warnings, torch loggers) so that
    stdout carries only the tables."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch._inductor", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# Reporting.


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def geometric_mean(values: Sequence[float | None]) -> float | None:
    """The geometric mean of the values present (None where none is)."""
    present = [v for v in values if v is not None and v > 0]
    if not present:
        return None
    return math.exp(sum(math.log(v) for v in present) / len(present))


def format_cell(value: Any, digits: int = 3) -> str:
    """A table cell: numbers with `digits` significant digits (no exponent below 1e6), `None` as
    '-', a `Failure` as its reason, anything else as str()."""
    match value:
        case None:
            return "-"
        case Failure(reason=reason):
            return reason.replace("|", "/")
        case bool():
            return str(value)
        case int():
            return str(value)
        case float() if math.isfinite(value):
            if value == 0:
                return "0"
            decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
            return f"{value:.{decimals}f}"
        case _:
            return str(value).replace("|", "/")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table; columns whose cells are all numbers (or missing) are right-aligned."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {row!r}")
    numeric = [
        all(isinstance(row[c], (int, float)) or row[c] is None for row in rows) and bool(rows)
        for c in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "".join(" ---: |" if n else " --- |" for n in numeric)]
    lines += ["| " + " | ".join(format_cell(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
