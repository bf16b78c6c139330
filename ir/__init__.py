"""The graph IR: types, values, nodes and graphs, the op table, the verifier, the printer and
parser of the text form, and the reference interpreter.

`ir` imports no other package of Kiln (only numpy, ml_dtypes and networkx), so everything
else can stand on it. `ir.testing` (hypothesis strategies and checkers) is imported on demand.
"""

from ir.attributes import Attr, Attributes, AttrKind
from ir.builder import GraphBuilder
from ir.dtype import DType
from ir.errors import (
    InterpreterError,
    KilnError,
    OpAttributeError,
    ParseError,
    ShapeError,
    UnknownOpError,
    VerificationError,
)
from ir.graph import Graph, Node, Value
from ir.interpreter import run, run_all
from ir.ops import OPS, Law, OpDef, OpKind, get_op
from ir.parser import parse_graph
from ir.printer import print_graph
from ir.types import TensorType
from ir.verifier import verify

__all__ = [
    "OPS",
    "Attr",
    "AttrKind",
    "Attributes",
    "DType",
    "Graph",
    "GraphBuilder",
    "InterpreterError",
    "KilnError",
    "Law",
    "Node",
    "OpAttributeError",
    "OpDef",
    "OpKind",
    "ParseError",
    "ShapeError",
    "TensorType",
    "UnknownOpError",
    "Value",
    "VerificationError",
    "get_op",
    "parse_graph",
    "print_graph",
    "run",
    "run_all",
    "verify",
]
