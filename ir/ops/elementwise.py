"""Elementwise and broadcasting ops: unary math, binary arithmetic with numpy broadcasting,
comparisons, logic, `where`, `clip` and `cast`.

References compute in the dtype they are handed (the interpreter hands low-precision floats
over as f32, or everything as f64 in oracle mode) and the interpreter rounds the result to the
declared output type, which is what a kernel that loads f16, computes in f32 and stores f16
does. FLOP counts are nominal: 1 per arithmetic op, more for transcendental functions.
"""

from __future__ import annotations

import math

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import ALL_DTYPES, FLOAT_DTYPES, NUMERIC_DTYPES, SIGNED_NUMERIC_DTYPES, DType
from ir.ops.shapes import broadcast_shapes, require_dtype, same_dtype, same_type
from ir.ops.table import Law, OpDef, OpKind, register
from ir.types import TensorType

_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; math.erf is exact to double precision


def erf(x: np.ndarray) -> np.ndarray:
    return np.asarray(_erf(x), dtype=np.float64).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-x))) never overflows, unlike 1 / (1 + exp(-x)) for very negative x.
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)


def _gelu(x: np.ndarray, *, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1 + np.tanh(inner))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _sign(x: np.ndarray) -> np.ndarray:
    return np.sign(x)


# name -> (reference, dtypes, FLOPs per element, laws, doc)
_UNARY = {
    "neg": (np.negative, SIGNED_NUMERIC_DTYPES, 1, {Law.INVOLUTION}, "-x"),
    "abs": (np.abs, NUMERIC_DTYPES, 1, {Law.IDEMPOTENT}, "|x|"),
    "exp": (np.exp, FLOAT_DTYPES, 4, set(), "e**x"),
    "log": (np.log, FLOAT_DTYPES, 4, set(), "natural logarithm; nan below 0, -inf at 0"),
    "sqrt": (np.sqrt, FLOAT_DTYPES, 1, set(), "square root; nan below 0"),
    "rsqrt": (lambda x: 1 / np.sqrt(x), FLOAT_DTYPES, 2, set(), "1 / sqrt(x)"),
    "reciprocal": (lambda x: 1 / x, FLOAT_DTYPES, 1, {Law.INVOLUTION}, "1 / x"),
    "tanh": (np.tanh, FLOAT_DTYPES, 4, set(), "hyperbolic tangent"),
    "sigmoid": (sigmoid, FLOAT_DTYPES, 4, set(), "1 / (1 + e**-x)"),
    "relu": (lambda x: np.maximum(x, 0), SIGNED_NUMERIC_DTYPES, 1, {Law.IDEMPOTENT}, "max(x, 0)"),
    "silu": (lambda x: x * sigmoid(x), FLOAT_DTYPES, 5, set(), "x * sigmoid(x)"),
    "erf": (erf, FLOAT_DTYPES, 4, set(), "the error function"),
    "sin": (np.sin, FLOAT_DTYPES, 4, set(), "sine"),
    "cos": (np.cos, FLOAT_DTYPES, 4, set(), "cosine"),
    "floor": (np.floor, FLOAT_DTYPES, 1, {Law.IDEMPOTENT}, "round towards -inf"),
    "ceil": (np.ceil, FLOAT_DTYPES, 1, {Law.IDEMPOTENT}, "round towards +inf"),
    "round": (np.round, FLOAT_DTYPES, 1, {Law.IDEMPOTENT}, "round half to even"),
    "sign": (_sign, SIGNED_NUMERIC_DTYPES, 1, {Law.IDEMPOTENT}, "-1, 0 or 1 (nan stays nan)"),
    "not": (np.logical_not, frozenset({DType.bool}), 1, {Law.INVOLUTION}, "logical not"),
}


