"""The op table: every op of the graph IR declared once, with everything known about it.

An `OpDef` holds an op's inputs, attributes, type/shape rule, numpy reference, kind, algebraic
laws and cost. The verifier, the interpreter, the printer and parser, the passes and the
backends all read the same entry; no other list of op names exists. The families of ops are
declared in the sibling modules (`elementwise`, `reduction`, ...) and `ir.ops` imports them
all, so importing `ir` fills the table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ir.attributes import Attr, Attributes, AttrKind, normalize_attributes
from ir.dtype import ALL_DTYPES, DType
from ir.errors import ShapeError, UnknownOpError
from ir.types import TensorType


class OpKind(enum.Enum):
    """How an op touches memory, which is what fusion and scheduling care about."""

    ELEMENTWISE = "elementwise"
    """Output element i depends on input element i only; all shapes equal."""
    BROADCAST = "broadcast"
    """Elementwise after numpy broadcasting of the inputs."""
    MOVEMENT = "movement"
    """Injective: each output element is one input element (or a constant); no arithmetic."""
    REDUCTION = "reduction"
    """Output elements combine many input elements along some axes."""
    CONTRACTION = "contraction"
    """Sums of products (matmul, conv): the compute-bound ops that carry an epilogue."""
    OPAQUE = "opaque"
    """Anything else; fused with nothing."""


class Law(enum.Enum):
    """Algebraic facts that rewrites may rely on."""

    COMMUTATIVE = "commutative"
    """f(a, b) == f(b, a)"""
    ASSOCIATIVE = "associative"
    """f(f(a, b), c) == f(a, f(b, c)) (exactly for ints and min/max; floats reassociate)"""
    IDEMPOTENT = "idempotent"
    """f(f(x)) == f(x) for unary ops, f(x, x) == x for binary ones"""
    INVOLUTION = "involution"
    """f(f(x)) == x"""


InferFn = Callable[..., TensorType | tuple[TensorType, ...]]
ReferenceFn = Callable[..., np.ndarray | tuple[np.ndarray, ...]]
DecomposeFn = Callable[..., Any]
"""`decompose(builder, *input_values, **attrs)` appends simpler ops to an `ir.GraphBuilder`
and returns the output value(s)."""
FlopsFn = Callable[[tuple[TensorType, ...], tuple[TensorType, ...], Attributes], int]


@dataclass(frozen=True)
class OpDef:
    """One op. `infer` and `reference` take the inputs positionally and the attributes as
    keywords: `infer(*input_types, **attrs)`, `reference(*arrays, **attrs)`."""

    name: str
    kind: OpKind
    inputs: tuple[str, ...]
    """Input names; `name?` is optional (only trailing ones), `*name` takes one or more, `*name?`
    any number."""
    infer: InferFn
    reference: ReferenceFn | None
    """The numpy semantics; `None` for a composite op whose `decompose` defines it."""
    attrs: tuple[Attr, ...] = ()
    dtypes: frozenset[DType] = ALL_DTYPES
    """The element types the (first) input may have; `infer` checks the rest."""
    laws: frozenset[Law] = frozenset()
    flops_per_element: int = 0
    """FLOPs per output element, for ops where that is the whole story."""
    flops: FlopsFn | None = None
    """FLOPs of one application, for ops where it is not proportional to the output."""
    decompose: DecomposeFn | None = None
    """The op written with simpler ops, for composite ops (attention) that the interpreter
    expands and that a backend without a kernel for them can lower."""
    doc: str = ""
    attr_index: Mapping[str, Attr] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr_index", {a.name: a for a in self.attrs})
        if self.reference is None and self.decompose is None:
            raise ValueError(f"op {self.name!r} needs a reference or a decomposition")

    @property
    def is_region(self) -> bool:
        """Whether the op holds a body graph (`fused`): passes treat such nodes as a whole."""
        return any(attr.kind is AttrKind.GRAPH for attr in self.attrs)

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[0].startswith("*")

    @property
    def min_inputs(self) -> int:
        if self.variadic:
            return 0 if self.inputs[0].endswith("?") else 1
        return sum(1 for name in self.inputs if not name.endswith("?"))

    @property
    def max_inputs(self) -> int | None:
        return None if self.variadic else len(self.inputs)

    def check_arity(self, count: int) -> None:
        high = self.max_inputs
        if count < self.min_inputs or (high is not None and count > high):
            expected = (
                f"at least {self.min_inputs}"
                if high is None
                else (str(high) if high == self.min_inputs else f"{self.min_inputs} to {high}")
            )
            raise ShapeError(f"{self.name} takes {expected} input(s) ({', '.join(self.inputs)}), got {count}")

    def normalize_attrs(self, given: Mapping[str, Any]) -> Attributes:
        return normalize_attributes(self.name, self.attrs, given)

    def infer_types(self, input_types: tuple[TensorType, ...], attrs: Attributes) -> tuple[TensorType, ...]:
        """The output types for these inputs; `ShapeError` when the op cannot take them."""
        self.check_arity(len(input_types))
        if input_types and input_types[0].dtype not in self.dtypes:
            allowed = ", ".join(sorted(d.value for d in self.dtypes))
            raise ShapeError(f"{self.name} does not take {input_types[0].dtype} inputs (it takes {allowed})")
        result = self.infer(*input_types, **attrs)
        return result if isinstance(result, tuple) else (result,)

    def run_reference(self, arrays: list[np.ndarray], attrs: Attributes) -> tuple[np.ndarray, ...]:
        """The op's numpy semantics: its reference, or else its decomposition interpreted."""
        if self.reference is not None:
            result = self.reference(*arrays, **attrs)
            return result if isinstance(result, tuple) else (result,)
        from ir.builder import GraphBuilder  # the table is imported by the builder
        from ir.interpreter import run
        from ir.types import tensor_type_of

        builder = GraphBuilder(f"{self.name}_expanded")
        inputs = [builder.input(f"in{i}", tensor_type_of(a)) for i, a in enumerate(arrays)]
        outputs = self.decompose(builder, *inputs, **attrs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(run(builder.build(*outputs), arrays))

    def cost_flops(
        self, input_types: tuple[TensorType, ...], output_types: tuple[TensorType, ...], attrs: Attributes
    ) -> int:
        if self.flops is not None:
            return int(self.flops(input_types, output_types, attrs))
        return self.flops_per_element * sum(t.numel for t in output_types)

    @staticmethod
    def cost_bytes(input_types: tuple[TensorType, ...], output_types: tuple[TensorType, ...]) -> int:
        """Bytes read and written if the op ran alone: every input once, every output once."""
        return sum(t.nbytes for t in input_types) + sum(t.nbytes for t in output_types)


OPS: dict[str, OpDef] = {}
"""The op table: op name -> declaration."""


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is declared twice")
    OPS[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise UnknownOpError(f"unknown op {name!r}; the op table has: {', '.join(sorted(OPS))}") from None
