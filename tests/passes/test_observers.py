"""The static-calibration observers (passes.observers) on known distributions, and choosing one
through `compile(..., calibration=..., observer=...)` or a `Calibration`."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
from ir import DType, GraphBuilder
from passes.observers import Calibration, entropy_threshold_bin, make_observer


def _range(observer: str, *arrays: np.ndarray, **options) -> tuple[float, float]:
    seen = make_observer(observer, **options)
    for array in arrays:
        seen.observe(array)
    return seen.range()


def _normal_with_outliers() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal(100_000)
    x[:3] = [40.0, -35.0, 50.0]
    return x


def test_minmax_is_the_extremes_over_every_set():
    assert _range("minmax", np.array([-1.5, 2.0]), np.array([[0.5, 3.25]]), np.array([np.nan, -2.0])) == (-2.0, 3.25)


def test_percentile_cuts_the_rare_outliers_that_minmax_keeps():
    x = _normal_with_outliers()
    assert _range("minmax", x) == (-35.0, 50.0)
    low, high = _range("percentile", x)
    assert (low, high) == pytest.approx(tuple(np.percentile(x, [0.01, 99.99])), rel=1e-9)
    assert -4.5 < low < -3.0 and 3.0 < high < 4.5  # ~3.7 sigma for 99.99 on a normal
    low, high = _range("percentile", np.random.default_rng(1).uniform(0.0, 1.0, 100_000), percentile=90.0)
    assert abs(low - 0.1) < 0.01 and abs(high - 0.9) < 0.01


def test_entropy_clips_a_normal_tail_but_keeps_a_uniform_range():
    low, high = _range("entropy", _normal_with_outliers())
    assert low == -high and 2.5 < high < 6.0  # TensorRT's KL threshold on a normal: a few sigma
    uniform = np.random.default_rng(2).uniform(-1.0, 1.0, 100_000)
    low, high = _range("entropy", uniform)
    assert low < -0.95 and high > 0.95  # nothing to gain by clipping a distribution without a tail
    assert _range("entropy", np.zeros(10)) == (0.0, 0.0)


def test_entropy_keeps_exactly_the_bins_that_hold_mass_when_128_levels_represent_them():
    histogram = np.zeros(2048)
    histogram[:100] = 5.0
    assert entropy_threshold_bin(histogram) == 128  # P == Q there: divergence 0, the first minimum
    histogram[1500] = 1e6  # a heavy far bin must be kept: clipping it would move most of the mass
    assert entropy_threshold_bin(histogram) > 1500


def test_unknown_observer_and_bad_options_are_errors():
    with pytest.raises(ValueError, match="observer must be one of"):
        make_observer("mse")
    with pytest.raises(ValueError, match="percentile"):
        Calibration([], observer="percentile", percentile=20.0)


def _linear_chain():
    """Three linear layers: the middle one is quantized (the first and last stay float)."""
    rng = np.random.default_rng(3)
    b = GraphBuilder("chain")
    x = b.input("x", (16, 8), DType.f32)
    for index in range(3):
        x = b.matmul(x, b.constant(rng.standard_normal((8, 8)).astype(np.float32), f"w{index}"))
    return b.build(x)


def test_compile_takes_the_observer_by_name_or_in_a_calibration():
    graph = _linear_chain()
    sets = [(np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32) * np.float32(s),) for s in (1, 1)]
    sets[1][0][0, 0] = 500.0  # one outlier in the first layer's input stretches what the middle layer sees
    reports = {}
    for observer in ("minmax", "percentile", "entropy"):
        compiled = compiler.compile(graph, precision="int8-static", calibration=sets, observer=observer)
        (quantized,) = compiled.stats["quantization"].quantized
        assert f"({observer} observer)" in quantized.how
        reports[observer] = float(quantized.how.split("scale ")[1].split(" ")[0])
    assert reports["percentile"] < reports["minmax"] and reports["entropy"] < reports["minmax"]
    compiled = compiler.compile(graph, precision="int8-static", calibration=Calibration(sets, "percentile", 99.0))
    assert "(percentile observer)" in compiled.stats["quantization"].quantized[0].how
    with pytest.raises(ValueError, match="observer= chooses"):
        compiler.compile(graph, precision="int8-static", observer="entropy")
