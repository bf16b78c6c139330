"""The ONNX frontend: an ONNX model (a `ModelProto`, a path, or serialized bytes) into the graph IR.

    imported = import_onnx("model.onnx", input_shapes={"x": (1, 3, 224, 224)})

Loading checks the model (`onnx.checker`), converts opsets older than 13 with
`onnx.version_converter`, turns initializers into constants and fixes the input shapes (the IR's
shapes are static: dynamic dims come from `input_shapes` or `example_inputs`). Each node then goes
through its mapping in the op table (`compiler.frontends.onnx_ops`), which emits IR ops through
a `GraphBuilder`; attributes come with the ONNX schema's defaults. A node whose inputs are all
known at import time is folded to constants by running its IR in the reference interpreter, so
Shape -> Gather -> Concat -> Reshape chains give Reshape a constant shape. Every unsupported op
(unknown op, attribute value or dtype) is collected over the whole model and reported in one
`UnsupportedOperatorError`; a model is either imported whole and verified, or not at all.

Opsets 13 up to the installed onnx's newest opset are imported natively: the op versions after
21 change type lists (bf16, 4-bit and 8-bit floats) rather than semantics for the ops mapped
here, and the mappings read `NodeContext.version` where a version does change what an op means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.defs

import ir
from compiler.errors import (
    InputMismatchError,
    ModelFormatError,
    ShapeError,
    StaticInputError,
    UnsupportedOp,
    UnsupportedOperatorError,
    UnsupportedOpsetError,
)
from compiler.frontends import ImportedModel, flatten_by_name, unflatten_single_or_tuple
from compiler.frontends.onnx_context import (
    NodeContext,
    UnsupportedNode,
    array_of_tensor,
    constant_name,
    dtype_of_onnx,
    onnx_type_name,
)
from compiler.frontends.onnx_ops import ONNX_OPS
from compiler.tensors import to_numpy

MIN_NATIVE_OPSET = 13
"""Older default-domain opsets are converted to this one first."""

FOLD_LIMIT = 1 << 16
"""Folded results larger than this many elements are left as ops (a constant that large is
better computed at run time than stored; a later constant-folding pass may decide otherwise)."""

DEFAULT_DOMAINS = ("", "ai.onnx")

NOT_FOLDED = frozenset({"DequantizeLinear"})
"""Ops left as ops on constant inputs: a dequantized int8 weight is what `passes.qdq` fuses."""


def max_opset() -> int:
    """The newest default-domain opset imported natively: the installed onnx's newest."""
    return onnx.defs.onnx_opset_version()


def import_onnx(
    model: onnx.ModelProto | str | Path | bytes,
    example_inputs: Sequence[Any] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constant_inputs: Mapping[str, Any] | None = None,
) -> ImportedModel:
    """The IR of an ONNX model. Dynamic input dims are fixed by `input_shapes` (ONNX input name ->
    shape) or by the shapes of `example_inputs` (in the order of the inputs that remain).
    `constant_inputs` (ONNX input name -> array) turns inputs into constants, for models that
    compute a shape, axes or pads from an input: the compiled model no longer takes them."""
    proto = load_model(model)
    check_model(proto)
    proto = convert_opset(proto)
    importer = _GraphImporter(proto, example_inputs, input_shapes, constant_inputs)
    graph, input_names = importer.run()
    ir.verify(graph)
    return ImportedModel(graph, _input_flattener(graph, input_names), unflatten_single_or_tuple)


# -- loading, checking, opsets -------------------------------------------------------------------


def load_model(model: onnx.ModelProto | str | Path | bytes) -> onnx.ModelProto:
    """The ModelProto (with external data loaded from beside the file), or `ModelFormatError`."""
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes):
            proto = onnx.load_model_from_string(model)
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelFormatError(f"no ONNX model at {path}: the file does not exist")
            proto = onnx.load(str(path))  # external data is read from beside the file
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        where = "the bytes given" if isinstance(model, bytes) else str(model)
        raise ModelFormatError(
            f"{where} is not a readable ONNX model (truncated, or not a model at all): {error}"
        ) from None
    # Protobuf parses many byte strings as an empty message; a real model names its graph's nodes.
    if not proto.HasField("graph") or proto.ir_version == 0:
        where = "the bytes given" if isinstance(model, bytes) else str(model)
        raise ModelFormatError(f"{where} is not an ONNX model: it holds no graph (or no IR version)")
    return proto


