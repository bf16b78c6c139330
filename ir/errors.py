"""Errors raised by the graph IR: bad shapes, broken graphs, unparsable text.

They live here because `ir` imports no other package of ours; `compiler.errors` re-exports
them next to the errors of the other layers, so a user catches them from one place.
"""


class KilnError(Exception):
    """Base of every error Kiln raises on purpose; anything else is a bug in Kiln."""


class ShapeError(KilnError, ValueError):
    """An op was given inputs or attributes whose types it cannot accept."""


class OpAttributeError(KilnError, TypeError):
    """An op was given an attribute it does not declare, or one of the wrong kind."""


class VerificationError(KilnError):
    """A graph breaks an invariant of the IR (SSA, types, order, constants)."""


class ParseError(KilnError, ValueError):
    """The text form could not be read; the message points at the line and column."""


class InterpreterError(KilnError):
    """The reference interpreter could not run a graph on the given inputs."""


class UnknownOpError(KilnError, KeyError):
    """An op name that the op table does not declare."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
