"""Op attributes: their declared kinds, how given values are normalised, and the frozen
mapping a node holds them in.

Every node carries all of its op's attributes, defaults filled in, normalised to one Python
form per kind (ints are `int`, lists are tuples, ...), so that equal attributes compare and hash
equal and the printer can leave out the ones that equal their default.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ir.dtype import DType
from ir.errors import OpAttributeError


class AttrKind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    INTS = "ints"
    FLOATS = "floats"
    DTYPE = "dtype"
    GRAPH = "graph"
    """A nested graph: the body of a region such as a fused group."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of an attribute that every node must give."""


@dataclass(frozen=True, slots=True)
class Attr:
    """The declaration of one attribute of an op."""

    name: str
    kind: AttrKind
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    """The only values allowed, for enum-like string attributes."""
    optional: bool = False
    """Whether the attribute may be absent (held as `None`), e.g. a scale computed when unset."""

    def normalize(self, value: Any, op: str) -> Any:
        """The canonical form of `value`, or `OpAttributeError` saying what was expected."""
        if value is None and (self.optional or self.default is None):
            return None
        try:
            result = _NORMALIZE[self.kind](value)
        except (TypeError, ValueError):
            raise OpAttributeError(f"{op}: attribute {self.name!r} expects {self.kind.value}, got {value!r}") from None
        if self.choices is not None and result not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise OpAttributeError(f"{op}: attribute {self.name!r} must be one of {allowed}, got {value!r}")
        return result

    def is_default(self, value: Any, op: str) -> bool:
        """Whether `value` (normalised) is the default, so that printing may leave it out."""
        if self.default is REQUIRED:
            return False
        default = None if self.default is None else self.normalize(self.default, op)
        # repr tells -0.0 from 0.0 and finds nan equal to nan, as the text form does.
        return type(value) is type(default) and repr(value) == repr(default)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise TypeError
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError
    return bool(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError
    return tuple(_int(v) for v in value)


def _floats(value: Any) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError
    return tuple(_float(v) for v in value)


def _dtype(value: Any) -> DType:
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        return DType.parse(value)
    raise TypeError


def _graph(value: Any) -> Any:
    from ir.graph import Graph  # graph.py imports this module

    if not isinstance(value, Graph):
        raise TypeError
    return value


_NORMALIZE = {
    AttrKind.INT: _int,
    AttrKind.FLOAT: _float,
    AttrKind.BOOL: _bool,
    AttrKind.STR: _str,
    AttrKind.INTS: _ints,
    AttrKind.FLOATS: _floats,
    AttrKind.DTYPE: _dtype,
    AttrKind.GRAPH: _graph,
}


class Attributes(Mapping[str, Any]):
    """An immutable, hashable mapping from attribute name to normalised value, sorted by name."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted((items or {}).items()))
        self._hash = hash(self._items)

    def __getitem__(self, key: str) -> Any:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attributes):
            return self._items == other._items
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"Attributes({dict(self._items)!r})"


def normalize_attributes(op: str, declared: tuple[Attr, ...], given: Mapping[str, Any]) -> Attributes:
    """Check `given` against the declarations, fill in defaults, and freeze the result."""
    names = {a.name for a in declared}
    unknown = sorted(set(given) - names)
    if unknown:
        expected = ", ".join(sorted(names)) or "none"
        raise OpAttributeError(f"{op}: unknown attribute(s) {', '.join(unknown)} (it takes: {expected})")
    result = {}
    for attr in declared:
        if attr.name in given:
            result[attr.name] = attr.normalize(given[attr.name], op)
        elif attr.default is REQUIRED:
            raise OpAttributeError(f"{op}: attribute {attr.name!r} ({attr.kind.value}) is required")
        else:
            result[attr.name] = attr.normalize(attr.default, op) if attr.default is not None else None
    return Attributes(result)
