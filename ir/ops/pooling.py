"""Pooling: `max_pool`, `avg_pool` and `global_avg_pool`, the windowed reductions of CNNs.

They share the window arithmetic of convolution (`ir.ops.contraction.spatial_params`,
`window_shape`, `windows`), so pads follow the ONNX layout [begins..., ends...] and
`ceil_mode` follows torch and ONNX: a last window that would start in the end padding is
dropped. The references reduce a strided window view of the padded input, with no loop over
pixels.
"""

from __future__ import annotations

import math

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import FLOAT_DTYPES, NUMERIC_DTYPES
from ir.ops.contraction import SpatialParams, spatial_params, window_shape, windows
from ir.ops.shapes import require
from ir.ops.table import OpDef, OpKind, register
from ir.types import TensorType


def _pool_params(
    op: str, x: TensorType, kernel: tuple[int, ...], strides, pads, dilations=()
) -> tuple[SpatialParams, tuple[int, ...]]:
    """Checked window parameters and the output's spatial shape."""
    require(3 <= x.rank <= 5, f"{op}: x must be [N, C, *spatial] with 1 to 3 spatial dims, got {x}")
    spatial = x.rank - 2
    require(len(kernel) == spatial, f"{op}: kernel needs {spatial} values for x {x}, got {kernel}")
    require(all(k >= 1 for k in kernel), f"{op}: kernel sizes must be >= 1, got {kernel}")
    params = spatial_params(op, spatial, strides=strides, pads=pads, dilations=dilations)
    # A pad as wide as the window would allow windows of padding alone, which have no value.
    extents = tuple(d * (k - 1) + 1 for k, d in zip(kernel, params.dilations))
    require(
        all(p < e for p, e in zip(params.pads_begin + params.pads_end, extents * 2)),
        f"{op}: pads {pads} must be smaller than the kernel extent {extents}",
    )
    return params, extents


def _window_axes(x: np.ndarray) -> tuple[int, ...]:
    """The kernel axes of a `windows` view of an [N, C, *spatial] array."""
    spatial = x.ndim - 2
    return tuple(range(2 + spatial, 2 + 2 * spatial))


def _pool_flops(inputs: tuple[TensorType, ...], outputs: tuple[TensorType, ...], attrs) -> int:
    return outputs[0].numel * math.prod(attrs["kernel"])  # one compare or add per tap


_WINDOW_ATTRS = (
    Attr("kernel", AttrKind.INTS),
    Attr("strides", AttrKind.INTS, ()),
    Attr("pads", AttrKind.INTS, ()),
)


# --- max_pool -----------------------------------------------------------------------------------


def _infer_max_pool(x: TensorType, *, kernel: tuple[int, ...], strides, pads, dilations, ceil_mode: bool) -> TensorType:
    params, _ = _pool_params("max_pool", x, kernel, strides, pads, dilations)
    return x.with_shape(x.shape[:2] + window_shape("max_pool", x.shape[2:], kernel, params, ceil_mode))


def _max_pool(x: np.ndarray, *, kernel: tuple[int, ...], strides, pads, dilations, ceil_mode: bool) -> np.ndarray:
    params = spatial_params("max_pool", len(kernel), strides=strides, pads=pads, dilations=dilations)
    out = window_shape("max_pool", x.shape[2:], kernel, params, ceil_mode)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min  # padding never wins
    return windows(x, kernel, params, out, fill=lowest).max(axis=_window_axes(x))


register(
    OpDef(
        "max_pool",
        OpKind.REDUCTION,
        ("x",),
        _infer_max_pool,
        _max_pool,
        attrs=(*_WINDOW_ATTRS, Attr("dilations", AttrKind.INTS, ()), Attr("ceil_mode", AttrKind.BOOL, False)),
        dtypes=NUMERIC_DTYPES,
        flops=_pool_flops,
        doc="maximum over each window of x [N, C, *spatial]; padding never wins; () strides mean 1 (ONNX)",
    )
)


# --- avg_pool -----------------------------------------------------------------------------------


def _infer_avg_pool(
    x: TensorType, *, kernel: tuple[int, ...], strides, pads, ceil_mode: bool, count_include_pad: bool
) -> TensorType:
    params, _ = _pool_params("avg_pool", x, kernel, strides, pads)
    return x.with_shape(x.shape[:2] + window_shape("avg_pool", x.shape[2:], kernel, params, ceil_mode))


def _avg_pool(
    x: np.ndarray, *, kernel: tuple[int, ...], strides, pads, ceil_mode: bool, count_include_pad: bool
) -> np.ndarray:
    spatial = len(kernel)
    params = spatial_params("avg_pool", spatial, strides=strides, pads=pads)
    out = window_shape("avg_pool", x.shape[2:], kernel, params, ceil_mode)
    sums = windows(x, kernel, params, out).sum(axis=_window_axes(x))
    # The divisor of each window counts its taps on the input, plus those on the declared padding
    # with count_include_pad; taps on the extra end that ceil_mode adds never count (as in torch).
    if count_include_pad:
        padded = (n + b + e for n, b, e in zip(x.shape[2:], params.pads_begin, params.pads_end))
        counted = np.ones(tuple(padded), x.dtype)
        params = SpatialParams(params.strides, (0,) * spatial, (0,) * spatial, params.dilations)
    else:
        counted = np.ones(x.shape[2:], x.dtype)
    counts = windows(counted[None, None], kernel, params, out).sum(axis=_window_axes(x))
    return sums / counts


register(
    OpDef(
        "avg_pool",
        OpKind.REDUCTION,
        ("x",),
        _infer_avg_pool,
        _avg_pool,
        attrs=(
            *_WINDOW_ATTRS,
            Attr("ceil_mode", AttrKind.BOOL, False),
            Attr("count_include_pad", AttrKind.BOOL, False),
        ),
        dtypes=FLOAT_DTYPES,
        flops=_pool_flops,
        doc="mean over each window of x [N, C, *spatial]; the divisor counts padding only with count_include_pad",
    )
)


# --- global_avg_pool ----------------------------------------------------------------------------


def _infer_global_avg_pool(x: TensorType) -> TensorType:
    require(x.rank >= 3, f"global_avg_pool: x must be [N, C, *spatial] with spatial dims, got {x}")
    return x.with_shape(x.shape[:2] + (1,) * (x.rank - 2))


register(
    OpDef(
        "global_avg_pool",
        OpKind.REDUCTION,
        ("x",),
        _infer_global_avg_pool,
        lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True),
        dtypes=FLOAT_DTYPES,
        flops=lambda inputs, outputs, attrs: inputs[0].numel,
        doc="mean over all spatial dims: [N, C, *spatial] -> [N, C, 1, ...] (adaptive_avg_pool(1))",
    )
)
