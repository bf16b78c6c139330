"""Walks an ATen-level `torch.fx` graph (from torch.export or make_fx) and builds the IR graph.

`GraphConverter` maps placeholders to IR inputs and constants, then each call node through the
one ATen table (`compiler.frontends.torch_ops.ATEN_OPS`), handing the op function an `Emitter`:
the builder plus what torch knows about the node (its result dtype and shape, which outputs are
used, its source line). Every node is visited even after a failure, so one
`UnsupportedOperatorError` lists all unsupported ops at once; the half-built graph is dropped.
Each emitted value is checked against torch's own shape and dtype for the node, so a mapping
that disagrees with torch fails at import, naming the node, instead of computing wrong numbers.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import ir
from compiler.errors import ShapeError, UnsupportedOp, UnsupportedOperatorError
from compiler.tensors import to_numpy
from ir import DType, GraphBuilder, Value
from ir.graph import to_identifier

_TORCH_TO_IR = {
    torch.float64: DType.f64,
    torch.float32: DType.f32,
    torch.float16: DType.f16,
    torch.bfloat16: DType.bf16,
    torch.int64: DType.i64,
    torch.int32: DType.i32,
    torch.int8: DType.i8,
    torch.uint8: DType.u8,
    torch.bool: DType.bool,
}
_IR_TO_TORCH = {ir_dtype: torch_dtype for torch_dtype, ir_dtype in _TORCH_TO_IR.items()}


def torch_dtype_to_ir(dtype: torch.dtype) -> DType | None:
    """The IR dtype of a torch dtype, or None where the IR has none (int16, complex, float8...)."""
    return _TORCH_TO_IR.get(dtype)


def ir_dtype_to_torch(dtype: DType) -> torch.dtype:
    return _IR_TO_TORCH[dtype]


class NotImportable(Exception):
    """An op function's refusal of one node (an argument form the IR cannot express); the
    converter collects these into `UnsupportedOperatorError`."""


class Emitter:
    """What an ATen op function may use to emit IR for one node."""

    def __init__(self, builder: GraphBuilder, node: torch.fx.Node, source: str) -> None:
        self.builder = builder
        self.node = node
        self.source = source

    # -- what torch knows about the node --------------------------------------------------------------

    @property
    def out_meta(self) -> torch.Tensor:
        """torch's (fake) result of the node; the first one for multi-output ops."""
        val = self.node.meta["val"]
        return val[0] if isinstance(val, (tuple, list)) else val

    @property
    def out_dtype(self) -> DType:
        return _ir_dtype(self.out_meta.dtype)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.out_meta.shape)

    def used_outputs(self) -> set[int]:
        """The indices of a multi-output node's results that some node reads."""
        return {user.args[1] for user in self.node.users if user.target is operator.getitem}

    # -- emitting --------------------------------------------------------------------------------------

    def op(self, name: str, *inputs: Value, **attrs: Any) -> Any:
        return self.builder.op(name, *inputs, source=self.source, **attrs)

    def scalar(self, value: float | bool, dtype: DType) -> Value:
        """A 0-d constant: how a Python scalar operand enters the IR, in its partner's dtype."""
        return self.builder.constant(np.array(value, dtype=dtype.numpy), "scalar")

    def constant(self, array: np.ndarray, name: str) -> Value:
        return self.builder.constant(array, name)

    def cast(self, value: Value, dtype: DType) -> Value:
        if value.type.dtype == dtype:
            return value
        return self.op("cast", value, dtype=dtype)

    def tensor(self, operand: Value | float | bool, dtype: DType) -> Value:
        """`operand` as an IR value of `dtype`: a value is cast, a Python scalar becomes a constant."""
        if isinstance(operand, Value):
            return self.cast(operand, dtype)
        return self.scalar(operand, dtype)

    def unsupported(self, reason: str) -> NotImportable:
        """The exception for an op function to raise when it cannot take this node's arguments."""
        return NotImportable(reason)


def _ir_dtype(dtype: torch.dtype) -> DType:
    result = torch_dtype_to_ir(dtype)
    if result is None:
        raise NotImportable(f"dtype {dtype} (Kiln's IR has f64 f32 f16 bf16 i64 i32 i8 u8 bool)")
    return result


