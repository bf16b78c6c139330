"""The pass manager: passes registered by name, pipelines built from text, instruments.

A pass is a frozen dataclass whose fields are its typed options, with a stable `name`, the
`numerics` it promises (exact, reassociating, precision-reducing) and a docstring whose first
line is its purpose. `parse_pipeline("canonicalize,lower_precision{dtype=bf16}")` builds a
pipeline from text, so `irdump --passes` and users name passes the same way.

`PassManager` runs a pipeline and calls instruments before and after each pass (an
instrument may skip a pass); printing the IR after a pass, timing and per-pass statistics
are instruments (`passes.instruments`). With `verify_each`, the graph is verified after every
pass, as tests and debug mode do. An error raised inside a pass gains a note naming the pass.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from ir import DType, Graph, KilnError, VerificationError, verify


class Numerics(enum.Enum):
    """What a pass promises about the values a graph computes."""

    EXACT = "exact"
    """Bit-identical outputs in the reference interpreter."""
    REASSOCIATING = "reassociating"
    """Equal in exact arithmetic; floating-point results may differ by rounding."""
    PRECISION_REDUCING = "precision-reducing"
    """Computes in lower precision on purpose; error is bounded by a stated tolerance."""


class Pass:
    """Base of all passes. Subclasses are `@register_pass` frozen dataclasses."""

    name: ClassVar[str]
    numerics: ClassVar[Numerics] = Numerics.EXACT

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError

    @classmethod
    def purpose(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __str__(self) -> str:
        """The pass as pipeline text: its name and the options that differ from their defaults."""
        changed = [
            f"{f.name}={_format_option(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")


PASSES: dict[str, type[Pass]] = {}
"""Every registered pass by name."""


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make `cls` a frozen dataclass and register it under `cls.name`."""
    if not dataclasses.is_dataclass(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
    if not getattr(cls, "name", None) or not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name):
        raise ValueError(f"pass {cls.__qualname__} needs a snake_case `name`")
    if cls.name in PASSES and PASSES[cls.name] is not cls:
        raise ValueError(f"pass {cls.name!r} is registered twice")
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    try:
        return PASSES[name]
    except KeyError:
        raise ValueError(f"unknown pass {name!r}; passes: {', '.join(sorted(PASSES))}") from None


_STEP = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """`"a,b{option=value,other=value},c"` -> pass instances, options converted by their types."""
    passes, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read the pipeline {text!r} at {text[position:]!r}")
        name, options = match.groups()
        passes.append(make_pass(name, _parse_options(name, options or "")))
        position = match.end()
    return passes


def make_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    cls = get_pass(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ValueError(f"pass {name} has no option(s) {unknown}; its options: {sorted(fields) or 'none'}")
    converted = {key: _convert_option(name, key, value, hints[key]) for key, value in (options or {}).items()}
    return cls(**converted)


def _parse_options(name: str, text: str) -> dict[str, str]:
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"pass {name}: option {item!r} needs a value (name=value)")
        options[key.strip()] = value.strip()
    return options


def _convert_option(name: str, key: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value
    target = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X] -> X
        target = next(t for t in typing.get_args(hint) if t is not type(None))
    try:
        if target is bool:
            if value not in ("true", "false"):
                raise ValueError
            return value == "true"
        if target is DType:
            return DType.parse(value)
        if isinstance(target, type) and issubclass(target, enum.Enum):
            return target(value)
        if typing.get_origin(target) is tuple or target is tuple:
            return tuple(v.strip() for v in value.split("+") if v.strip())
        return target(value)
    except (ValueError, TypeError):
        kind = getattr(target, "__name__", target)
        raise ValueError(f"pass {name}: option {key}={value!r} is not a valid {kind}") from None


def _format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    return str(value)


class Instrument:
    """Called around every pass a `PassManager` runs; override what you need."""

    def before_pass(self, step: Pass, graph: Graph) -> bool:
        """Return False to skip the pass."""
        return True

    def after_pass(self, step: Pass, before: Graph, after: Graph, seconds: float) -> None:
        pass


@dataclasses.dataclass
class PassManager:
    """Runs `passes` in order over a graph."""

    passes: Sequence[Pass]
    instruments: Sequence[Instrument] = ()
    verify_each: bool = False
    """Verify the graph after every pass (tests and debug mode)."""

    @classmethod
    def from_text(cls, text: str, **kwargs: Any) -> PassManager:
        return cls(parse_pipeline(text), **kwargs)

    def run(self, graph: Graph) -> Graph:
        if self.verify_each:
            verify(graph)
        for step in self.passes:
            if not all(instrument.before_pass(step, graph) for instrument in self.instruments):
                continue
            start = time.perf_counter()
            try:
                result = step.run(graph)
            except KilnError as error:
                error.add_note(f"in pass {step}")
                raise
            seconds = time.perf_counter() - start
            if self.verify_each:
                try:
                    verify(result)
                except VerificationError as error:
                    raise VerificationError(f"after pass {step}: {error}") from None
            for instrument in self.instruments:
                instrument.after_pass(step, graph, result, seconds)
            graph = result
        return graph


def pipeline_text(passes: Iterable[Pass]) -> str:
    return ",".join(str(p) for p in passes)
