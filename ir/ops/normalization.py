"""Normalisations: `batch_norm` (inference mode), `layer_norm`, `group_norm` and `rms_norm`.

Each is declared as one op, rather than as the reductions and arithmetic it is made of, so that
frontends map torch and ONNX nodes one to one and a backend can pick a fused kernel; passes that
want the pieces can expand them. Semantics follow torch.nn.functional: variances are biased
(divide by the count, not count - 1), epsilon is added to the variance inside the square root,
and the optional affine parameters multiply then add after normalising. Statistics are computed
in the dtype the interpreter hands over (f32 for f16/bf16 inputs, f64 in oracle mode). All take
floats only, and their parameters must have the dtype of `x` (the IR never promotes).
"""

from __future__ import annotations

import math

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import FLOAT_DTYPES
from ir.ops.shapes import normalize_axis, require
from ir.ops.table import OpDef, OpKind, register
from ir.types import Shape, TensorType


def _require_param(op: str, name: str, param: TensorType, shape: Shape, x: TensorType, why: str) -> None:
    """A parameter input must be exactly `shape` and share the dtype of `x`."""
    expected = TensorType(shape, x.dtype)
    require(param == expected, f"{op}: {name} must be {expected} ({why} of x: {x}), got {param}")


def _mean(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The mean over `axes`, kept as size-1 dims so it broadcasts back against `x`.
    (sum / count rather than np.mean, which warns on empty slices.)"""
    count = math.prod(x.shape[a] for a in axes)
    return np.sum(x, axis=axes, keepdims=True) / x.dtype.type(count)


def _standardize(x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """(x - mean) / sqrt(biased variance + epsilon) over `axes`."""
    centered = x - _mean(x, axes)
    variance = _mean(centered * centered, axes)
    return centered / np.sqrt(variance + epsilon)


def _affine_flops(base: int):
    """FLOPs of a normalisation: `base` per element, plus one per element for each affine input."""

    def flops(in_types: tuple[TensorType, ...], _out_types: tuple[TensorType, ...], _attrs: object) -> int:
        return (base + len(in_types) - 1) * in_types[0].numel

    return flops


# ---- batch_norm ---------------------------------------------------------------------------


def _infer_batch_norm(
    x: TensorType, scale: TensorType, bias: TensorType, mean: TensorType, var: TensorType, *, epsilon: float
) -> TensorType:
    require(x.rank >= 2, f"batch_norm: x must have rank >= 2 ([N, C, ...]), got {x}")
    channels = x.shape[1]
    for name, param in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
        _require_param("batch_norm", name, param, (channels,), x, "one per channel, axis 1,")
    return x


def _batch_norm(
    x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, *, epsilon: float
) -> np.ndarray:
    def per_channel(p: np.ndarray) -> np.ndarray:  # [C] -> [C, 1, ...] to broadcast along axis 1
        return p.reshape(p.shape + (1,) * (x.ndim - 2))

    normalized = (x - per_channel(mean)) / np.sqrt(per_channel(var) + epsilon)
    return normalized * per_channel(scale) + per_channel(bias)


register(
    OpDef(
        "batch_norm",
        OpKind.BROADCAST,  # at inference the statistics are inputs, so this is a per-channel affine map
        ("x", "scale", "bias", "mean", "var"),
        _infer_batch_norm,
        _batch_norm,
        attrs=(Attr("epsilon", AttrKind.FLOAT, 1e-5),),
        dtypes=FLOAT_DTYPES,
        flops_per_element=4,
        doc="inference batch norm over channel axis 1 of x [N, C, ...]: "
        "(x - mean) / sqrt(var + epsilon) * scale + bias, with [C] parameters",
    )
)


# ---- layer_norm, rms_norm -----------------------------------------------------------------


def _infer_trailing_norm(op: str):
    """The rule of ops that normalise over dims axis..rank-1 with optional [x.shape[axis:]] params."""

    def infer(x: TensorType, *params: TensorType, axis: int, epsilon: float) -> TensorType:
        axis = normalize_axis(op, axis, x.rank)
        for name, param in zip(("weight", "bias"), params):
            _require_param(op, name, param, x.shape[axis:], x, f"the normalised dims {axis}..{x.rank - 1}")
        return x

    return infer


def _trailing_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(range(axis % x.ndim, x.ndim))


def _layer_norm(
    x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None, *, axis: int, epsilon: float
) -> np.ndarray:
    y = _standardize(x, _trailing_axes(x, axis), epsilon)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_norm(x: np.ndarray, weight: np.ndarray | None = None, *, axis: int, epsilon: float) -> np.ndarray:
    y = x / np.sqrt(_mean(x * x, _trailing_axes(x, axis)) + epsilon)
    return y if weight is None else y * weight


register(
    OpDef(
        "layer_norm",
        OpKind.REDUCTION,
        ("x", "weight?", "bias?"),
        _infer_trailing_norm("layer_norm"),
        _layer_norm,
        attrs=(Attr("axis", AttrKind.INT, -1), Attr("epsilon", AttrKind.FLOAT, 1e-5)),
        dtypes=FLOAT_DTYPES,
        # mean 1, subtract 1, square 1, sum 1, scale by 1/std 1; then weight and bias
        flops=_affine_flops(5),
        doc="(x - mean) / sqrt(var + epsilon) over dims axis..rank-1 (biased variance), "
        "then * weight + bias if given, both shaped x.shape[axis:]",
    )
)

register(
    OpDef(
        "rms_norm",
        OpKind.REDUCTION,
        ("x", "weight?"),
        _infer_trailing_norm("rms_norm"),
        _rms_norm,
        attrs=(Attr("axis", AttrKind.INT, -1), Attr("epsilon", AttrKind.FLOAT, 1e-6)),
        dtypes=FLOAT_DTYPES,
        # square 1, sum 1, scale by 1/rms 1; then weight
        flops=_affine_flops(3),
        doc="x / sqrt(mean(x * x) + epsilon) over dims axis..rank-1, then * weight if given (shaped x.shape[axis:])",
    )
)


# ---- group_norm ---------------------------------------------------------------------------


def _infer_group_norm(
    x: TensorType, weight: TensorType, bias: TensorType, *, num_groups: int, epsilon: float
) -> TensorType:
    require(x.rank >= 2, f"group_norm: x must have rank >= 2 ([N, C, ...]), got {x}")
    channels = x.shape[1]
    require(num_groups >= 1, f"group_norm: num_groups must be at least 1, got {num_groups}")
    require(
        channels % num_groups == 0,
        f"group_norm: the {channels} channels of x: {x} do not split into num_groups={num_groups} equal groups",
    )
    for name, param in (("weight", weight), ("bias", bias)):
        _require_param("group_norm", name, param, (channels,), x, "one per channel, axis 1,")
    return x


def _group_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, num_groups: int, epsilon: float) -> np.ndarray:
    # Each group of C / num_groups consecutive channels, with all spatial positions, is one set of
    # statistics per sample: view x as [N, groups, C / groups * spatial] and normalise the last axis.
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, num_groups, (channels // num_groups) * math.prod(x.shape[2:]))
    y = _standardize(grouped, (2,), epsilon).reshape(x.shape)
    per_channel = (channels,) + (1,) * (x.ndim - 2)
    return y * weight.reshape(per_channel) + bias.reshape(per_channel)


register(
    OpDef(
        "group_norm",
        OpKind.REDUCTION,
        ("x", "weight", "bias"),
        _infer_group_norm,
        _group_norm,
        attrs=(Attr("num_groups", AttrKind.INT), Attr("epsilon", AttrKind.FLOAT, 1e-5)),
        dtypes=FLOAT_DTYPES,
        flops=_affine_flops(5),
        doc="x [N, C, ...] normalised per sample over each of num_groups groups of channels "
        "(biased variance), then * weight + bias per channel ([C])",
    )
)
