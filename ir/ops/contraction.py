"""Contractions: `matmul`, `gemm`, `conv` and `conv_transpose`, the sums of products that
dominate a model's FLOPs and that fusion treats as anchors carrying an epilogue.

The sliding-window machinery (`spatial_params`, `window_shape`, `windows`) lives here too,
because convolution is its first user; `ir.ops.pooling` reuses it. The references are
im2col-style: a strided window view of the padded input contracted with the weights by one
batched matmul, so that a ResNet-sized convolution interprets in milliseconds, not minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ir.attributes import Attr, AttrKind
from ir.dtype import FLOAT_DTYPES, INDEX_DTYPES
from ir.ops.shapes import broadcast_shapes, broadcasts_to, require, require_rank, same_dtype
from ir.ops.table import OpDef, OpKind, register
from ir.types import Shape, TensorType

MATMUL_DTYPES = FLOAT_DTYPES | INDEX_DTYPES


def _dims(shape: Shape) -> str:
    return f"[{','.join(map(str, shape))}]"


# --- matmul -------------------------------------------------------------------------------------


def _unpanelled(b: TensorType, packed_columns: int) -> TensorType:
    """The [K, N] matrix that panels b [P, K, W] hold when `packed_columns` = N (`unpack_panels`)."""
    require(b.rank == 3, f"packed_columns: b must be panels [P, K, W], got {b}")
    panels, depth, width = b.shape
    require(
        width >= 1 and panels == -(-packed_columns // width),
        f"packed_columns: b {b} does not hold {packed_columns} columns in panels of {width}",
    )
    return TensorType((depth, packed_columns), b.dtype)


def pack_panels(matrix: np.ndarray, width: int) -> np.ndarray:
    """A [K, N] matrix as panels [ceil(N / W), K, W]: panel p holds columns p * W .. p * W + W - 1,
    row after row, zeros past N (the CPU GEMM's B layout: one panel is one contiguous K x W block)."""
    depth, columns = matrix.shape
    panels = -(-columns // width)
    padded = np.zeros((depth, panels * width), matrix.dtype)
    padded[:, :columns] = matrix
    return np.ascontiguousarray(padded.reshape(depth, panels, width).transpose(1, 0, 2))


def unpack_panels(panels: np.ndarray, columns: int) -> np.ndarray:
    """`pack_panels`' inverse: the [K, N] matrix (N = `columns`) that panels [P, K, W] hold."""
    count, depth, width = panels.shape
    return np.ascontiguousarray(panels.transpose(1, 0, 2).reshape(depth, count * width)[:, :columns])


def _infer_matmul(a: TensorType, b: TensorType, *, packed_columns: int = 0) -> TensorType:
    if packed_columns:
        b = _unpanelled(b, packed_columns)
    dtype = same_dtype("matmul", a, b)
    require(a.rank >= 1 and b.rank >= 1, f"matmul: operands must have rank >= 1, got {a} and {b}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.rank == 1 else b.shape[-2]
    require(k_a == k_b, f"matmul: contracted dimensions differ ({k_a} vs {k_b}): {a} @ {b}")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    # numpy semantics: a 1-D operand is a row (a) or column (b) vector whose extra axis is dropped.
    rows = (a.shape[-2],) if a.rank >= 2 else ()
    cols = (b.shape[-1],) if b.rank >= 2 else ()
    return TensorType(batch + rows + cols, dtype)


def _matmul_flops(inputs: tuple[TensorType, ...], outputs: tuple[TensorType, ...], _attrs) -> int:
    # Every output element is a dot product of length K: K multiplies and K adds.
    return 2 * inputs[0].shape[-1] * outputs[0].numel


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul on contiguous operands: numpy sums in another order for a transposed view than
    for its contiguous copy, and a value must not depend on how its array happens to be laid out
    (rewrites that only move data would otherwise change bits)."""
    return np.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b))


def _matmul(a: np.ndarray, b: np.ndarray, *, packed_columns: int = 0) -> np.ndarray:
    return matmul(a, unpack_panels(b, packed_columns) if packed_columns else b)


PACKED_COLUMNS = Attr("packed_columns", AttrKind.INT, 0)
"""On matmul and gemm: 0, or N with b a [K, N] matrix stored as `pack_panels` panels [P, K, W]
(`passes.layout` stores constant weights so for the CPU's GEMM, which reads a panel in place)."""

register(
    OpDef(
        "matmul",
        OpKind.CONTRACTION,
        ("a", "b"),
        _infer_matmul,
        _matmul,
        attrs=(PACKED_COLUMNS,),
        dtypes=MATMUL_DTYPES,
        flops=_matmul_flops,
        doc="a @ b with numpy semantics: 1-D operands are vectors, leading (batch) dimensions broadcast; with "
        "packed_columns = N, b is a [K, N] matrix stored as panels [P, K, W] (`pack_panels`, the CPU's layout)",
    )
)


# --- gemm ---------------------------------------------------------------------------------------


def _infer_gemm(
    a: TensorType,
    b: TensorType,
    c: TensorType | None = None,
    *,
    trans_a: bool,
    trans_b: bool,
    alpha: float,
    beta: float,
    packed_columns: int = 0,
) -> TensorType:
    if packed_columns:
        require(not trans_b, f"gemm: packed_columns stores b [K, N] as panels: trans_b must be false, got {b}")
        b = _unpanelled(b, packed_columns)
    dtype = same_dtype("gemm", a, b, *([c] if c is not None else []))
    require_rank("gemm", b, 2, "b")
    if trans_a:
        require_rank("gemm", a, 2, "a (with trans_a)")
        leading, k_a = (a.shape[1],), a.shape[0]
    else:
        require(a.rank >= 1, f"gemm: a must have rank >= 1, got {a}")
        leading, k_a = a.shape[:-1], a.shape[-1]
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    require(k_a == k_b, f"gemm: contracted dimensions differ ({k_a} vs {k_b}): {a} and {b} (trans_b={trans_b})")
    output = (*leading, n)
    if c is not None:
        require(
            broadcasts_to(c.shape, output),
            f"gemm: c {c} does not broadcast to the output {dtype}{_dims(output)}",
        )
    return TensorType(output, dtype)


def _gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    trans_a: bool,
    trans_b: bool,
    alpha: float,
    beta: float,
    packed_columns: int = 0,
) -> np.ndarray:
    if packed_columns:
        b = unpack_panels(b, packed_columns)
    result = matmul(a.T if trans_a else a, b.T if trans_b else b)
    # Multiplying by a scale of exactly 1 is skipped so that integer gemm stays integer.
    if alpha != 1.0:
        result = alpha * result
    if c is not None:
        result = result + (c if beta == 1.0 else beta * c)
    return result


def _gemm_flops(inputs: tuple[TensorType, ...], outputs: tuple[TensorType, ...], attrs) -> int:
    k = inputs[0].shape[0] if attrs["trans_a"] else inputs[0].shape[-1]
    epilogue = (attrs["alpha"] != 1.0) + 2 * (len(inputs) == 3)
    return (2 * k + epilogue) * outputs[0].numel


register(
    OpDef(
        "gemm",
        OpKind.CONTRACTION,
        ("a", "b", "c?"),
        _infer_gemm,
        _gemm,
        attrs=(
            Attr("trans_a", AttrKind.BOOL, False),
            Attr("trans_b", AttrKind.BOOL, False),
            Attr("alpha", AttrKind.FLOAT, 1.0),
            Attr("beta", AttrKind.FLOAT, 1.0),
            PACKED_COLUMNS,
        ),
        dtypes=MATMUL_DTYPES,
        flops=_gemm_flops,
        doc="alpha * (op(a) @ op(b)) + beta * c; a is [..., K] (or [K, M] with trans_a), b [K, N] (or [N, K] "
        "with trans_b; or panels [P, K, W] of a [K, N] with packed_columns = N, as `matmul`); linear(x, w, bias) is "
        "gemm(x, w, bias){trans_b=true}",
    )
)


# --- sliding windows (shared with pooling) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpatialParams:
    """Strides, pads and dilations of a windowed op with their `()` defaults filled in."""

    strides: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    dilations: tuple[int, ...]


def spatial_params(
    op: str, spatial: int, *, strides: tuple[int, ...], pads: tuple[int, ...], dilations: tuple[int, ...] = ()
) -> SpatialParams:
    """Checks the lengths and ranges of the window attributes of an op with `spatial` dims."""
    strides = strides or (1,) * spatial
    dilations = dilations or (1,) * spatial
    pads = pads or (0,) * (2 * spatial)
    for name, values, length in (("strides", strides, spatial), ("dilations", dilations, spatial)):
        require(len(values) == length, f"{op}: {name} needs {length} values for {spatial} spatial dims, got {values}")
        require(all(v >= 1 for v in values), f"{op}: {name} must be >= 1, got {values}")
    require(
        len(pads) == 2 * spatial,
        f"{op}: pads needs {2 * spatial} values (begins, then ends) for {spatial} spatial dims, got {pads}",
    )
    require(all(p >= 0 for p in pads), f"{op}: pads must be >= 0, got {pads}")
    return SpatialParams(strides, pads[:spatial], pads[spatial:], dilations)


def output_size(
    size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, ceil_mode: bool = False
) -> int:
    """Number of window positions along one axis (the conv and pooling formula of torch and ONNX)."""
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    count = (-(-span // stride) if ceil_mode else span // stride) + 1
    # ceil_mode may add a window that starts in the end padding; torch and ONNX drop it.
    if ceil_mode and (count - 1) * stride >= size + pad_begin:
        count -= 1
    return count


def window_shape(
    op: str, spatial_shape: Shape, kernel: Shape, params: SpatialParams, ceil_mode: bool = False
) -> tuple[int, ...]:
    """The spatial shape of a windowed op's output; `ShapeError` where no window fits."""
    result = []
    for axis, (size, k) in enumerate(zip(spatial_shape, kernel)):
        begin, end, dilation = params.pads_begin[axis], params.pads_end[axis], params.dilations[axis]
        count = output_size(size, k, params.strides[axis], begin, end, dilation, ceil_mode)
        require(
            count >= 1,
            f"{op}: the kernel ({k} with dilation {dilation}) is larger than the padded input "
            f"({size} + pads {begin}, {end}) on spatial axis {axis}",
        )
        result.append(count)
    return tuple(result)


def windows(x: np.ndarray, kernel: Shape, params: SpatialParams, out: Shape, fill: float = 0) -> np.ndarray:
    """A strided view [N, C, *out, *kernel] of x's windows after padding with `fill`.

    The end is padded further when needed so that every one of the `out` windows fits (ceil
    mode); a caller that cares tells those positions from the declared padding itself.
    """
    spatial = len(kernel)
    extents = [d * (k - 1) + 1 for k, d in zip(kernel, params.dilations)]
    pad_width = [(0, 0)] * (x.ndim - spatial)
    for axis in range(spatial):
        needed = (out[axis] - 1) * params.strides[axis] + extents[axis]
        have = x.shape[x.ndim - spatial + axis] + params.pads_begin[axis] + params.pads_end[axis]
        pad_width.append((params.pads_begin[axis], params.pads_end[axis] + max(needed - have, 0)))
    if any(p != (0, 0) for p in pad_width):
        x = np.pad(x, pad_width, constant_values=fill)
    axes = tuple(range(x.ndim - spatial, x.ndim))
    view = sliding_window_view(x, extents, axis=axes)
    lead = (slice(None),) * (x.ndim - spatial)
    positions = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, params.strides))
    taps = tuple(slice(None, None, d) for d in params.dilations)
    return view[lead + positions + taps]


# --- conv ---------------------------------------------------------------------------------------

_CONV_ATTRS = (
    Attr("strides", AttrKind.INTS, ()),
    Attr("pads", AttrKind.INTS, ()),
    Attr("dilations", AttrKind.INTS, ()),
)


def _check_conv_operands(op: str, x: TensorType, w: TensorType, bias: TensorType | None, groups: int) -> None:
    """The checks conv and conv_transpose share: ranks, dtypes and that groups divide C."""
    same_dtype(op, x, w, *([bias] if bias is not None else []))
    require(3 <= x.rank <= 5, f"{op}: x must be [N, C, *spatial] with 1 to 3 spatial dims, got {x}")
    require(w.rank == x.rank, f"{op}: w must have rank {x.rank} like x {x}, got {w}")
    require(groups >= 1, f"{op}: groups must be >= 1, got {groups}")
    require(x.shape[1] % groups == 0, f"{op}: groups={groups} does not divide the {x.shape[1]} channels of x {x}")


def _check_bias(op: str, bias: TensorType | None, channels: int) -> None:
    if bias is not None:
        require(bias.shape == (channels,), f"{op}: bias must be [{channels}] (one per output channel), got {bias}")


def _infer_conv(
    x: TensorType,
    w: TensorType,
    bias: TensorType | None = None,
    *,
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    groups: int,
) -> TensorType:
    _check_conv_operands("conv", x, w, bias, groups)
    channels, kernel = w.shape[0], w.shape[2:]
    require(
        w.shape[1] * groups == x.shape[1],
        f"conv: w {w} takes {w.shape[1]} channels per group, x {x} has {x.shape[1]} in {groups} group(s)",
    )
    require(channels % groups == 0, f"conv: groups={groups} does not divide the {channels} output channels of w {w}")
    _check_bias("conv", bias, channels)
    params = spatial_params("conv", len(kernel), strides=strides, pads=pads, dilations=dilations)
    spatial = window_shape("conv", x.shape[2:], kernel, params)
    return TensorType((x.shape[0], channels, *spatial), x.dtype)


def _conv(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    batch, channels, out_channels, kernel = x.shape[0], x.shape[1], w.shape[0], w.shape[2:]
    spatial = len(kernel)
    params = spatial_params("conv", spatial, strides=strides, pads=pads, dilations=dilations)
    out = window_shape("conv", x.shape[2:], kernel, params)
    # im2col: per group, a [N * out positions, C/groups * kernel taps] matrix times the
    # [C/groups * taps, M/groups] weights, one batched matmul over the groups.
    cols = windows(x, kernel, params, out).reshape(batch, groups, channels // groups, *out, *kernel)
    position_axes = tuple(range(3, 3 + spatial))
    tap_axes = tuple(range(3 + spatial, 3 + 2 * spatial))
    cols = cols.transpose(1, 0, *position_axes, 2, *tap_axes)
    taps = channels // groups * math.prod(kernel)  # spelled out: -1 cannot be inferred for empty arrays
    cols = cols.reshape(groups, batch * math.prod(out), taps)
    weights = w.reshape(groups, out_channels // groups, taps).transpose(0, 2, 1)
    y = np.matmul(cols, weights).reshape(groups, batch, *out, out_channels // groups)
    y = np.moveaxis(y, -1, 2)  # [groups, N, M/groups, *out]
    y = np.moveaxis(y, 0, 1).reshape(batch, out_channels, *out)
    if bias is not None:
        y = y + bias.reshape(-1, *(1,) * spatial)
    return y


def _conv_flops(inputs: tuple[TensorType, ...], outputs: tuple[TensorType, ...], attrs) -> int:
    w = inputs[1]
    taps = w.shape[1] * math.prod(w.shape[2:])  # C/groups * kernel: the length of each dot product
    return (2 * taps + (len(inputs) == 3)) * outputs[0].numel


register(
    OpDef(
        "conv",
        OpKind.CONTRACTION,
        ("x", "w", "bias?"),
        _infer_conv,
        _conv,
        attrs=(*_CONV_ATTRS, Attr("groups", AttrKind.INT, 1)),
        dtypes=FLOAT_DTYPES,
        flops=_conv_flops,
        doc="cross-correlation of x [N, C, *spatial] (1-3 spatial dims) with w [M, C/groups, *kernel], plus bias "
        "[M]; pads are [begins..., ends...], () means unit strides/dilations and no padding",
    )
)


# --- conv_transpose -----------------------------------------------------------------------------


def _transpose_output_size(
    size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, output_padding: int
) -> int:
    return (size - 1) * stride - pad_begin - pad_end + dilation * (kernel - 1) + output_padding + 1


def _transpose_params(
    op: str,
    spatial: int,
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    output_padding: tuple[int, ...],
) -> tuple[SpatialParams, tuple[int, ...]]:
    """The checked window attributes of conv_transpose, with output_padding's default filled in."""
    params = spatial_params(op, spatial, strides=strides, pads=pads, dilations=dilations)
    output_padding = output_padding or (0,) * spatial
    require(
        len(output_padding) == spatial,
        f"{op}: output_padding needs {spatial} values for {spatial} spatial dims, got {output_padding}",
    )
    # As in torch: a larger output_padding would add positions no input element reaches.
    require(
        all(0 <= p < max(s, d) for p, s, d in zip(output_padding, params.strides, params.dilations)),
        f"{op}: output_padding {output_padding} must be >= 0 and smaller than the stride or the dilation "
        f"(strides {params.strides}, dilations {params.dilations})",
    )
    return params, output_padding


def _infer_conv_transpose(
    x: TensorType,
    w: TensorType,
    bias: TensorType | None = None,
    *,
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    output_padding: tuple[int, ...],
    groups: int,
) -> TensorType:
    _check_conv_operands("conv_transpose", x, w, bias, groups)
    require(
        w.shape[0] == x.shape[1],
        f"conv_transpose: w {w} must be [C, M/groups, *kernel] with C = {x.shape[1]}, the channels of x {x}",
    )
    channels, kernel = w.shape[1] * groups, w.shape[2:]
    _check_bias("conv_transpose", bias, channels)
    params, output_padding = _transpose_params("conv_transpose", len(kernel), strides, pads, dilations, output_padding)
    spatial = []
    for axis, (size, k) in enumerate(zip(x.shape[2:], kernel)):
        count = _transpose_output_size(
            size,
            k,
            params.strides[axis],
            params.pads_begin[axis],
            params.pads_end[axis],
            params.dilations[axis],
            output_padding[axis],
        )
        require(count >= 1, f"conv_transpose: pads {pads} leave no output on spatial axis {axis} of {x}")
        spatial.append(count)
    return TensorType((x.shape[0], channels, *spatial), x.dtype)


def _conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    output_padding: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    kernel = w.shape[2:]
    spatial = len(kernel)
    params, output_padding = _transpose_params("conv_transpose", spatial, strides, pads, dilations, output_padding)
    # The transposed convolution is a plain one over x with stride-1 zeros inserted between its
    # elements, fully padded, with the kernel flipped and its channel axes swapped per group;
    # the result is then trimmed by `pads`.
    spread = np.zeros((*x.shape[:2], *((n - 1) * s + 1 for n, s in zip(x.shape[2:], params.strides))), x.dtype)
    spread[(slice(None), slice(None), *(slice(None, None, s) for s in params.strides))] = x
    channels, per_group = w.shape[0], w.shape[1]
    flipped = w.reshape(groups, channels // groups, per_group, *kernel).swapaxes(1, 2)
    flipped = flipped.reshape(groups * per_group, channels // groups, *kernel)
    flipped = np.flip(flipped, axis=tuple(range(2, 2 + spatial)))
    full = tuple(d * (k - 1) for k, d in zip(kernel, params.dilations))
    ends = tuple(f + p for f, p in zip(full, output_padding))
    y = _conv(spread, flipped, bias, strides=(), pads=full + ends, dilations=params.dilations, groups=groups)
    trim = tuple(
        slice(b, b + _transpose_output_size(n, k, s, b, e, d, p))
        for n, k, s, b, e, d, p in zip(
            x.shape[2:], kernel, params.strides, params.pads_begin, params.pads_end, params.dilations, output_padding
        )
    )
    return y[(slice(None), slice(None), *trim)]


def _conv_transpose_flops(inputs: tuple[TensorType, ...], outputs: tuple[TensorType, ...], attrs) -> int:
    x, w = inputs[:2]
    # Each input element is multiplied into M/groups * kernel outputs.
    scatter = 2 * x.numel * w.shape[1] * math.prod(w.shape[2:])
    return scatter + (len(inputs) == 3) * outputs[0].numel


register(
    OpDef(
        "conv_transpose",
        OpKind.CONTRACTION,
        ("x", "w", "bias?"),
        _infer_conv_transpose,
        _conv_transpose,
        attrs=(*_CONV_ATTRS, Attr("output_padding", AttrKind.INTS, ()), Attr("groups", AttrKind.INT, 1)),
        dtypes=FLOAT_DTYPES,
        flops=_conv_transpose_flops,
        doc="the gradient of conv with respect to its input (torch conv_transpose): w is [C, M/groups, *kernel]; "
        "pads trim the output [begins..., ends...], output_padding extends its end",
    )
)
