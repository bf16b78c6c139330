"""`irdump --precision int8-...` prints the quantization report: quantized and kept contractions (with
reasons) and the error against the float graph, on random inputs."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
from compiler.irdump import main
from ir import DType, GraphBuilder, print_graph


def _chain():
    rng = np.random.default_rng(3)
    b = GraphBuilder("chain")
    x = b.input("x", (16, 8), DType.f32)
    for index in range(3):
        x = b.matmul(x, b.constant(rng.standard_normal((8, 8)).astype(np.float32), f"w{index}"))
    return b.build(x)


@pytest.fixture
def chain(tmp_path):
    """Three linear layers in a .kiln file: the middle one is quantized, the first and last kept."""
    path = tmp_path / "chain.kiln"
    path.write_text(print_graph(_chain()))
    return path


@pytest.mark.parametrize("precision,observer", [("int8-dynamic", "minmax"), ("int8-static", "percentile")])
def test_int8_precision_prints_the_report_with_the_error(chain, capsys, precision, observer):
    argv = [str(chain), "-O2", "--precision", precision, "--observer", observer, "--summary-only"]
    assert main([*argv, "--calibration-sets", "2"]) == 0
    out = capsys.readouterr().out
    report = out[out.index("# quantization") :]
    assert f"quantize ({precision[5:]}): 1 contraction(s) int8, 2 kept in float" in report
    assert report.count("because first or last contraction") == 2
    assert "2 random normal input set(s)" in report
    assert "max abs" in report and "min cosine 0.99" in report and "top-1 agreement" in report
    assert (f"({observer} observer)" in report) == (precision == "int8-static")


def test_fp32_prints_no_report(chain, capsys):
    assert main([str(chain), "-O2", "--summary-only"]) == 0
    assert "# quantization" not in capsys.readouterr().out


def test_compile_measures_the_error_on_random_inputs_when_given_none():
    report = compiler.compile(_chain(), precision="int8-dynamic").stats["quantization"]
    assert report.measured_on == "1 random normal (no example or calibration inputs) input set(s)"
    assert len(report.accuracy) == 1 and 0.99 < report.accuracy[0].cosine < 1.0
