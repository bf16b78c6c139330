"""Kiln's public API: `compile` a PyTorch module or an ONNX model for a target, and the
`irdump` command line.

`import compiler` stays light: torch, onnx and pycuda are imported by the functions that
need them, never here.
"""

from compiler import errors
from compiler.api import CompiledModel, compile, load

__all__ = ["CompiledModel", "compile", "errors", "load"]
