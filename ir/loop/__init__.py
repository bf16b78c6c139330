"""The kernel IR (`ir.loop`): loop nests over buffers that every backend prints, with its
printer and its interpreters: `run_kernel` (serial, the reference) and `run_lockstep` (a GPU
schedule's blocks one after another, each block's threads together). See `ir.loop.nodes` for
the language and its semantics."""

from ir.loop.interpreter import run_kernel
from ir.loop.lockstep import DivergenceError, RaceError, launch_dims, run_lockstep
from ir.loop.nodes import (
    WARP_SHUFFLES,
    WARP_SIZE,
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
    "WARP_SHUFFLES", "WARP_SIZE", "Assign", "Barrier", "Binary", "Buffer", "Call", "Cast", "Const",
    "DivergenceError", "Expr", "For", "If", "Kernel", "Load", "LoopKind", "RaceError", "Ref", "Scope", "Select",
    "Stmt", "Store", "Unary", "Var", "launch_dims", "print_kernel", "run_kernel", "run_lockstep",
]  # fmt: skip