def _in_f64(reference):
    """`reference` evaluated in f64 for f32 input (the interpreter rounds the result back). numpy's
    f32 math takes a SIMD or a scalar path by the array's shape and layout, and the two may differ
    in the last bit (asin of a [1] array vs a 0-d one): then a folded constant would differ from
    the value the graph computes. Rounded from f64, the result is the same whatever the layout."""

    def evaluate(x: np.ndarray) -> np.ndarray:
        return reference(x.astype(np.float64) if x.dtype == np.float32 else x)

    return evaluate


def register_unary(name: str, reference, dtypes, flops: int, laws=(), doc: str = "") -> OpDef:
    """Declare an attribute-free unary elementwise op (the output has the input's type)."""
    return register(
        OpDef(name, OpKind.ELEMENTWISE, ("x",), same_type, _in_f64(reference), dtypes=frozenset(dtypes),
              laws=frozenset(laws), flops_per_element=flops, doc=doc)
    )  # fmt: skip


for _name, (_fn, _dtypes, _flops, _laws, _doc) in _UNARY.items():
    register_unary(_name, _fn, _dtypes, _flops, _laws, _doc)

register(
    OpDef(
        "gelu",
        OpKind.ELEMENTWISE,
        ("x",),
        same_type,
        _gelu,
        attrs=(Attr("approximate", AttrKind.STR, "none", choices=("none", "tanh")),),
        dtypes=FLOAT_DTYPES,
        flops_per_element=8,
        doc="x * Phi(x); approximate='tanh' uses the tanh formula of torch and ONNX",
    )
)


def _broadcast_same_dtype(op: str):
    def infer(a: TensorType, b: TensorType, **_attrs: object) -> TensorType:
        return TensorType(broadcast_shapes(op, a.shape, b.shape), same_dtype(op, a, b))

    return infer


def _compare(op: str):
    def infer(a: TensorType, b: TensorType) -> TensorType:
        same_dtype(op, a, b)
        return TensorType(broadcast_shapes(op, a.shape, b.shape), DType.bool)

    return infer


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True division for floats; for integers, C's truncation towards zero (x / 0 gives 0)."""
    if a.dtype.kind == "f":
        return a / b
    with np.errstate(all="ignore"):
        quotient = np.floor_divide(a, b)
        remainder = a - quotient * b
        rounded_down = (remainder != 0) & ((a < 0) != (b < 0))
        return np.where(b == 0, 0, quotient + rounded_down)