def check_model(proto: onnx.ModelProto) -> None:
    """`onnx.checker` with its full check (strict shape inference); `ModelFormatError` on failure."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ModelFormatError(f"the ONNX model fails onnx.checker: {error}") from None
    except onnx.shape_inference.InferenceError as error:
        raise ModelFormatError(f"the ONNX model fails ONNX shape inference: {error}") from None


def default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    return versions[0] if versions else 0


def convert_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model at an opset the frontend reads: older ones converted to `MIN_NATIVE_OPSET`."""
    version = default_opset(proto)
    newest = max_opset()
    if version > newest:
        raise UnsupportedOpsetError(
            f"the model uses ONNX opset {version}, newer than {newest}, the newest this onnx package knows; "
            "upgrade onnx, or export the model at an older opset"
        )
    if version == 0 or version >= MIN_NATIVE_OPSET:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, MIN_NATIVE_OPSET)
    except Exception as error:  # the converter raises bare RuntimeErrors and others from C++
        raise UnsupportedOpsetError(
            f"the model uses ONNX opset {version}; Kiln reads opsets {MIN_NATIVE_OPSET} to {newest} and converts "
            f"older ones, but onnx.version_converter could not convert this one: {error}. "
            f"Re-export the model at opset {MIN_NATIVE_OPSET} or newer."
        ) from None
    return converted


