"""The torch frontend: an `nn.Module` and its example inputs in, an `ImportedModel` out.

The main path is `torch.export`: the module is exported, decomposed to the core ATen op set
(keeping `scaled_dot_product_attention`, which the IR has as one op), and each ATen node is
mapped by `compiler.frontends.torch_graph`. Modules that export refuses (a forward taking a
non-tensor object, say) go the fallback path: `torch.fx.symbolic_trace` with the non-tensor
arguments fixed, then `make_fx` traces that graph down to the same core ATen set, so one ATen
mapping table (`torch_ops`) serves both paths. The log (`kiln.frontends.torch`) says which path
was taken. The example inputs fix every shape and dtype; non-tensor arguments are baked in, and a
call with different ones is refused rather than silently computing something else.

torch is imported here at module top: this module is loaded only when a torch model is compiled.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from compiler.errors import InputMismatchError, ModelFormatError
from compiler.frontends import ImportedModel
from compiler.frontends.torch_graph import GraphConverter, torch_dtype_to_ir

log = logging.getLogger("kiln.frontends.torch")

_KEEP_WHOLE = ("scaled_dot_product_attention.default",)
"""ATen ops that export's core decomposition would break up but the IR has as one op."""


def import_torch(module: torch.nn.Module, example_inputs: tuple) -> ImportedModel:
    """The IR of `module` called as `module(*example_inputs)`; see the module docstring."""
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs)
    name = _graph_name(module)
    try:
        exported = torch.export.export(module, example_inputs)
    except Exception as export_error:  # export raises many types; every one sends us to fx
        log.info("torch.export refused %s (%s: %s); trying torch.fx", name, type(export_error).__name__, export_error)
        try:
            traced = _trace_with_fx(module, example_inputs)
        except Exception as fx_error:
            raise ModelFormatError(
                f"cannot import {name}: torch.export failed ({type(export_error).__name__}: {export_error}) "
                f"and torch.fx could not trace it either ({type(fx_error).__name__}: {fx_error}). "
                "Make forward() traceable: no Python control flow on tensor values, tensors (or pytrees of "
                "them) as inputs and outputs."
            ) from fx_error
        log.info("imported %s through torch.fx (fallback path)", name)
        return traced.convert(name, example_inputs)
    log.info("imported %s through torch.export", name)
    return _from_export(exported, name, example_inputs)


def _graph_name(module: torch.nn.Module) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in type(module).__name__)
    return name if name and not name[0].isdigit() else f"m_{name}"


# --- the torch.export path -------------------------------------------------------------------------------------


def _from_export(exported: torch.export.ExportedProgram, name: str, example_inputs: tuple) -> ImportedModel:
    from torch.export.graph_signature import InputKind, OutputKind

    exported = exported.run_decompositions(_core_aten_table())
    signature = exported.graph_signature

    placeholders = {}  # placeholder name -> ("input", leaf index) | ("constant", tensor, name)
    user_leaf = 0
    for spec in signature.input_specs:
        arg_name = getattr(spec.arg, "name", None)
        if spec.kind == InputKind.USER_INPUT:
            if arg_name is not None:
                placeholders[arg_name] = ("input", user_leaf)
            user_leaf += 1
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = exported.state_dict.get(spec.target)
            if tensor is None:
                tensor = exported.constants[spec.target]
            placeholders[arg_name] = ("constant", tensor, spec.target)
        else:
            raise ModelFormatError(f"{name}: export input {arg_name!r} is a {spec.kind.name}, which Kiln cannot import")

    outputs = []
    for spec in signature.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            raise ModelFormatError(
                f"{name}: forward() mutates {spec.target or spec.arg.name} ({spec.kind.name}); Kiln compiles "
                "pure functions. Call module.eval() (training-mode batch norm updates its statistics) or "
                "remove the in-place update."
            )
        outputs.append(spec.arg)

    in_spec = exported.call_spec.in_spec
    return _assemble(name, exported.graph, placeholders, outputs, in_spec, exported.call_spec.out_spec, example_inputs)


@functools.cache
def _core_aten_table() -> dict:
    """export's core ATen decompositions less `_KEEP_WHOLE`, materialised once (run_decompositions
    copies the table it is given; materialising it costs a fifth of a second per call)."""
    table = torch.export.default_decompositions()
    for op_name in _KEEP_WHOLE:
        table.pop(_aten_overload(op_name), None)
    return dict(table.materialize())


def _aten_overload(name: str) -> Any:
    packet_name, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, packet_name), overload)


# --- the torch.fx fallback -------------------------------------------------------------------------------------


@dataclass
class _FxTrace:
    graph_module: torch.fx.GraphModule

    def convert(self, name: str, example_inputs: tuple) -> ImportedModel:
        placeholders = {}
        leaf = 0
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":  # make_fx makes one per leaf of the arguments, tensor or not
                placeholders[node.name] = ("input", leaf)
                leaf += 1
            elif node.op == "get_attr":
                tensor = _get_attr(self.graph_module, node.target)
                placeholders[node.name] = ("constant", tensor, node.target)
        output_node = next(n for n in self.graph_module.graph.nodes if n.op == "output")
        # fx nodes are pytree leaves, so the output's structure is the model's output structure
        outputs, out_spec = pytree.tree_flatten(output_node.args[0])
        # make_fx flattens the positional arguments only; calls are flattened as (args, kwargs)
        in_spec = _with_args_spec(pytree.tree_structure(example_inputs))
        return _assemble(name, self.graph_module.graph, placeholders, outputs, in_spec, out_spec, example_inputs)