def _mod(a: np.ndarray, b: np.ndarray, *, fmod: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.fmod(a, b) if fmod else np.mod(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.power(a, b)


# name -> (reference, dtypes, FLOPs per element, laws, doc)
_BINARY = {
    "add": (np.add, NUMERIC_DTYPES, 1, {Law.COMMUTATIVE, Law.ASSOCIATIVE}, "a + b"),
    "sub": (np.subtract, NUMERIC_DTYPES, 1, set(), "a - b"),
    "mul": (np.multiply, NUMERIC_DTYPES, 1, {Law.COMMUTATIVE, Law.ASSOCIATIVE}, "a * b"),
    "div": (_divide, NUMERIC_DTYPES, 1, set(), "a / b; integers truncate towards zero"),
    "pow": (_pow, FLOAT_DTYPES, 4, set(), "a ** b"),
    "maximum": (
        np.maximum,
        NUMERIC_DTYPES,
        1,
        {Law.COMMUTATIVE, Law.ASSOCIATIVE, Law.IDEMPOTENT},
        "max(a, b); nan wins",
    ),
    "minimum": (
        np.minimum,
        NUMERIC_DTYPES,
        1,
        {Law.COMMUTATIVE, Law.ASSOCIATIVE, Law.IDEMPOTENT},
        "min(a, b); nan wins",
    ),
    "and": (np.logical_and, {DType.bool}, 1, {Law.COMMUTATIVE, Law.ASSOCIATIVE, Law.IDEMPOTENT}, "logical and"),
    "or": (np.logical_or, {DType.bool}, 1, {Law.COMMUTATIVE, Law.ASSOCIATIVE, Law.IDEMPOTENT}, "logical or"),
    "xor": (np.logical_xor, {DType.bool}, 1, {Law.COMMUTATIVE, Law.ASSOCIATIVE}, "logical xor"),
}

for _name, (_fn, _dtypes, _flops, _laws, _doc) in _BINARY.items():
    register(
        OpDef(
            _name,
            OpKind.BROADCAST,
            ("a", "b"),
            _broadcast_same_dtype(_name),
            _fn,
            dtypes=frozenset(_dtypes),
            laws=frozenset(_laws),
            flops_per_element=_flops,
            doc=_doc,
        )
    )

register(
    OpDef(
        "mod",
        OpKind.BROADCAST,
        ("a", "b"),
        _broadcast_same_dtype("mod"),
        _mod,
        attrs=(Attr("fmod", AttrKind.BOOL, False),),
        dtypes=NUMERIC_DTYPES,
        flops_per_element=1,
        doc="remainder with the sign of b (Python, torch.remainder); fmod=true: sign of a (C fmod)",
    )
)

_COMPARISONS = {
    "equal": (np.equal, {Law.COMMUTATIVE}, "a == b"),
    "not_equal": (np.not_equal, {Law.COMMUTATIVE}, "a != b"),
    "less": (np.less, set(), "a < b"),
    "less_equal": (np.less_equal, set(), "a <= b"),
    "greater": (np.greater, set(), "a > b"),
    "greater_equal": (np.greater_equal, set(), "a >= b"),
}

for _name, (_fn, _laws, _doc) in _COMPARISONS.items():
    register(
        OpDef(
            _name,
            OpKind.BROADCAST,
            ("a", "b"),
            _compare(_name),
            _fn,
            dtypes=ALL_DTYPES,
            laws=frozenset(_laws),
            flops_per_element=1,
            doc=_doc + "; bool result",
        )
    )


def _infer_where(condition: TensorType, a: TensorType, b: TensorType) -> TensorType:
    require_dtype("where", condition, {DType.bool}, "condition")
    shape = broadcast_shapes("where", condition.shape, a.shape, b.shape)
    return TensorType(shape, same_dtype("where", a, b))


register(
    OpDef(
        "where",
        OpKind.BROADCAST,
        ("condition", "a", "b"),
        _infer_where,
        np.where,
        dtypes=frozenset({DType.bool}),
        flops_per_element=1,
        doc="a where condition else b",
    )
)


def _clip(x: np.ndarray, *, min: float | None, max: float | None) -> np.ndarray:
    low = -np.inf if min is None else min
    high = np.inf if max is None else max
    if x.dtype.kind != "f":  # integer bounds: round inwards so the result stays in range
        low = math.ceil(low) if math.isfinite(low) else None
        high = math.floor(high) if math.isfinite(high) else None
    return np.clip(x, low, high).astype(x.dtype)


register(
    OpDef(
        "clip",
        OpKind.ELEMENTWISE,
        ("x",),
        same_type,
        _clip,
        attrs=(Attr("min", AttrKind.FLOAT, None, optional=True), Attr("max", AttrKind.FLOAT, None, optional=True)),
        dtypes=NUMERIC_DTYPES,
        flops_per_element=2,
        doc="min(max(x, min), max); an absent bound does not bound",
    )
)


def _cast(x: np.ndarray, *, dtype: DType) -> np.ndarray:
    if dtype == DType.bool:
        return x != 0
    if x.dtype.kind == "f" and dtype.is_integer:  # C semantics: truncate towards zero
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(dtype.numpy)
    return x.astype(dtype.numpy)


register(
    OpDef(
        "cast",
        OpKind.ELEMENTWISE,
        ("x",),
        lambda x, dtype: x.with_dtype(dtype),
        _cast,
        attrs=(Attr("dtype", AttrKind.DTYPE),),
        flops_per_element=1,
        doc="convert to dtype: floats round to nearest even, float->int truncates, x->bool is x != 0",
    )
)
