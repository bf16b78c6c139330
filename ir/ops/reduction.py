"""Reductions: ops whose output elements each combine many input elements along some axes.

`sum`, `mean`, `prod`, `max` and `min` reduce over a set of axes (all of them by default),
`argmax` and `argmin` over one axis (ONNX ArgMax/ArgMin), `softmax` and `log_softmax` reduce
and broadcast back over one axis, and `cumsum` is the running sum of ONNX CumSum. Results keep
the input dtype (indices are i64): integer sums and products wrap in that dtype, as a kernel
that accumulates in the element type does, and floats accumulate in the dtype the interpreter
hands over (f32 for f16/bf16, f64 in oracle mode). FLOP counts are nominal: one per input
element for a plain reduction.
"""

from __future__ import annotations

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import FLOAT_DTYPES, NUMERIC_DTYPES, DType
from ir.ops.shapes import normalize_axes, normalize_axis, require, same_type
from ir.ops.table import OpDef, OpKind, register
from ir.types import TensorType


def _input_numel(in_types: tuple[TensorType, ...], _out_types: tuple[TensorType, ...], _attrs: object) -> int:
    """A reduction does one combining step per element it reads."""
    return in_types[0].numel


def reduced_axes(op: str, x: TensorType, axes: tuple[int, ...]) -> tuple[int, ...]:
    """The sorted non-negative axes that `axes` names; the empty tuple means every axis."""
    return normalize_axes(op, axes, x.rank) if axes else tuple(range(x.rank))


def reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    """`shape` with `axes` dropped, or kept as 1s when `keepdims`."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _describe_axes(axes: tuple[int, ...]) -> str:
    return f"axes {list(axes)}" if axes else "all axes"


# ---- sum, mean, prod, max, min ------------------------------------------------------------


def _infer_reduce(op: str, *, needs_elements: bool):
    def infer(x: TensorType, *, axes: tuple[int, ...], keepdims: bool) -> TensorType:
        reduced = reduced_axes(op, x, axes)
        if needs_elements:  # max and min have no identity, so an empty reduction has no value
            for axis in reduced:
                require(x.shape[axis] > 0, f"{op}: cannot reduce over axis {axis} of size 0 (no identity), got {x}")
        return x.with_shape(reduced_shape(x.shape, reduced, keepdims))

    return infer


def _numpy_axes(axes: tuple[int, ...]) -> tuple[int, ...] | None:
    # numpy reads axis=() as "reduce nothing"; the IR's () means "reduce everything".
    return axes if axes else None


def _sum(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # dtype= keeps integer accumulation in the input type (numpy would widen i8 to i64).
    return np.sum(x, axis=_numpy_axes(axes), keepdims=keepdims, dtype=x.dtype)


def _prod(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.prod(x, axis=_numpy_axes(axes), keepdims=keepdims, dtype=x.dtype)


def _mean(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # sum / count rather than np.mean, which warns on empty slices; 0 / 0 gives nan there too.
    reduced = axes if axes else tuple(range(x.ndim))
    count = int(np.prod([x.shape[a] for a in reduced]))
    return _sum(x, axes=axes, keepdims=keepdims) / x.dtype.type(count)


def _max(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.max(x, axis=_numpy_axes(axes), keepdims=keepdims)


def _min(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.min(x, axis=_numpy_axes(axes), keepdims=keepdims)


_REDUCE_ATTRS = (Attr("axes", AttrKind.INTS, ()), Attr("keepdims", AttrKind.BOOL, False))

# name -> (reference, dtypes, whether the reduced axes must be non-empty, doc)
_REDUCTIONS = {
    "sum": (_sum, NUMERIC_DTYPES, False, "sum over axes (all if none); integers wrap in the input dtype"),
    "mean": (_mean, FLOAT_DTYPES, False, "arithmetic mean over axes (all if none); nan over an empty axis"),
    "prod": (_prod, NUMERIC_DTYPES, False, "product over axes (all if none); integers wrap in the input dtype"),
    "max": (_max, NUMERIC_DTYPES, True, "largest element over axes (all if none); nan wins"),
    "min": (_min, NUMERIC_DTYPES, True, "smallest element over axes (all if none); nan wins"),
}

for _name, (_fn, _dtypes, _needs_elements, _doc) in _REDUCTIONS.items():
    register(
        OpDef(
            _name,
            OpKind.REDUCTION,
            ("x",),
            _infer_reduce(_name, needs_elements=_needs_elements),
            _fn,
            attrs=_REDUCE_ATTRS,
            dtypes=_dtypes,
            flops=_input_numel,
            doc=_doc,
        )
    )


# ---- argmax, argmin -----------------------------------------------------------------------


def _infer_arg(op: str):
    def infer(x: TensorType, *, axis: int, keepdims: bool, select_last_index: bool) -> TensorType:
        axis = normalize_axis(op, axis, x.rank)
        require(x.shape[axis] > 0, f"{op}: axis {axis} has size 0, so there is no index to return, got {x}")
        return TensorType(reduced_shape(x.shape, (axis,), keepdims), DType.i64)

    return infer


def _arg(find):
    def reference(x: np.ndarray, *, axis: int, keepdims: bool, select_last_index: bool) -> np.ndarray:
        if not select_last_index:
            return find(x, axis=axis, keepdims=keepdims).astype(np.int64)
        # numpy returns the first of equal extremes; the first in the flipped array is the last.
        flipped = find(np.flip(x, axis), axis=axis, keepdims=keepdims)
        return (x.shape[axis] - 1 - flipped).astype(np.int64)

    return reference


_ARG_ATTRS = (
    Attr("axis", AttrKind.INT, 0),
    Attr("keepdims", AttrKind.BOOL, False),
    Attr("select_last_index", AttrKind.BOOL, False),
)

for _name, _find, _what in (("argmax", np.argmax, "largest"), ("argmin", np.argmin, "smallest")):
    register(
        OpDef(
            _name,
            OpKind.REDUCTION,
            ("x",),
            _infer_arg(_name),
            _arg(_find),
            attrs=_ARG_ATTRS,
            dtypes=NUMERIC_DTYPES,
            flops=_input_numel,
            doc=f"i64 index of the {_what} element along axis (first of ties, last if select_last_index; "
            "nan counts as the extreme)",
        )
    )


# ---- softmax, log_softmax -----------------------------------------------------------------


def _infer_softmax(op: str):
    def infer(x: TensorType, *, axis: int) -> TensorType:
        normalize_axis(op, axis, x.rank)
        return x

    return infer


def _shift_by_max(x: np.ndarray, axis: int) -> np.ndarray:
    """x - max(x) along axis, so that exp never overflows; the shift cancels in the ratio.
    `initial` lets an empty axis through (its result is empty anyway)."""
    return x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)


def _softmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    exps = np.exp(_shift_by_max(x, axis))
    return exps / np.sum(exps, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    # log(exp(s) / sum(exp(s))) = s - log(sum(exp(s))): no log of an underflowed 0.
    shifted = _shift_by_max(x, axis)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# Nominal FLOPs per element: max 1, subtract 1, exp 4, sum 1, then divide (or subtract) 1.
register(
    OpDef(
        "softmax",
        OpKind.REDUCTION,
        ("x",),
        _infer_softmax("softmax"),
        _softmax,
        attrs=(Attr("axis", AttrKind.INT, -1),),
        dtypes=FLOAT_DTYPES,
        flops_per_element=8,
        doc="exp(x) / sum(exp(x)) along axis, computed as exp(x - max) for stability",
    )
)

register(
    OpDef(
        "log_softmax",
        OpKind.REDUCTION,
        ("x",),
        _infer_softmax("log_softmax"),
        _log_softmax,
        attrs=(Attr("axis", AttrKind.INT, -1),),
        dtypes=FLOAT_DTYPES,
        flops_per_element=8,
        doc="x - log(sum(exp(x))) along axis, computed with x - max for stability",
    )
)


# ---- cumsum -------------------------------------------------------------------------------


def _infer_cumsum(x: TensorType, *, axis: int, exclusive: bool, reverse: bool) -> TensorType:
    normalize_axis("cumsum", axis, x.rank)
    return same_type(x)


def _cumsum(x: np.ndarray, *, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    # Work on a view with the scanned axis first, so the shift for `exclusive` is a plain slice.
    scanned = np.moveaxis(x, axis, 0)
    if reverse:
        scanned = scanned[::-1]
    sums = np.cumsum(scanned, axis=0, dtype=x.dtype)  # dtype=: integers wrap, as in `sum`
    if exclusive:  # element i gets the sum of the elements before it, the first gets 0
        shifted = np.zeros_like(sums)
        shifted[1:] = sums[:-1]
        sums = shifted
    if reverse:
        sums = sums[::-1]
    return np.moveaxis(sums, 0, axis)


register(
    OpDef(
        "cumsum",
        OpKind.OPAQUE,
        ("x",),
        _infer_cumsum,
        _cumsum,
        attrs=(
            Attr("axis", AttrKind.INT),
            Attr("exclusive", AttrKind.BOOL, False),
            Attr("reverse", AttrKind.BOOL, False),
        ),
        dtypes=NUMERIC_DTYPES,
        flops_per_element=1,
        doc="running sum along axis (ONNX CumSum): exclusive leaves out the element itself, "
        "reverse runs from the end; integers wrap in the input dtype",
    )
)
