"""benchmarks/profile_cpu.py runs and accounts for every launch: one row per launch of the
program, in launch order, with its group's FLOPs (a split group's pieces sharing them) and the
bytes it touches; the total adds up the rows. Speed is not judged (one tiny model, two runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import profile_cpu  # noqa: E402


def test_every_launch_is_a_row_with_its_flops():
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    import models

    import compiler

    module, example = models.mlp()
    compiled = compiler.compile(module, example, target="cpu", threads=2)
    rows = profile_cpu.launch_rows(compiled, [t.numpy() for t in example], runs=2)
    assert [r.kernel for r in rows] == [launch.kernel for launch in compiled.program.launches]
    assert all(r.seconds > 0 and r.median_s >= r.seconds for r in rows)
    matmuls = 2 * 4 * (32 * 64 + 64 * 64 + 64 * 10)  # and a few per element for bias, gelu and relu
    assert matmuls < sum(r.flops for r in rows) < 1.1 * matmuls
    assert rows[0].ops.startswith("gemm") and all(r.bytes_touched > 0 for r in rows)
    table = profile_cpu.table(rows)
    assert table.count("\n") == len(rows) + 2 and "| total |" in table


def test_the_command_line_prints_a_table_per_case(capsys):
    assert profile_cpu.main(["mlp", "--threads", "1", "--runs", "2", "--no-ort"]) == 0
    out = capsys.readouterr().out
    assert "## mlp (4x32), 1 thread(s)" in out and "Kiln plain run" in out
