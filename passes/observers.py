"""Observers for static int8 calibration: from the values an activation takes on the calibration
inputs, the range [low, high] that its scale and zero point cover (`passes.quantize`, mode static).

- `minmax`: the smallest and largest value seen. Every value is representable, but one outlier
  stretches the scale for all the others.
- `percentile`: the `percentile`-th and (100 - `percentile`)-th percentiles of all values seen
  (99.99 by default): the rare extremes saturate, the bulk gets finer steps.
- `entropy`: TensorRT's KL-divergence calibration. A histogram of |x| (`bins` bins up to max |x|);
  for each candidate threshold t (128 .. `bins` bins), the distribution P clipped at t (the tail
  folded into the last bin) is compared with Q, the same bins merged into 128 levels and spread
  back evenly over their non-empty bins; the t with the smallest KL(P || Q) wins. Symmetric: the
  range is [-t, t], cut to what was seen ([max(min, -t), min(max, t)]).

Each observer sees every calibration set's values in turn (`observe`) and gives the range at the end
(`range`). A `Calibration` bundles input sets with the observer and its options, for
`compile(..., calibration=Calibration(sets, observer="entropy"))`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ir import Graph, Value, run_all

OBSERVERS = ("minmax", "percentile", "entropy")
QUANTIZED_LEVELS = 128
"""Entropy calibration's target: the levels on one side of a symmetric 8-bit range."""


@dataclass(frozen=True)
class Calibration:
    """Calibration input sets and how ranges are taken from them."""

    sets: Sequence[Any]
    """Input sets, each like `example_inputs` (a sequence, or a mapping by input name)."""
    observer: str = "minmax"
    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        check_observer(self.observer, self.percentile, self.bins)


def check_observer(observer: str, percentile: float = 99.99, bins: int = 2048) -> None:
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if bins < QUANTIZED_LEVELS:
        raise ValueError(f"entropy calibration needs at least {QUANTIZED_LEVELS} bins, got {bins}")


class Observer:
    """Collects the values of one tensor over the calibration sets."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def observe(self, array: np.ndarray) -> None:
        self.seen.append(np.asarray(array, dtype=np.float64).ravel())

    def values(self) -> np.ndarray:
        values = np.concatenate(self.seen) if self.seen else np.zeros(1)
        finite = values[np.isfinite(values)]
        return finite if finite.size else np.zeros(1)

    def range(self) -> tuple[float, float]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    def range(self) -> tuple[float, float]:
        values = self.values()
        return float(values.min()), float(values.max())


class PercentileObserver(Observer):
    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        values = self.values()
        low, high = np.percentile(values, [100.0 - self.percentile, self.percentile])
        return float(low), float(high)


class EntropyObserver(Observer):
    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.bins = bins

    def range(self) -> tuple[float, float]:
        values = self.values()
        low, high = float(values.min()), float(values.max())
        peak = max(abs(low), abs(high))
        if peak == 0.0:
            return low, high
        histogram, edges = np.histogram(np.abs(values), bins=self.bins, range=(0.0, peak))
        threshold = edges[entropy_threshold_bin(histogram)]
        return max(low, -float(threshold)), min(high, float(threshold))


def entropy_threshold_bin(histogram: np.ndarray, levels: int = QUANTIZED_LEVELS) -> int:
    """The number of histogram bins to keep (the clipping threshold is that bin's upper edge)
    that minimises KL(P || Q) between the clipped histogram P and its `levels`-level quantization Q."""
    histogram = histogram.astype(np.float64)
    best, best_bins = np.inf, len(histogram)
    for kept in range(levels, len(histogram) + 1):
        reference = histogram[:kept].copy()
        reference[-1] += histogram[kept:].sum()  # the clipped tail saturates into the last bin
        used = histogram[:kept] != 0
        # Merge the kept bins into `levels` groups, then spread each group's count evenly back over its
        # non-empty bins: what an 8-bit grid over [0, threshold] can represent.
        groups = np.minimum((np.arange(kept) * levels) // kept, levels - 1)
        totals = np.bincount(groups, weights=histogram[:kept], minlength=levels)
        nonzero = np.bincount(groups, weights=used, minlength=levels)
        expanded = np.where(used, totals[groups] / np.maximum(nonzero[groups], 1), 0.0)
        divergence = _kl(reference, expanded)
        if divergence < best:
            best, best_bins = divergence, kept
    return best_bins


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two histograms, each normalised; inf where p has mass that q lacks."""
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return np.inf
    p, q = p / p_total, q / q_total
    mass = p > 0
    if np.any(q[mass] == 0):
        return np.inf
    return float(np.sum(p[mass] * np.log(p[mass] / q[mass])))


def make_observer(observer: str = "minmax", percentile: float = 99.99, bins: int = 2048) -> Observer:
    check_observer(observer, percentile, bins)
    if observer == "percentile":
        return PercentileObserver(percentile)
    if observer == "entropy":
        return EntropyObserver(bins)
    return MinMaxObserver()


def observe_ranges(
    graph: Graph, values: Sequence[Value], calibration: Sequence[Any], observer: str = "minmax", **options: Any
) -> dict[Value, tuple[float, float]]:
    """Each value's range over all calibration sets, by `observer` (with its `options`)."""
    observers = {value: make_observer(observer, **options) for value in values}
    for inputs in calibration:
        env = run_all(graph, inputs)
        for value in values:
            observers[value].observe(env[value])
    return {value: seen.range() for value, seen in observers.items()}


def random_input_sets(graph: Graph, count: int, seed: int = 0) -> tuple[tuple[np.ndarray, ...], ...]:
    """`count` seeded input sets for `graph`, for a report when the user gave none: standard normal
    floats, zeros for other dtypes (token ids, masks)."""
    generator = np.random.default_rng(seed)

    def one(value: Value) -> np.ndarray:
        dtype, shape = value.type.dtype, value.type.shape
        if dtype.is_float:
            return generator.standard_normal(shape).astype(dtype.numpy)
        return np.zeros(shape, dtype.numpy)

    return tuple(tuple(one(value) for value in graph.inputs) for _ in range(count))
