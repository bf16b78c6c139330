"""Ops without tensor inputs: named constants, `full` and `arange`.

`const` refers to an array in the graph's constant table by name; its type comes from that
array, so the verifier checks it against the table instead of calling a shape rule.
"""

from __future__ import annotations

import math

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import DType
from ir.errors import ShapeError
from ir.ops.shapes import require
from ir.ops.table import OpDef, OpKind, register
from ir.types import TensorType


def _const_has_no_rule(*, name: str) -> TensorType:
    raise ShapeError(f"const @{name}: a constant's type comes from the graph's constant table")


def _const_has_no_reference(*, name: str) -> np.ndarray:
    raise ShapeError(f"const @{name}: the interpreter reads constants from the graph")


register(
    OpDef(
        "const",
        OpKind.MOVEMENT,
        (),
        _const_has_no_rule,
        _const_has_no_reference,
        attrs=(Attr("name", AttrKind.STR),),
        doc="the graph constant @name",
    )
)


def _infer_full(*, shape: tuple[int, ...], value: float, dtype: DType) -> TensorType:
    require(all(d >= 0 for d in shape), f"full: shape {shape} has a negative dimension")
    return TensorType(shape, dtype)


register(
    OpDef(
        "full",
        OpKind.MOVEMENT,
        (),
        _infer_full,
        lambda *, shape, value, dtype: np.full(shape, value, dtype=dtype.numpy),
        attrs=(Attr("shape", AttrKind.INTS), Attr("value", AttrKind.FLOAT), Attr("dtype", AttrKind.DTYPE)),
        doc="a tensor of `shape` filled with `value`",
    )
)


def _arange_length(op: str, start: float, limit: float, delta: float) -> int:
    require(delta != 0, f"{op}: delta must not be 0")
    return max(math.ceil((limit - start) / delta), 0)


def _infer_arange(*, start: float, limit: float, delta: float, dtype: DType) -> TensorType:
    return TensorType((_arange_length("arange", start, limit, delta),), dtype)


def _arange(*, start: float, limit: float, delta: float, dtype: DType) -> np.ndarray:
    count = _arange_length("arange", start, limit, delta)
    # start + i * delta in f64, as torch and ONNX define it, then rounded once to dtype.
    return (start + np.arange(count, dtype=np.float64) * delta).astype(dtype.numpy)


register(
    OpDef(
        "arange",
        OpKind.MOVEMENT,
        (),
        _infer_arange,
        _arange,
        attrs=(
            Attr("start", AttrKind.FLOAT, 0.0),
            Attr("limit", AttrKind.FLOAT),
            Attr("delta", AttrKind.FLOAT, 1.0),
            Attr("dtype", AttrKind.DTYPE, DType.i64),
        ),
        doc="start, start + delta, ... up to but excluding limit (an iota when start=0, delta=1)",
    )
)
