"""The benchmark code runs and reports what it claims: the timer keeps to its budget, the table
printer formats and aligns, the suite's tables compute their ratios, bandwidths and geometric
means from the medians, the runner turns a failing or wrong contender into a cell that says so,
and a run on tiny cases writes the markdown, JSON and PNG. Nothing here judges speed (timing
belongs in benchmarks/, never in a test's pass/fail): sizes are tiny and each cell runs once or
twice."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import common, cpu_cases, cpu_suite  # noqa: E402
from benchmarks.common import Budget, Failure, Timing  # noqa: E402
from benchmarks.cpu_cases import GEMM, MEMORY, MODELS, Case  # noqa: E402
from benchmarks.cpu_suite import CaseResult  # noqa: E402


class FakeClock:
    """A clock that each call of `work` moves on by the next of `durations`."""

    def __init__(self, durations: list[float]) -> None:
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_measure_takes_the_median_after_the_warm_up():
    clock = FakeClock([9.0, 9.0, 1.0, 3.0, 2.0, 5.0, 4.0])  # two slow warm-up calls, then five timed
    budget = Budget(min_runs=5, min_time_s=0.0, max_time_s=100.0, max_runs=5, warmup_runs=2)
    timing = common.measure(clock.work, budget, clock=clock)
    assert clock.calls == 7
    assert timing.runs == 5 and timing.median_s == 3.0 and timing.q1_s == 2.0 and timing.q3_s == 4.0
    assert timing.min_s == 1.0


def test_measure_runs_until_both_minimums_are_met():
    clock = FakeClock([0.125])  # exact in binary, so eight calls are exactly 1 s
    timing = common.measure(clock.work, Budget(min_runs=3, min_time_s=1.0, max_time_s=100.0, warmup_runs=0), clock)
    assert timing.runs == 8  # 3 runs were not yet 1 s
    assert timing.median_s == 0.125


def test_measure_stops_at_the_time_box_with_at_least_one_run():
    clock = FakeClock([5.0])
    timing = common.measure(clock.work, Budget(min_runs=20, min_time_s=1.0, max_time_s=2.0, warmup_runs=3), clock)
    assert clock.calls == 2  # one warm-up call past half the box ends the warm-up; one timed call ends the box
    assert timing.runs == 1 and timing.median_s == 5.0


def test_markdown_table_aligns_numbers_and_formats_cells():
    table = common.markdown_table(
        ["name", "ms", "ratio"], [["a|b", 0.012345, None], ["c", 1234.5, 2.0], ["d", Failure("boom"), 0.5]]
    )
    lines = table.splitlines()
    assert lines[0] == "| name | ms | ratio |"
    assert lines[1] == "| --- | --- | ---: |"  # a Failure makes the ms column text
    assert lines[2] == "| a/b | 0.0123 | - |"
    assert lines[3].startswith("| c | 1234") and lines[3].endswith("| 2.00 |")
    assert lines[4] == "| d | boom | 0.500 |"
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        common.markdown_table(["a", "b", "c"], [[1, 2]])


def test_ratio_geometric_mean_and_failure_text():
    assert common.ratio(3.0, 1.5) == 2.0 and common.ratio(None, 1.0) is None and common.ratio(1.0, 0.0) is None
    assert common.geometric_mean([2.0, 8.0, None]) == pytest.approx(4.0)
    assert common.geometric_mean([None]) is None
    reason = common.failure(RuntimeError("first line\nsecond line " + "x" * 100)).reason
    assert reason == "RuntimeError: first line"
    assert len(common.failure(ValueError("y" * 200)).reason) == 70


def _result(section: str, name: str, seconds: dict[str, float | Failure], **case_fields) -> CaseResult:
    case = Case(section, name, make=lambda: None, threads=case_fields.pop("threads", 2), **case_fields)
    outcomes = {k: v if isinstance(v, Failure) else Timing(v, v, v, 3) for k, v in seconds.items()}
    return CaseResult(case, "4x4", outcomes)


def _row(table: str, first_cell: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_model_table_ratios_and_geometric_means():
    results = [
        _result(MODELS, "a", {"kiln": 2e-3, "eager": 1e-3, "torch.compile": 4e-3, "ort": 1e-3}, group="test"),
        _result(MODELS, "b", {"kiln": 1e-3, "eager": 4e-3, "torch.compile": Failure("no"), "ort": 2e-3}, group="test"),
        _result(MODELS, "c", {"kiln": 3e-3, "eager": 1e-3, "torch.compile": 1e-3, "ort": 3e-3}, group="realistic"),
    ]
    table = cpu_suite.model_table(results)
    assert _row(table, "a")[2:] == ["2.00", "1.00", "4.00", "1.00", "2.00", "0.500", "2.00"]
    assert _row(table, "b")[4] == "no" and _row(table, "b")[7] == "-"
    test_means = _row(table, "**geometric mean** (test)")
    assert test_means[6:] == ["0.707", "0.500", "1.00"]  # sqrt(2 * 0.25); 0.5 alone (b failed); sqrt(2 * 0.5)
    all_means = _row(table, "**geometric mean** (all)")
    assert float(all_means[6]) == pytest.approx((2 * 0.25 * 3) ** (1 / 3), rel=1e-2)


def test_gemm_and_memory_tables_convert_medians_to_rates():
    gemm = _result(GEMM, "256", {"kiln": 0.002, "eager": 0.001, "torch.compile": 0.001, "ort": 0.004}, flops=2e8)
    assert _row(cpu_suite.gemm_table([gemm]), "256")[2:] == ["100", "200", "200", "50.0", "50.0"]
    copy = _result(MEMORY, "copy", {"eager": 0.002}, bytes_moved=4e7, contenders=("eager",))
    copy.outcomes["eager"] = Timing(0.002, 0.0015, 0.003, 9, min_s=0.001)  # medians count, not fastest calls
    one = _result(MEMORY, "copy, 1 thread", {"eager": 0.0016}, bytes_moved=4e7, contenders=("eager",))
    dram = _result(MEMORY, "copy (4x, DRAM)", {"eager": 0.002}, bytes_moved=1.6e8, contenders=("eager",))
    softmax = _result(MEMORY, "softmax", {"kiln": 0.004, "eager": 0.002, "ort": Failure("x")}, bytes_moved=4e7)
    assert cpu_suite.copy_bandwidth([copy, one, dram, softmax]) == pytest.approx(25.0)  # not 80: dram is larger
    table = cpu_suite.memory_table([copy, one, dram, softmax])
    assert _row(table, "copy")[4] == "20.0"  # the row itself shows the median, as every row does
    assert _row(table, "softmax")[2:] == ["40.0", "10.0", "20.0", "-", "x", "40.0", "2.00"]
    assert table.endswith("the better copy of the ops' size, 25.0 GB/s.")


def test_plot_writes_a_png_with_every_section(tmp_path):
    pytest.importorskip("matplotlib")
    results = [
        _result(MODELS, "m", {"kiln": 2e-3, "eager": 1e-3, "torch.compile": Failure("no"), "ort": 1e-3}),
        _result(GEMM, "64", {"kiln": 1e-3, "eager": 1e-3}, flops=1e6),
        _result(MEMORY, "copy", {"eager": 1e-3}, bytes_moved=1e6, contenders=("eager",)),
        _result(MEMORY, "x * 2", {"kiln": 2e-3, "eager": 1e-3}, bytes_moved=1e6),
    ]
    path = tmp_path / "chart.png"
    cpu_suite.plot(results, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000 and height > 3 * 300  # three panels, one per section


class _Doubled(torch.nn.Module):
    def forward(self, x):
        return x * 2


def test_runner_reports_failing_and_wrong_contenders_in_their_cells():
    class Runner(cpu_suite.Runner):
        def builders(self, case):
            def boom(module, inputs, threads):
                raise RuntimeError("no compiler here")

            wrong = lambda module, inputs, threads: lambda: inputs[0] * 3
            return {"eager": common.eager_runner, "boom": boom, "wrong": wrong}

    make = lambda: (_Doubled(), (torch.ones(4, 4),))
    case = Case(MODELS, "doubled", make, threads=1, contenders=("eager", "boom", "wrong"))
    result = Runner(common.SMOKE).run(case)
    assert isinstance(result.outcomes["eager"], Timing) and result.errors["eager"] == 0.0
    assert result.outcomes["boom"] == Failure("RuntimeError: no compiler here")
    assert result.outcomes["wrong"].reason.startswith("wrong result (relative error 5.0e-01")


def test_tiny_suite_runs_kiln_and_eager_and_writes_every_output(tmp_path):
    """The real builders (Kiln's compile, eager) on one case per section, through to the files."""
    only, kept = ("kiln", "eager"), {"copy", "copy (4x, DRAM)", "x * 2"}
    memory = cpu_cases.memory_cases(8, 16, threads=1)
    cases = [
        Case(MODELS, "mlp", cpu_cases.models.MODELS["mlp"], threads=1, group="test", contenders=only),
        *(dataclasses.replace(c, contenders=only) for c in cpu_cases.gemm_cases([16], [1])),
        *(c if c.is_reference else dataclasses.replace(c, contenders=only) for c in memory if c.name in kept),
    ]
    runner = cpu_suite.Runner(common.SMOKE)
    results = [runner.run(case) for case in cases]
    for result in results:
        assert set(result.outcomes) == set(result.case.contenders)
        for name, outcome in result.outcomes.items():
            assert isinstance(outcome, Timing), (result.case.name, name, outcome)
            assert result.errors[name] < cpu_suite.TOLERANCE
    info = {"cpu": "test", "cores": 1, "threads": 1, "torch": "t", "onnxruntime": "o", "load_before": 0.0,
            "load_after": 0.0, "seconds": 1.0}  # fmt: skip
    pytest.importorskip("matplotlib")
    paths = cpu_suite.write_outputs(results, info, tmp_path, "tiny")
    text = paths["md"].read_text()
    assert "### Models" in text and "### fp32 GEMM" in text and "### Memory-bound" in text
    assert "| mlp | 4x32 |" in text and "| 16 | 1 |" in text and "| x * 2 | 8x16 |" in text
    saved = json.loads(paths["json"].read_text())
    assert [c["name"] for c in saved["cases"]] == [c.name for c in cases]
    eager = saved["cases"][0]["contenders"]["eager"]
    assert eager["runs"] >= 1 and math.isfinite(eager["median_s"]) and eager["error"] == 0.0
    assert paths["png"].stat().st_size > 0
    redrawn, redrawn_info = cpu_suite.load_results(paths["json"])  # --redraw: the same tables from the JSON
    assert redrawn_info == info
    assert cpu_suite.write_outputs(redrawn, info, tmp_path / "again", "tiny")["md"].read_text() == text


@pytest.mark.slow
def test_all_four_contenders_run_a_tiny_model():
    """torch.compile (inductor compiles C++) and the ONNX export are the slow part: seconds each."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = cpu_suite.Runner(common.SMOKE).run(Case(MODELS, "mlp", cpu_cases.models.MODELS["mlp"], threads=1))
    for name in ("eager", "torch.compile", "ort"):
        assert isinstance(result.outcomes[name], Timing), (name, result.outcomes[name])
        assert result.errors[name] < cpu_suite.TOLERANCE
    assert set(result.outcomes) == set(cpu_cases.CONTENDERS)
