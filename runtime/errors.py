"""Errors the runtime raises on purpose: bad inputs at call time, malformed programs, unreadable
saved files, code that does not compile.

They live here because `runtime` imports no other package of ours (a saved program runs with
this package alone), so they cannot derive from `ir.errors.KilnError`; `compiler.errors`
re-exports them next to the errors of the other layers. Catch `ProgramRuntimeError` for all of
them.
"""

from __future__ import annotations


class ProgramRuntimeError(Exception):
    """Base of every error the runtime raises on purpose; anything else is a bug in Kiln."""


class InputMismatchError(ProgramRuntimeError, TypeError):
    """A program was run with inputs of the wrong count, shape or dtype. The message names the
    input, what the program expects and what it got."""


class ProgramError(ProgramRuntimeError, ValueError):
    """A `Program` breaks an invariant of its own (an index out of range, a constant of the
    wrong shape, an intermediate outside the arena): a bug in whatever built it."""


class ProgramFormatError(ProgramRuntimeError, ValueError):
    """A saved program could not be read: not a Kiln program, truncated, or of a newer format."""


class CodeCompilationError(ProgramRuntimeError):
    """A program's generated code could not be compiled or lacks a kernel it launches."""
