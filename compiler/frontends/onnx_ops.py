"""The ONNX frontend's op table: ONNX op type -> the function that turns one node into IR.

The mappings live in family modules (`onnx_ops_elementwise`, `onnx_ops_nn`, `onnx_ops_tensor`,
`onnx_ops_attention`, `onnx_resize`); this module joins them into the one table the frontend reads, so that
supporting a new ONNX op is one entry in one family. Keys are default-domain op types; ops of
other domains would be keyed `domain::OpType`.
"""

from __future__ import annotations

from collections.abc import Callable

from compiler.frontends.onnx_context import NodeContext
from compiler.frontends.onnx_ops_attention import ATTENTION_OPS
from compiler.frontends.onnx_ops_elementwise import ELEMENTWISE_OPS
from compiler.frontends.onnx_ops_nn import NN_OPS
from compiler.frontends.onnx_ops_quant import QUANT_OPS
from compiler.frontends.onnx_ops_tensor import TENSOR_OPS
from compiler.frontends.onnx_resize import resize


def _join(*tables: dict[str, Callable[[NodeContext], object]]) -> dict[str, Callable[[NodeContext], object]]:
    joined: dict[str, Callable[[NodeContext], object]] = {}
    for table in tables:
        repeated = set(joined) & set(table)
        if repeated:
            raise ValueError(f"ONNX ops mapped twice: {sorted(repeated)}")
        joined.update(table)
    return joined


ONNX_OPS: dict[str, Callable[[NodeContext], object]] = _join(
    ELEMENTWISE_OPS, NN_OPS, TENSOR_OPS, ATTENTION_OPS, QUANT_OPS, {"Resize": resize}
)
"""ONNX op type -> mapping. A mapping returns the IR value of the node's output, or a list with
one entry per output (None for an output it cannot give, which is reported as unsupported)."""
