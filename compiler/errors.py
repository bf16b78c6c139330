"""Every error Kiln raises on purpose, in one place for users to catch.

Each layer defines the errors it raises where it raises them (`ir` cannot import this
package); this module re-exports those and defines the errors of the compiler itself. Catch
`KilnError` for all of them. Every message says what was wrong, where, and what to do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from backends.cuda.codegen import CudaCodegenError
from backends.cuda.nvrtc import CudaCompilationError, NvrtcMissingError
from ir.errors import (
    InterpreterError,
    KilnError,
    OpAttributeError,
    ParseError,
    ShapeError,
    UnknownOpError,
    VerificationError,
)
from runtime.cuda import CudaDriverError
from runtime.cuda import CudaUnavailableError as _RuntimeCudaUnavailableError
from runtime.errors import CodeCompilationError, ProgramError, ProgramFormatError, ProgramRuntimeError


@dataclass(frozen=True)
class UnsupportedOp:
    """One node of a model that Kiln cannot import."""

    op: str
    """The op as the model names it: `aten.foo.default`, or an ONNX `domain::OpType`."""
    node: str
    """The node's name in the model."""
    source: str | None = None
    """Where it came from: the model's source line (torch) or None."""


class UnsupportedOperatorError(KilnError):
    """A model uses ops Kiln cannot import. Lists all of them at once, with counts and where
    each occurs, so one run tells the user everything that is missing."""

    def __init__(self, frontend: str, unsupported: list[UnsupportedOp]) -> None:
        self.frontend = frontend
        self.unsupported = list(unsupported)
        counts = Counter(u.op for u in unsupported)
        lines = [f"the {frontend} model uses {len(counts)} op(s) that Kiln does not support:"]
        for op, count in sorted(counts.items()):
            places = [u for u in unsupported if u.op == op]
            shown = ", ".join(f"{u.node}" + (f" ({u.source})" if u.source else "") for u in places[:3])
            more = f", and {count - 3} more" if count > 3 else ""
            lines.append(f"  {op} x{count}: {shown}{more}")
        lines.append("Rewrite these parts of the model with supported ops, or open an issue naming them.")
        super().__init__("\n".join(lines))


class StaticInputError(ShapeError):
    """An input that must be known at import time (a shape, axes, pads, ...) is computed at run
    time. `value` names the ONNX value; the frontend adds `graph_inputs`, the model inputs it
    depends on, which `import_onnx(..., constant_inputs=...)` can fix to constants."""

    def __init__(self, message: str, value: str, graph_inputs: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.value = value
        self.graph_inputs = graph_inputs


class ModelFormatError(KilnError):
    """A model file or object is malformed: truncated, not a model, or failing its checker."""


class UnsupportedOpsetError(KilnError):
    """An ONNX model's opset that Kiln cannot import, even after version conversion."""


class InputMismatchError(KilnError, TypeError):
    """A compiled model was called with inputs of the wrong count, shape or dtype."""


class MissingDependencyError(KilnError, ImportError):
    """An optional dependency (torch, onnx, pycuda) that this use of Kiln needs is not installed."""


class CudaUnavailableError(MissingDependencyError, _RuntimeCudaUnavailableError):
    """A model compiled for CUDA was called where it cannot run: pycuda is not installed, or the
    CUDA driver or a GPU is missing (the message says which). Compiling needs none of them, only
    NVRTC (`NvrtcMissingError` when that is missing). Also a `runtime.cuda.CudaUnavailableError`."""


def missing_dependency(package: str, extra: str, purpose: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"{purpose} needs {package}, which is not installed: pip install 'kiln[{extra}]' (or pip install {package})"
    )


__all__ = [
    "CodeCompilationError",
    "CudaCodegenError",
    "CudaCompilationError",
    "CudaDriverError",
    "CudaUnavailableError",
    "NvrtcMissingError",
    "ProgramError",
    "ProgramFormatError",
    "ProgramRuntimeError",
    "InputMismatchError",
    "InterpreterError",
    "KilnError",
    "MissingDependencyError",
    "ModelFormatError",
    "OpAttributeError",
    "ParseError",
    "ShapeError",
    "StaticInputError",
    "UnknownOpError",
    "UnsupportedOp",
    "UnsupportedOperatorError",
    "UnsupportedOpsetError",
    "VerificationError",
    "missing_dependency",
]
