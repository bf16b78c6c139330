"""The kernel IR (`ir.loop`): loop nests over buffers that every backend prints, with its
printer and interpreter. See `ir.loop.nodes` for the language and its semantics."""

from ir.loop.interpreter import run_kernel
from ir.loop.nodes import (
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)
from ir.loop.printer import print_kernel

__all__ = [
    "Assign", "Barrier", "Binary", "Buffer", "Call", "Cast", "Const", "Expr", "For", "If", "Kernel", "Load",
    "LoopKind", "Ref", "Scope", "Select", "Stmt", "Store", "Unary", "Var", "print_kernel", "run_kernel",
]  # fmt: skip
