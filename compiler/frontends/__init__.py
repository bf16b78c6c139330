"""Frontends: bring a PyTorch module or an ONNX model into the graph IR.

`import_model` picks the frontend by the model's type. Each frontend returns an
`ImportedModel`: the graph, plus how to flatten a call's arguments into the graph's inputs
and how to restore the model's output structure. A frontend either returns a whole, verified
graph or raises; nothing half-imported escapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ir import Graph


@dataclass(frozen=True)
class ImportedModel:
    graph: Graph
    flatten_inputs: Callable[[tuple, dict], list]
    """A call's (args, kwargs) -> the graph's inputs in order (numpy arrays or tensors)."""
    unflatten_outputs: Callable[[list], Any]
    """The graph's outputs in order -> what the model returns (a tensor, a tuple, a dict, ...)."""


def import_graph(graph: Graph) -> ImportedModel:
    """An IR graph needs no frontend: inputs by position (or by name), one output or a tuple."""
    return ImportedModel(graph, flatten_by_name([v.name for v in graph.inputs], f"@{graph.name}"),
                         unflatten_single_or_tuple)  # fmt: skip


def flatten_by_name(names: list[str], model: str) -> Callable[[tuple, dict], list]:
    """A call's (args, kwargs) -> the inputs in order: by position, or by input name."""

    def flatten(args: tuple, kwargs: dict) -> list:
        from compiler.errors import InputMismatchError

        if not kwargs:
            return list(args)
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputMismatchError(f"{model} has no input(s) named {unknown}; its inputs are {names}")
        given = dict(zip(names, args))
        given.update(kwargs)
        missing = [n for n in names if n not in given]
        if missing:
            raise InputMismatchError(f"{model} is missing input(s) {missing}")
        return [given[n] for n in names]

    return flatten


def unflatten_single_or_tuple(outputs: list) -> Any:
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def import_model(model: Any, example_inputs: Sequence[Any] | None = None) -> ImportedModel:
    """The IR of `model`: an `ir.Graph`, a torch `nn.Module` (with `example_inputs`), an ONNX
    `ModelProto` (or its serialized bytes), or a path to an `.onnx` or `.kiln` file. For ONNX,
    `example_inputs` fix the shapes of inputs whose dims are dynamic."""
    if isinstance(model, Graph):
        return import_graph(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".kiln":
            from ir import parse_graph, verify

            graph = parse_graph(path.read_text())
            verify(graph)
            return import_graph(graph)
        from compiler.frontends.onnx import import_onnx

        return import_onnx(path, example_inputs)
    if isinstance(model, bytes) or type(model).__module__.startswith("onnx"):
        from compiler.frontends.onnx import import_onnx

        return import_onnx(model, example_inputs)
    if _is_torch_module(model):
        from compiler.frontends.torch import import_torch

        if example_inputs is None:
            raise TypeError("compiling a torch module needs example_inputs, e.g. example_inputs=(x,)")
        return import_torch(model, tuple(example_inputs))
    raise TypeError(
        f"cannot compile a {type(model).__qualname__}: pass a torch.nn.Module, an onnx.ModelProto, "
        "a path to an .onnx or .kiln file, or an ir.Graph"
    )


def _is_torch_module(model: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a torch module exists only if torch was imported
    return torch is not None and isinstance(model, torch.nn.Module)
