"""Issue 7's CPU benchmark suite, in one command and one process: Kiln's CPU target beside torch
eager, torch.compile (inductor) and ONNX Runtime, every contender on the same number of threads.

    .venv/bin/python benchmarks/cpu_suite.py [--quick] [--threads 2] [--out benchmarks/results]

Sections: (a) the model tests (tests/models/models.py) at their test shapes and at realistic sizes
(latency, and Kiln's ratio to each contender, with geometric means); (b) fp32 GEMM a @ b at 256-2048
on one thread and on --threads (GFLOP/s, and Kiln's % of torch eager's); (c) memory-bound ops:
copy (the machine's bandwidth, torch `copy_` into a preallocated tensor), x * 2, layer norm, softmax
and gelu(x @ W + b) with a narrow W (GB/s of the bytes each must read and write, and % of copy).

Each cell is the median of many calls after a warm-up, time-boxed (`common.Budget`); torch.compile's
compilation and ONNX export are excluded. A contender that fails, or computes a different result
than eager (relative error above 1e-3), gets the reason in its cell instead of a number.
Writes a markdown table to stdout and to OUT/cpu_suite[_quick].md, the raw numbers to .json and
a bar chart of the ratios to .png. benchmarks/README.md explains the columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from benchmarks.common import Failure, Timing  # noqa: E402
from benchmarks.cpu_cases import CONTENDERS, GEMM, MEMORY, MODELS, SECTIONS, Case, suite  # noqa: E402

LABELS = {"kiln": "Kiln CPU", "eager": "torch eager", "torch.compile": "torch.compile", "ort": "ONNX Runtime"}
TOLERANCE = 1e-3
"""Largest |contender - eager| / max |eager| that still counts as the same result."""


@dataclass
class CaseResult:
    case: Case
    shape: str
    outcomes: dict[str, Timing | Failure] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    """Seconds to get each contender ready: Kiln's compile, torch.compile's first call, export plus session."""
    errors: dict[str, float] = field(default_factory=dict)

    def seconds(self, contender: str) -> float | None:
        outcome = self.outcomes.get(contender)
        return outcome.median_s if isinstance(outcome, Timing) else None

    def cell(self, contender: str, scale: Callable[[float], float]) -> float | Failure | None:
        """The contender's number for a table (`scale` turns seconds into the column's unit)."""
        outcome = self.outcomes.get(contender)
        return scale(outcome.median_s) if isinstance(outcome, Timing) else outcome

    def as_dict(self) -> dict[str, Any]:
        case = self.case
        return {
            "section": case.section, "name": case.name, "group": case.group, "shape": self.shape,
            "threads": case.threads, "flops": case.flops, "bytes": case.bytes_moved,
            "contenders": {
                name: {**outcome.as_dict(), "build_s": self.build_s.get(name), "error": self.errors.get(name)}
                for name, outcome in self.outcomes.items()
            },
        }  # fmt: skip


# Running.


def _array(output: Any) -> np.ndarray:
    """The first output as a numpy array, whatever the contender returned."""
    while isinstance(output, (list, tuple)):
        output = output[0]
    return output.detach().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)


def relative_error(got: Any, expected: np.ndarray) -> float:
    got = _array(got)
    if got.shape != expected.shape:
        return math.inf
    return float(np.abs(got.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))


class Runner:
    """Runs cases one after another; keeps each exported ONNX model, so a GEMM timed on one
    thread and then on two is exported once."""

    def __init__(self, budget: common.Budget) -> None:
        self.budget = budget
        self._onnx: dict[tuple[str, str], bytes] = {}

    def builders(self, case: Case) -> dict[str, Callable[..., Callable[[], Any]]]:
        def ort(module: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
            key = (case.section, case.name)
            if key not in self._onnx:
                self._onnx[key] = common.export_onnx(module, inputs)
            return common.ort_runner(self._onnx[key], inputs, threads)

        return {"kiln": common.kiln_runner, "eager": common.eager_runner,
                "torch.compile": common.torch_compile_runner, "ort": ort}  # fmt: skip

    def run(self, case: Case) -> CaseResult:
        module, inputs = case.make()
        result = CaseResult(case, " ".join("x".join(map(str, t.shape)) for t in inputs))
        builders = self.builders(case)
        with common.torch_threads(case.threads), torch.no_grad():
            expected = _array(module(*inputs)).astype(np.float64)
            for name in case.contenders:
                try:
                    start = time.perf_counter()
                    call = builders[name](module, inputs, case.threads)
                    result.build_s[name] = time.perf_counter() - start
                    start = time.perf_counter()
                    result.errors[name] = relative_error(call(), expected)
                    if result.errors[name] > TOLERANCE:
                        result.outcomes[name] = Failure(f"wrong result (relative error {result.errors[name]:.1e})")
                        continue
                    budget = self.budget
                    if time.perf_counter() - start > budget.max_time_s / 2:  # that call was the warm-up
                        budget = dataclasses.replace(budget, warmup_runs=0)
                    result.outcomes[name] = common.measure(call, budget)
                except Exception as error:  # a contender that cannot run this case: say why in its cell
                    result.outcomes[name] = common.failure(error)
        if "torch.compile" in case.contenders:
            torch._dynamo.reset()  # drop this case's compiled graphs (and the weights they hold)
        return result


# Reporting.


def _ms(seconds: float) -> float:
    return seconds * 1e3


def model_table(results: Sequence[CaseResult]) -> str:
    rows: list[list[Any]] = []
    others = CONTENDERS[1:]
    for r in results:
        kiln = r.seconds("kiln")
        cells = [r.cell(c, _ms) for c in CONTENDERS]
        rows.append([r.case.name, r.shape, *cells, *(common.ratio(kiln, r.seconds(c)) for c in others)])
    for group in ("test", "realistic", None):
        chosen = [r for r in results if group is None or r.case.group == group]
        if chosen:
            means = [common.geometric_mean([common.ratio(r.seconds("kiln"), r.seconds(c)) for r in chosen])
                     for c in others]  # fmt: skip
            rows.append([f"**geometric mean** ({group or 'all'})", "", None, None, None, None, *means])
    headers = ["model", "input", *(f"{LABELS[c]} (ms)" for c in CONTENDERS), *(f"Kiln / {LABELS[c]}" for c in others)]
    return common.markdown_table(headers, rows)


def gemm_table(results: Sequence[CaseResult]) -> str:
    rows = []
    for r in results:
        rate = lambda seconds, r=r: r.case.flops / seconds / 1e9
        percent = common.ratio(r.seconds("eager"), r.seconds("kiln"))
        rows.append([r.case.name, r.case.threads, *(r.cell(c, rate) for c in CONTENDERS),
                     None if percent is None else 100 * percent])  # fmt: skip
    headers = ["n", "threads", *(f"{LABELS[c]} GFLOP/s" for c in CONTENDERS), "Kiln % of torch"]
    return common.markdown_table(headers, rows)


def copy_bandwidth(results: Sequence[CaseResult]) -> float | None:
    """The reference for the memory-bound ops: the better median GB/s of the copies of the ops' size
    (the smallest reference rows). Medians, because a fastest call can find its data still in the
    last-level cache; the better of --threads and one thread, because on a busy machine the
    threaded copy waits for preempted threads at its barrier and the single thread does not."""
    copies = [r for r in results if r.case.section == MEMORY and r.case.is_reference]
    copies = [r for r in copies if r.case.bytes_moved == min(c.case.bytes_moved for c in copies)]
    return max((r.case.bytes_moved / s / 1e9 for r in copies if (s := r.seconds("eager"))), default=None)


def memory_table(results: Sequence[CaseResult]) -> str:
    copy = copy_bandwidth(results)
    rows = []
    for r in results:
        bandwidth = lambda seconds, r=r: r.case.bytes_moved / seconds / 1e9
        kiln = r.cell("kiln", bandwidth)
        percent = 100 * kiln / copy if isinstance(kiln, float) and copy else None
        rows.append([r.case.name, r.shape, r.case.bytes_moved / 1e6, *(r.cell(c, bandwidth) for c in CONTENDERS),
                     percent, common.ratio(r.seconds("kiln"), r.seconds("eager"))])  # fmt: skip
    headers = ["op", "input", "MB moved", *(f"{LABELS[c]} GB/s" for c in CONTENDERS), "Kiln % of copy", "Kiln / eager"]
    note = f"Kiln % of copy: Kiln's GB/s over the better copy of the ops' size, {common.format_cell(copy)} GB/s."
    return common.markdown_table(headers, rows) + "\n\n" + note


def report(results: Sequence[CaseResult], header: str) -> str:
    """The whole run as markdown: a header line, then one table per section that ran."""
    parts = [header]
    for section, title, table in (
        (MODELS, "Models: median latency; Kiln's time over each contender's (below 1: Kiln is faster)", model_table),
        (GEMM, "fp32 GEMM a @ b (n x n x n): GFLOP/s", gemm_table),
        (MEMORY, "Memory-bound ops: GB/s of the bytes each must move; copy is the machine's bandwidth", memory_table),
    ):
        chosen = [r for r in results if r.case.section == section]
        if chosen:
            parts.append(f"### {title}\n\n{table(chosen)}")
    return "\n\n".join(parts) + "\n"


def plot(results: Sequence[CaseResult], path: Path) -> None:
    """A PNG of the ratios: model latency over each contender's (log scale), GEMM % of torch, memory
    ops % of copy. Missing numbers leave gaps."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    sections = [s for s in SECTIONS if any(r.case.section == s for r in results)]
    figure, axes = pyplot.subplots(len(sections), 1, figsize=(11, 3.6 * len(sections)), squeeze=False)
    copy = copy_bandwidth(results)
    for axis, section in zip(axes[:, 0], sections):
        chosen = [r for r in results if r.case.section == section and not r.case.is_reference]
        if section == MODELS:
            series = {f"Kiln / {LABELS[c]}": [common.ratio(r.seconds("kiln"), r.seconds(c)) for r in chosen]
                      for c in CONTENDERS[1:]}  # fmt: skip
            labels = [r.case.name for r in chosen]
            axis.set_yscale("log")
            axis.axhline(1.0, color="black", linewidth=0.8)
            axis.set_ylabel("latency ratio (lower: Kiln faster)")
        elif section == GEMM:
            series = {"Kiln % of torch eager": [100 * (common.ratio(r.seconds("eager"), r.seconds("kiln")) or math.nan)
                                                for r in chosen]}  # fmt: skip
            labels = [f"{r.case.name}, {r.case.threads}T" for r in chosen]
            axis.axhline(80, color="black", linewidth=0.8, linestyle="--")
            axis.set_ylabel("% of torch's GFLOP/s")
        else:
            series = {LABELS[c]: [100 * r.case.bytes_moved / s / 1e9 / copy if (s := r.seconds(c)) and copy else None
                                  for r in chosen] for c in CONTENDERS}  # fmt: skip
            labels = [r.case.name for r in chosen]
            axis.axhline(70, color="black", linewidth=0.8, linestyle="--")
            axis.set_ylabel("% of copy bandwidth")
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            heights = [math.nan if v is None else v for v in values]
            axis.bar(np.arange(len(labels)) + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
        axis.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        axis.legend(fontsize=8)
        axis.set_title(section)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def machine(threads: int) -> dict[str, Any]:
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "load_after": os.getloadavg()[0]}  # fmt: skip


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def write_outputs(results: Sequence[CaseResult], info: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    """OUT/STEM.md (the tables), .json (every number) and .png (the chart); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{stem}.{kind}" for kind in ("md", "json", "png")}
    header = (f"Kiln CPU suite on {info['cpu']} ({info['cores']} cores), {info['threads']} threads; "
              f"torch {info['torch']}, onnxruntime {info['onnxruntime']}; load average "
              f"{info['load_before']:.1f} before, {info['load_after']:.1f} after; {info['seconds']:.0f} s")  # fmt: skip
    paths["md"].write_text(report(results, header))
    paths["json"].write_text(json.dumps({"machine": info, "cases": [r.as_dict() for r in results]}, indent=1))
    plot(results, paths["png"])
    return paths


def load_results(path: Path) -> tuple[list[CaseResult], dict[str, Any]]:
    """The results and machine information of a run's JSON, for drawing its tables and chart again
    (the cases cannot run again: they have no model)."""
    saved = json.loads(path.read_text())
    results = []
    for entry in saved["cases"]:
        contenders = entry["contenders"]
        case = Case(entry["section"], entry["name"], make=None, threads=entry["threads"], group=entry["group"],
                    flops=entry["flops"], bytes_moved=entry["bytes"], contenders=tuple(contenders))  # fmt: skip
        result = CaseResult(case, entry["shape"])
        for name, data in contenders.items():
            if "failed" in data:
                result.outcomes[name] = Failure(data["failed"])
            else:
                fields = ("median_s", "q1_s", "q3_s", "runs", "min_s")
                result.outcomes[name] = Timing(*(data[f] for f in fields))
            result.build_s[name], result.errors[name] = data["build_s"], data["error"]
        results.append(result)
    return results, saved["machine"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced set with shorter timing, in under 2 minutes")
    parser.add_argument("--threads", type=int, default=2, help="threads for every contender (GEMM also runs on 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--redraw", type=Path, metavar="JSON", help="only write the tables and chart of a saved run")
    args = parser.parse_args(argv)
    if args.redraw:
        results, info = load_results(args.redraw)
        paths = write_outputs(results, info, args.out, args.redraw.stem)
        print(paths["md"].read_text())
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's deprecation notices, on every compile
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f}: other processes compete for the cores; numbers will be noisy",
              file=sys.stderr)  # fmt: skip
    budget = common.QUICK if args.quick else common.FULL
    runner = Runner(budget)
    results = []
    start = time.perf_counter()
    for case in suite(args.threads, args.quick, args.sections):
        results.append(runner.run(case))
        done = " ".join(f"{c}={common.format_cell(results[-1].cell(c, _ms))}" for c in case.contenders)
        print(f"[{time.perf_counter() - start:6.1f} s] {case.section} {case.name} ({case.threads}T): {done} ms",
              file=sys.stderr, flush=True)  # fmt: skip
    info = machine(args.threads) | {"quick": args.quick, "seconds": time.perf_counter() - start, "load_before": load}
    paths = write_outputs(results, info, args.out, "cpu_suite_quick" if args.quick else "cpu_suite")
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {info['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