class GraphConverter:
    """Converts one ATen fx graph; use `add_input`/`add_constant` for placeholders, then `convert`."""

    def __init__(self, name: str) -> None:
        self.builder = GraphBuilder(name)
        self.values: dict[torch.fx.Node, Any] = {}
        self.unsupported: list[UnsupportedOp] = []
        self._failed: set[torch.fx.Node] = set()

    def add_input(self, node: torch.fx.Node) -> None:
        meta = node.meta["val"]
        dtype = torch_dtype_to_ir(meta.dtype)
        if dtype is None:
            self._refuse(node, f"input {node.name}", f"dtype {meta.dtype}")
            return
        self.values[node] = self.builder.input(to_identifier(node.name), tuple(meta.shape), dtype)

    def add_constant(self, node: torch.fx.Node, tensor: torch.Tensor, name: str) -> None:
        if torch_dtype_to_ir(tensor.dtype) is None:
            self._refuse(node, f"constant {name}", f"dtype {tensor.dtype}")
            return
        self.values[node] = self.builder.constant(to_numpy(tensor).copy(), to_identifier(name))

    def convert(self, graph: torch.fx.Graph, outputs: Sequence[Any]) -> tuple[ir.Graph, list[tuple[str, Any]]]:
        """The verified IR graph, and per model output either ("output", index) or ("constant", value)."""
        from compiler.frontends.torch_ops import ATEN_OPS, IGNORED

        for node in graph.nodes:
            if node.op != "call_function":
                continue
            if node.target is operator.getitem:
                self._getitem(node)
                continue
            key = str(node.target)
            if key in IGNORED:
                continue
            function = ATEN_OPS.get(key)
            if function is None:
                self._refuse(node, key)
                continue
            if any(arg in self._failed for arg in node.all_input_nodes):
                self._failed.add(node)  # its inputs are already reported
                continue
            self._emit(node, key, function)

        if self.unsupported:
            raise UnsupportedOperatorError("torch", self.unsupported)
        graph_outputs: list[Value] = []
        slots: list[tuple[str, Any]] = []
        for item in outputs:
            if isinstance(item, torch.fx.Node):
                slots.append(("output", len(graph_outputs)))
                graph_outputs.append(self.values[item])
            else:
                slots.append(("constant", item))
        built = self.builder.build(*graph_outputs)
        ir.verify(built)
        return built, slots

    def _emit(self, node: torch.fx.Node, key: str, function: Any) -> None:
        source = node_source(node)
        emitter = Emitter(self.builder, node, source)
        try:
            for meta in _metas(node):
                _ir_dtype(meta.dtype)
            args = _lookup(node.args, self.values)
            kwargs = _lookup(node.kwargs, self.values)
            result = function(emitter, *args, **kwargs)
        except NotImportable as refusal:
            self._refuse(node, key, str(refusal))
            return
        except ShapeError as error:
            raise ShapeError(f"{error}\n  while importing torch node {node.name} ({key}) at {source}") from None
        _check_against_torch(node, key, source, result)
        self.values[node] = result

    def _getitem(self, node: torch.fx.Node) -> None:
        parent, index = node.args
        if parent in self._failed or parent not in self.values:
            self._failed.add(node)
            return
        picked = self.values[parent][index]
        if picked is None:
            self._refuse(node, f"{parent.target}[{index}]", "this output is not imported; only the main result is")
            return
        self.values[node] = picked

    def _refuse(self, node: torch.fx.Node, op: str, reason: str | None = None) -> None:
        self._failed.add(node)
        self.unsupported.append(UnsupportedOp(f"{op} ({reason})" if reason else op, node.name, node_source(node)))


def _metas(node: torch.fx.Node) -> list[torch.Tensor]:
    val = node.meta.get("val")
    items = val if isinstance(val, (tuple, list)) else [val]
    return [v for v in items if isinstance(v, torch.Tensor)]


def _lookup(arg: Any, values: dict[torch.fx.Node, Any]) -> Any:
    if isinstance(arg, torch.fx.Node):
        return values[arg]
    if isinstance(arg, (list, tuple)):
        return type(arg)(_lookup(a, values) for a in arg)
    if isinstance(arg, dict):
        return {k: _lookup(v, values) for k, v in arg.items()}
    return arg


def _check_against_torch(node: torch.fx.Node, key: str, source: str, result: Any) -> None:
    """A mapping must give what torch gives: same shapes and dtypes for every imported result."""
    val = node.meta.get("val")
    pairs = zip(result, val) if isinstance(result, tuple) else [(result, val)]
    for value, meta in pairs:
        if not isinstance(value, Value) or not isinstance(meta, torch.Tensor):
            continue
        expected = ir.TensorType(tuple(int(d) for d in meta.shape), _ir_dtype(meta.dtype))
        if value.type != expected:
            raise ShapeError(
                f"Kiln's mapping of {key} gave {value.type} where torch gives {expected} "
                f"(torch node {node.name} at {source}); this is a bug in Kiln's torch frontend"
            )


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_GENERATED = re.compile(r"<eval_with_key>\.\d+ from (.+):(\d+) in ")
_TORCH_DIR = os.path.dirname(torch.__file__)


def node_source(node: torch.fx.Node) -> str:
    """Where `node` came from: "path:LINE" of the innermost frame of its stack trace outside torch
    itself (the user's model file), or torch's own line for a module of torch.nn; else its name."""
    trace = node.meta.get("stack_trace") or ""
    frames = []
    for path, line in _FRAME.findall(trace):
        generated = _GENERATED.match(path)
        if generated:  # code fx generated for the traced module; it names the forward it came from
            path, line = generated.groups()
        frames.append((path, line))
    if not frames:
        return node.name
    users = [f for f in frames if not os.path.abspath(f[0]).startswith(_TORCH_DIR)]
    path, line = (users or frames)[-1]
    return f"{_shorten(path)}:{line}"


def _shorten(path: str) -> str:
    """torch's own files as torch/nn/...; the user's relative to the working directory if below it."""
    absolute = os.path.abspath(path)
    if absolute.startswith(_TORCH_DIR):
        return os.path.relpath(absolute, os.path.dirname(_TORCH_DIR))
    relative = os.path.relpath(absolute)
    return path if relative.startswith("..") else relative
