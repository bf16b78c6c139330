"""Every error Kiln raises on purpose, in one place for users to catch.

Each layer defines the errors it raises where it raises them (the `ir` package cannot import
this one); this module gathers them. Catch `KilnError` for all of them.
"""

from ir.errors import (
    InterpreterError,
    KilnError,
    OpAttributeError,
    ParseError,
    ShapeError,
    UnknownOpError,
    VerificationError,
)

__all__ = [
    "InterpreterError",
    "KilnError",
    "OpAttributeError",
    "ParseError",
    "ShapeError",
    "UnknownOpError",
    "VerificationError",
]
