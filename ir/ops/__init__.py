"""The op table (`ir.ops.table`) and the families of ops that fill it.

Importing this package declares every op; look ops up with `get_op(name)` or `OPS`.
"""

from ir.ops import (  # noqa: F401  (imported to register their ops)
    attention,
    contraction,
    elementwise,
    movement,
    normalization,
    pooling,
    quantization,
    reduction,
    region,
    source,
    trigonometry,
)
from ir.ops.table import OPS, Law, OpDef, OpKind, get_op, register

__all__ = ["OPS", "Law", "OpDef", "OpKind", "get_op", "register"]
