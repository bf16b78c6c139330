"""ONNX Resize lowered to one matrix product per resized axis.

Every mode of Resize (nearest, linear, cubic, with or without antialiasing, any coordinate
transformation) is separable, and each output element along an axis is a fixed weighted sum of
input elements along that axis. The shapes are static, so those weights are computed here at
import time, as an [out, in] matrix per axis, following ONNX's reference: the source coordinate
of each output position, the interpolation coefficients of its fractional part, the neighbours
(clamped to the edge), `exclude_outside` renormalisation, and tf_crop_and_resize's
extrapolation (a zero row plus the extrapolation value). The graph then holds, per axis, a
transpose that brings the axis last, a `matmul` with the constant weights and the inverse
transpose: ops every backend already has. Integers are resized in f32 and rounded back with
saturation, as ONNX's reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode
from ir import DType, Value

Coefficients = Callable[[float, float], np.ndarray]


def _nearest(mode: str) -> Coefficients:
    def coefficients(ratio: float, _scale: float) -> np.ndarray:
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        below = {
            "round_prefer_floor": ratio <= 0.5,
            "round_prefer_ceil": ratio < 0.5,
            "floor": True,
            "ceil": False,
        }[mode]
        return np.array([float(below), float(not below)])

    return coefficients


def _linear(ratio: float, _scale: float) -> np.ndarray:
    return np.array([1 - ratio, ratio])


def _linear_antialias(ratio: float, scale: float) -> np.ndarray:
    # The triangle filter widened by 1 / scale when shrinking, normalised to sum 1.
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    taps = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    weights = np.clip(1 - np.abs(taps), 0, 1)
    return weights / weights.sum()


def _cubic(a: float) -> Coefficients:
    def coefficients(ratio: float, _scale: float) -> np.ndarray:
        return np.array([_cubic_kernel(t, a) for t in (ratio + 1, ratio, 1 - ratio, 2 - ratio)])

    return coefficients


def _cubic_antialias(a: float) -> Coefficients:
    def coefficients(ratio: float, scale: float) -> np.ndarray:
        scale = min(scale, 1.0)
        start = int(np.floor(-2 / scale) + 1)
        weights = np.array([_cubic_kernel(scale * (i - ratio), a) for i in range(start, 2 - start)])
        return weights / weights.sum()

    return coefficients


def _cubic_kernel(x: float, a: float) -> float:
    """Keys' cubic convolution kernel with parameter a (-0.75 in ONNX, -0.5 in TensorFlow)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _source_positions(
    mode: str, size: int, out: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The input coordinate of each output position, and which ones extrapolate (tf_crop_and_resize)."""
    y = np.arange(out, dtype=np.float64)
    width = scale * size
    extrapolated = None
    if mode == "align_corners":
        x = np.zeros(out) if width == 1 else y * (size - 1) / (width - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        x = np.full(out, (end - start) * (size - 1) / 2) if width == 1 else y * (end - start) * (size - 1) / (width - 1)
        x = x + start * (size - 1)
        extrapolated = (x < 0) | (x > size - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / width)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise UnsupportedNode(f"coordinate_transformation_mode={mode}")
    return x, extrapolated


def resize_weights(
    size: int,
    out: int,
    scale: float,
    coefficients: Coefficients,
    transform: str,
    roi: tuple[float, float] | None,
    exclude_outside: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The [out, size] weights of one axis, and the mask of extrapolated output positions."""
    x, extrapolated = _source_positions(transform, size, out, scale, roi)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)
    coeffs = np.stack([coefficients(float(r), scale) for r in ratios]) if out else np.zeros((0, 2))
    taps = coeffs.shape[1]
    # The first neighbour: taps/2 to the left of the position (rounding as ONNX's reference does).
    fraction = x - floor
    if taps % 2 == 0:
        first = floor + np.where(fraction == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        first = floor + np.where(fraction <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    neighbours = first.astype(np.int64)[:, None] + np.arange(taps)[None, :]
    if exclude_outside:
        coeffs = np.where((neighbours < 0) | (neighbours >= size), 0.0, coeffs)
        sums = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(sums == 0, 1.0, sums)
    weights = np.zeros((out, size))
    rows = np.repeat(np.arange(out), taps)
    np.add.at(weights, (rows, np.clip(neighbours, 0, size - 1).reshape(-1)), coeffs.reshape(-1))
    if extrapolated is not None:
        weights[extrapolated] = 0.0
    return weights, extrapolated


def _coefficients(ctx: NodeContext) -> Coefficients:
    mode, antialias = ctx.attr("mode"), bool(ctx.attr("antialias", 0))
    if mode == "nearest":
        return _nearest(ctx.attr("nearest_mode"))
    if mode == "linear":
        return _linear_antialias if antialias else _linear
    if mode == "cubic":
        a = ctx.attr("cubic_coeff_a")
        return _cubic_antialias(a) if antialias else _cubic(a)
    raise UnsupportedNode(f"mode={mode}")


def _plan(ctx: NodeContext, shape: tuple[int, ...]) -> list[tuple[int, int, float, tuple[float, float] | None]]:
    """(axis, output size, scale, roi) for every axis that changes."""
    rank = len(shape)
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    roi = ctx.const_or(1, "roi", None)
    scales = ctx.const_or(2, "scales", None)
    sizes = ctx.const_or(3, "sizes", None)
    roi = None if roi is None or np.asarray(roi).size == 0 else [float(v) for v in np.asarray(roi).reshape(-1)]
    if sizes is not None and np.asarray(sizes).size:
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        scale_of = {a: sizes[i] / shape[a] for i, a in enumerate(axes)}
        out_of = {a: sizes[i] for i, a in enumerate(axes)}
        policy = ctx.attr("keep_aspect_ratio_policy") or "stretch"
        if policy != "stretch":
            common = (min if policy == "not_larger" else max)(scale_of.values())
            scale_of = dict.fromkeys(axes, common)
            out_of = {a: int(common * shape[a] + 0.5) for a in axes}  # round half up
    elif scales is not None and np.asarray(scales).size:
        scales = [float(v) for v in np.asarray(scales).reshape(-1)]
        scale_of = {a: scales[i] for i, a in enumerate(axes)}
        out_of = {a: int(scales[i] * shape[a]) for i, a in enumerate(axes)}
    else:
        raise UnsupportedNode("neither scales nor sizes")
    plan = []
    for i, axis in enumerate(axes):
        window = (roi[i], roi[len(axes) + i]) if roi is not None else None
        trivial_roi = window is None or (math.isclose(window[0], 0.0) and math.isclose(window[1], 1.0))
        if math.isclose(scale_of[axis], 1.0) and out_of[axis] == shape[axis] and trivial_roi:
            continue
        plan.append((axis, out_of[axis], scale_of[axis], window))
    return plan


def resize(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    dtype = x.type.dtype
    if ctx.attr("mode") == "nearest" and ctx.attr("antialias", 0):
        raise UnsupportedNode("antialias with mode=nearest")
    coefficients = _coefficients(ctx)
    transform = ctx.attr("coordinate_transformation_mode")
    plan = _plan(ctx, x.type.shape)
    compute = dtype if dtype in (DType.f32, DType.f64) else DType.f32
    y = ctx.cast(x, compute)
    rank = x.type.rank
    for axis, out, scale, window in plan:
        size = y.type.shape[axis]
        weights, extrapolated = resize_weights(
            size, out, scale, coefficients, transform, window, bool(ctx.attr("exclude_outside"))
        )
        last = (*(a for a in range(rank) if a != axis), axis)
        moved = ctx.op("transpose", y, perm=last) if axis != rank - 1 else y
        moved = ctx.op("matmul", moved, ctx.constant(weights.T.astype(compute.numpy), "resize_weights"))
        if extrapolated is not None and extrapolated.any():
            fill = np.where(extrapolated, ctx.attr("extrapolation_value"), 0.0).astype(compute.numpy)
            moved = ctx.op("add", moved, ctx.constant(fill, "extrapolated"))
        back = tuple(int(np.argsort(last)[a]) for a in range(rank))
        y = ctx.op("transpose", moved, perm=back) if axis != rank - 1 else moved
    if dtype.is_integer:  # ONNX rounds and saturates into integer types
        info = np.iinfo(dtype.numpy)
        y = ctx.op("clip", ctx.op("round", y), min=float(info.min), max=float(info.max))
    return ctx.cast(y, dtype)