def _with_args_spec(args_spec: Any) -> Any:
    """The spec of `(args, {})` given the spec of `args`."""
    dummy_args = pytree.tree_unflatten([0] * args_spec.num_leaves, args_spec)
    return pytree.tree_structure((dummy_args, {}))


def _get_attr(root: torch.nn.Module, target: str) -> torch.Tensor:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _trace_with_fx(module: torch.nn.Module, example_inputs: tuple) -> _FxTrace:
    import inspect

    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    # symbolic_trace first: it refuses Python control flow on tensor values, which make_fx alone
    # would silently specialise to the example inputs. Arguments with no tensor inside (a config
    # object, a flag) are fixed to their example values, as export would fix them.
    bound = inspect.signature(module.forward).bind(*example_inputs)
    concrete = {
        key: value
        for key, value in bound.arguments.items()
        if not any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value))
    }
    graph_module = torch.fx.symbolic_trace(module, concrete_args=concrete or None)
    decompositions = core_aten_decompositions()
    for op_name in _KEEP_WHOLE:
        decompositions.pop(_aten_overload(op_name), None)
    # Real tensors (not fake ones): the module's parameters are real, and make_fx records them as
    # get_attr constants of the traced module.
    with torch.no_grad():
        aten = make_fx(graph_module, decomposition_table=decompositions, record_stack_traces=True)(*example_inputs)
    return _FxTrace(aten)


# --- both paths: convert the ATen graph, then wire up inputs and outputs -------------------------------------


def _assemble(
    name: str,
    fx_graph: torch.fx.Graph,
    placeholders: dict[str, tuple],
    outputs: list,
    in_spec: Any,
    out_spec: Any,
    example_inputs: tuple,
) -> ImportedModel:
    """Convert `fx_graph` and build the callable's input flattening and output restoring."""
    converter = GraphConverter(name)
    node_by_name = {n.name: n for n in fx_graph.nodes}
    input_leaves: list[int] = []
    for node in fx_graph.nodes:
        if node.op not in ("placeholder", "get_attr") or node.name not in placeholders:
            continue
        entry = placeholders[node.name]
        if entry[0] == "constant":
            converter.add_constant(node, entry[1], entry[2])
        elif isinstance(node.meta.get("val"), torch.Tensor):
            converter.add_input(node)
            input_leaves.append(entry[1])

    output_nodes = []
    for item in outputs:
        name_of = getattr(item, "name", None)
        if isinstance(item, torch.fx.Node):
            output_nodes.append(item)
        elif name_of is not None and name_of in node_by_name:
            output_nodes.append(node_by_name[name_of])
        else:
            output_nodes.append(getattr(item, "value", item))  # a constant output (ConstantArgument)
    graph, output_slots = converter.convert(fx_graph, output_nodes)

    # Non-tensor leaves (ints, flags, config objects) were compiled in as their example values.
    example_leaves = pytree.tree_leaves((example_inputs, {}))
    baked = {i: leaf for i, leaf in enumerate(example_leaves) if not isinstance(leaf, torch.Tensor)}
    return ImportedModel(
        graph,
        _make_flatten(in_spec, input_leaves, baked),
        _make_unflatten(out_spec, output_slots),
    )


def _make_flatten(in_spec: Any, input_leaves: list[int], baked: dict[int, Any]) -> Callable[[tuple, dict], list]:
    template = pytree.tree_unflatten([None] * in_spec.num_leaves, in_spec)

    def flatten(args: tuple, kwargs: dict) -> list:
        leaves, spec = pytree.tree_flatten(_align((tuple(args), dict(kwargs)), template))
        if spec != in_spec:
            expected = pytree.tree_unflatten(["*"] * in_spec.num_leaves, in_spec)
            given = pytree.tree_unflatten(["*"] * spec.num_leaves, spec)
            raise InputMismatchError(
                f"the model was compiled for (args, kwargs) structured as {expected} (* = a leaf), got {given}"
            )
        for index, value in baked.items():
            if isinstance(leaves[index], torch.Tensor) or leaves[index] != value:
                raise InputMismatchError(
                    f"input leaf {index} was {value!r} when the model was compiled, got {leaves[index]!r}; "
                    "non-tensor inputs are compiled in: recompile for new values"
                )
        return [leaves[i] for i in input_leaves]

    return flatten


def _align(given: Any, template: Any) -> Any:
    """`given` with its dicts' keys in the template's order: pytree specs of dicts are ordered."""
    if isinstance(given, dict) and isinstance(template, dict) and given.keys() == template.keys():
        return {key: _align(given[key], template[key]) for key in template}
    if isinstance(given, (list, tuple)) and type(given) is type(template) and len(given) == len(template):
        return type(given)(_align(g, t) for g, t in zip(given, template))
    return given


def _make_unflatten(out_spec: Any, slots: list[tuple[str, Any]]) -> Callable[[list], Any]:
    def unflatten(outputs: list) -> Any:
        leaves = [outputs[payload] if kind == "output" else payload for kind, payload in slots]
        return pytree.tree_unflatten(leaves, out_spec)

    return unflatten


__all__ = ["import_torch", "torch_dtype_to_ir"]
