"""Attention: `scaled_dot_product_attention`, kept whole in the graph so that a backend with a
fused (flash-style) kernel can match it as one op.

It is a composite op: its meaning is its decomposition into matmul, transpose, mul, where/add,
softmax and matmul, which the interpreter expands and which a backend without an attention
kernel lowers instead. The semantics are torch's `scaled_dot_product_attention`: a bool mask
is True where a query may attend, a float mask is added to the scores, and `causal` lets query
i attend keys j <= i (upper-left aligned when L != S). A row that may attend nothing gives nan,
as softmax over all -inf does.
"""

from __future__ import annotations

import math

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import FLOAT_DTYPES, DType
from ir.ops.shapes import broadcasts_to, require, same_dtype
from ir.ops.table import OpDef, OpKind, register
from ir.types import TensorType

_OP = "scaled_dot_product_attention"


def _infer(
    q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None = None, *, causal: bool, scale: float | None
) -> TensorType:
    dtype = same_dtype(_OP, q, k, v)
    require(q.rank >= 2, f"{_OP}: q must be [..., L, E], got {q}")
    require(
        k.rank == q.rank and v.rank == q.rank and q.shape[:-2] == k.shape[:-2] == v.shape[:-2],
        f"{_OP}: q, k and v must have the same leading dims, got {q}, {k}, {v}",
    )
    require(k.shape[-1] == q.shape[-1], f"{_OP}: k must be [..., S, E] with q's E = {q.shape[-1]}, got {k}")
    require(v.shape[-2] == k.shape[-2], f"{_OP}: v must be [..., S, Ev] with k's S = {k.shape[-2]}, got {v}")
    require(scale is not None or q.shape[-1] > 0, f"{_OP}: the default scale 1/sqrt(E) needs E > 0, got q {q}")
    scores = (*q.shape[:-1], k.shape[-2])
    if mask is not None:
        require(
            mask.dtype in (DType.bool, dtype),
            f"{_OP}: mask must be bool (True = may attend) or additive {dtype}, got {mask}",
        )
        require(
            broadcasts_to(mask.shape, scores),
            f"{_OP}: mask {mask} does not broadcast to the scores [{','.join(map(str, scores))}]",
        )
    return TensorType((*q.shape[:-1], v.shape[-1]), dtype)


def _decompose(builder, q, k, v, mask=None, *, causal: bool, scale: float | None):
    """softmax(q @ k^T * scale, masked) @ v, appended to `builder`."""
    dtype = q.type.dtype.numpy
    length, source, features = q.type.shape[-2], k.type.shape[-2], q.type.shape[-1]
    rank = k.type.rank
    keys_t = builder.transpose(k, perm=(*range(rank - 2), rank - 1, rank - 2))
    scores = builder.matmul(q, keys_t)
    factor = 1 / math.sqrt(features) if scale is None else scale
    scores = builder.mul(scores, builder.constant(np.array(factor, dtype=dtype), "scale"))
    # Masked scores become -inf, so that softmax gives them exactly zero weight.
    if mask is not None and mask.type.dtype == DType.bool:
        scores = builder.where(mask, scores, builder.constant(np.array(-np.inf, dtype=dtype), "masked"))
    elif mask is not None:
        scores = builder.add(scores, mask)
    if causal:
        allowed = builder.constant(np.tril(np.ones((length, source), dtype=bool)), "causal")
        scores = builder.where(allowed, scores, builder.constant(np.array(-np.inf, dtype=dtype), "masked"))
    weights = builder.softmax(scores, axis=-1)
    return builder.matmul(weights, v)


def _flops(inputs: tuple[TensorType, ...], outputs: tuple[TensorType, ...], attrs) -> int:
    q, k, v = inputs[:3]
    score_count = math.prod(q.shape[:-1]) * k.shape[-2]  # batch * L * S
    # Two matmuls (q @ k^T, weights @ v), then about 8 per score: scale, mask, and softmax's
    # max, subtract, exp (counted as 4 like the elementwise exp) and divide.
    return score_count * (2 * q.shape[-1] + 2 * v.shape[-1] + 8)


register(
    OpDef(
        _OP,
        OpKind.CONTRACTION,
        ("q", "k", "v", "mask?"),
        _infer,
        None,
        attrs=(Attr("causal", AttrKind.BOOL, False), Attr("scale", AttrKind.FLOAT, None, optional=True)),
        dtypes=FLOAT_DTYPES,
        flops=_flops,
        decompose=_decompose,
        doc="softmax(q @ k^T * scale + mask) @ v for q [..., L, E], k [..., S, E], v [..., S, Ev]; scale defaults "
        "to 1/sqrt(E); a bool mask is True where attending is allowed; causal: query i attends keys j <= i",
    )
)