# -- the node walk -------------------------------------------------------------------------------


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _node_source(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


class _GraphImporter:
    """One import: ONNX value names to IR values, constants known at import time, problems found."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        example_inputs: Sequence[Any] | None,
        input_shapes: Mapping[str, Sequence[int]] | None,
        constant_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.opset = default_opset(proto)
        self.example_inputs = list(example_inputs) if example_inputs is not None else None
        self.input_shapes = dict(input_shapes or {})
        self.builder = ir.GraphBuilder(constant_name(self.graph.name or "main"))
        self.values: dict[str, ir.Value] = {}
        self.known: dict[str, np.ndarray] = {}
        """Import-time values of ONNX values (initializers, constants, folded results)."""
        self.poisoned: set[str] = set()
        """ONNX values that an unsupported node would have made; their readers are skipped."""
        self.unsupported: list[UnsupportedOp] = []
        self.constant_inputs = {name: to_numpy(array) for name, array in (constant_inputs or {}).items()}
        self.depends: dict[str, frozenset[str]] = {}
        """The graph inputs each ONNX value is computed from (for errors about run-time values)."""

    def run(self) -> tuple[ir.Graph, list[str]]:
        self._find_unsupported_ops()
        self._add_initializers()
        self._add_constant_inputs()
        input_names = self._add_inputs()
        for index, node in enumerate(self.graph.node):
            self._import_node(index, node)
        if self.unsupported:
            raise UnsupportedOperatorError("onnx", self.unsupported)
        outputs = []
        for output in self.graph.output:
            if output.name not in self.values:
                raise ModelFormatError(f"the model's output {output.name!r} is not produced by any node")
            outputs.append(self.values[output.name])
        return self.builder.build(*outputs), input_names

    def _find_unsupported_ops(self) -> None:
        """Every node whose op has no mapping, found before anything is built."""
        for index, node in enumerate(self.graph.node):
            if _op_key(node) not in ONNX_OPS:
                self.unsupported.append(UnsupportedOp(_op_key(node), _node_source(node, index)))

    def _add_initializers(self) -> None:
        for tensor in self.graph.initializer:
            try:
                array = array_of_tensor(tensor, f"initializer {tensor.name!r}")
            except UnsupportedNode:
                self.unsupported.append(UnsupportedOp(f"{_type_name(tensor.data_type)} tensors", tensor.name))
                self.poisoned.add(tensor.name)
                continue
            self.values[tensor.name] = self.builder.constant(array, constant_name(tensor.name))
            self.known[tensor.name] = array

    def _add_constant_inputs(self) -> None:
        declared = {i.name: i for i in self.graph.input}
        unknown = sorted(set(self.constant_inputs) - set(declared))
        if unknown:
            raise InputMismatchError(f"constant_inputs names {unknown}, which are not inputs of the model")
        for name, array in self.constant_inputs.items():
            dtype = dtype_of_onnx(declared[name].type.tensor_type.elem_type, f"input {name!r}")
            array = np.asarray(array).astype(dtype.numpy, copy=False)
            self.values[name] = self.builder.constant(array, constant_name(name))
            self.known[name] = array

    def _add_inputs(self) -> list[str]:
        """The graph inputs that are not initializers (an input with an initializer is a
        constant with an overridable default; Kiln takes the default)."""
        names = []
        taken = set(self.values) | self.poisoned
        inputs = [i for i in self.graph.input if i.name not in taken]
        if self.example_inputs is not None and len(self.example_inputs) != len(inputs):
            listed = ", ".join(i.name for i in inputs)
            raise InputMismatchError(
                f"the model takes {len(inputs)} input(s) ({listed}), but {len(self.example_inputs)} example "
                "input(s) were given"
            )
        for position, value_info in enumerate(inputs):
            name = value_info.name
            tensor_type = value_info.type.tensor_type
            if not value_info.type.HasField("tensor_type"):
                self.unsupported.append(UnsupportedOp("non-tensor input (sequence, map, optional)", name))
                self.poisoned.add(name)
                continue
            try:
                dtype = dtype_of_onnx(tensor_type.elem_type, f"input {name!r}")
            except UnsupportedNode:
                self.unsupported.append(UnsupportedOp(f"{_type_name(tensor_type.elem_type)} tensors", name))
                self.poisoned.add(name)
                continue
            shape = self._input_shape(position, name, tensor_type, dtype)
            self.values[name] = self.builder.input(constant_name(name), shape, dtype)
            self.depends[name] = frozenset({name})
            names.append(name)
        return names

    def _input_shape(self, position: int, name: str, tensor_type, dtype: ir.DType) -> tuple[int, ...]:
        declared = [_declared_dim(d) for d in tensor_type.shape.dim] if tensor_type.HasField("shape") else None
        if name in self.input_shapes:
            shape = tuple(int(d) for d in self.input_shapes[name])
        elif self.example_inputs is not None:
            example = to_numpy(self.example_inputs[position])
            if ir.DType.from_numpy(example.dtype) != dtype:
                raise InputMismatchError(
                    f"example input {position} ({name!r}) is {example.dtype}; the model takes {dtype}"
                )
            shape = tuple(example.shape)
        elif declared is not None and all(isinstance(d, int) for d in declared):
            return tuple(declared)
        else:
            shown = "unknown rank" if declared is None else f"[{', '.join(map(str, declared))}]"
            raise ShapeError(
                f"the model's input {name!r} has dynamic dimensions ({shown}); Kiln's shapes are static, so give "
                f"them: import_onnx(model, input_shapes={{{name!r}: (...)}}) or compile(model, example_inputs=...)"
            )
        if declared is not None and (
            len(declared) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(declared, shape))
        ):
            raise InputMismatchError(
                f"the shape {list(shape)} given for input {name!r} does not fit its declared shape {declared}"
            )
        return shape

    def _import_node(self, index: int, node: onnx.NodeProto) -> None:
        source = _node_source(node, index)
        present = [name for name in node.input if name]
        if _op_key(node) not in ONNX_OPS or any(name in self.poisoned for name in present):
            self.poisoned.update(node.output)
            return
        missing = [name for name in present if name not in self.values]
        if missing:
            raise ModelFormatError(f"{node.op_type} node {source} reads {missing}, which no earlier node produces")
        schema = self._schema(node)
        inputs = [self.values[name] if name else None for name in node.input]
        constants = [self.known.get(name) if name else None for name in node.input]
        convert = ONNX_OPS[_op_key(node)]
        try:
            folded = None
            foldable = all(c is not None for c, name in zip(constants, node.input) if name)
            # An int8 weight stays int8 through DequantizeLinear, for passes.qdq to find (folding comes later).
            foldable = foldable and node.op_type not in NOT_FOLDED
            if foldable:
                folded = self._fold(node, source, schema, constants, convert)
            if folded is not None:
                outputs, arrays = folded
            else:
                context = NodeContext(node, source, schema.since_version, schema, self.builder, inputs, constants)
                outputs = _as_list(convert(context))
                # Outputs the mapping made as constants (Shape, Size) are known at import time too.
                arrays = [context.constant_arrays.get(v) if v is not None else None for v in outputs]
        except UnsupportedNode as problem:
            self.unsupported.append(UnsupportedOp(f"{_op_key(node)} ({problem.what})", source))
            self.poisoned.update(node.output)
            return
        except StaticInputError as error:
            graph_inputs = tuple(sorted(self.depends.get(error.value, ())))
            fix = (
                f"; it depends on the model input(s) {list(graph_inputs)}: fix them with "
                "import_onnx(model, constant_inputs={name: array})"
                if graph_inputs
                else ""
            )
            raise StaticInputError(f"{error}{fix}", error.value, graph_inputs) from None
        dependencies = frozenset().union(*(self.depends.get(name, frozenset()) for name in present))
        for name in node.output:
            self.depends[name] = dependencies
        self._bind_outputs(node, source, outputs, arrays)

    def _schema(self, node: onnx.NodeProto):
        version = self.opset if node.domain in DEFAULT_DOMAINS else self._domain_version(node.domain)
        try:
            return onnx.defs.get_schema(node.op_type, version, node.domain)
        except onnx.defs.SchemaError:
            raise ModelFormatError(
                f"{node.op_type} node {node.name!r}: ONNX has no such op at opset {version} of domain "
                f"{node.domain or 'ai.onnx'!r}"
            ) from None

    def _domain_version(self, domain: str) -> int:
        return next((o.version for o in self.proto.opset_import if o.domain == domain), 1)

    def _fold(self, node, source, schema, constants, convert):
        """The node's outputs as constants computed now by the interpreter, with their arrays;
        None when they are too large to keep as constants."""
        scratch = ir.GraphBuilder("fold")
        scratch_inputs = [scratch.constant(c, "folded") if c is not None else None for c in constants]
        context = NodeContext(node, source, schema.since_version, schema, scratch, scratch_inputs, constants)
        results = _as_list(convert(context))
        present = [v for v in results if v is not None]
        if sum(v.type.numel for v in present) > FOLD_LIMIT:
            return None
        computed = iter(ir.run(scratch.build(*present), []))
        arrays = [None if v is None else next(computed) for v in results]
        outputs = [None if a is None else self.builder.constant(a, "folded") for a in arrays]
        return outputs, arrays

    def _bind_outputs(
        self, node: onnx.NodeProto, source: str, outputs: list[ir.Value | None], arrays: list[np.ndarray | None]
    ) -> None:
        for position, name in enumerate(node.output):
            if not name:
                continue
            value = outputs[position] if position < len(outputs) else None
            if value is None:
                self.unsupported.append(UnsupportedOp(f"{_op_key(node)} (output {position})", source))
                self.poisoned.add(name)
                continue
            self.values[name] = value
            if arrays[position] is not None:
                self.known[name] = arrays[position]


def _type_name(elem_type: int) -> str:
    return f"{onnx_type_name(elem_type)} (no IR dtype)"


def _as_list(result: Any) -> list[ir.Value | None]:
    if result is None or isinstance(result, ir.Value):
        return [result]
    return list(result)


def _input_flattener(graph: ir.Graph, onnx_names: list[str]):
    """A call's (args, kwargs) -> the graph's inputs: by position, or by ONNX input name."""
    return flatten_by_name(onnx_names, "the model")


def _declared_dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    """A declared input dimension: its size, or its symbolic name ("?" when unnamed). Exporters
    such as paddle2onnx write -1 as the value of a dynamic dimension: that is dynamic too."""
    if dim.HasField("dim_value") and dim.dim_value >= 0:
        return dim.dim_value
    return dim.dim_param or "?"
