"""Regions: ops whose meaning is a nested graph, their `body`.

`fused` is a group of nodes that one kernel computes: fusion moves nodes into a body graph
and leaves a `fused` node in their place, so the grouping is explicit, printable and
checkable, and a backend lowers one `fused` node into one kernel. The interpreter runs the
body, so fusing a graph changes none of its values.
"""

from __future__ import annotations

from ir.attributes import Attr, AttrKind
from ir.errors import ShapeError
from ir.ops.table import OpDef, OpKind, register
from ir.types import TensorType


def _infer_fused(*inputs: TensorType, body, kind: str) -> tuple[TensorType, ...]:
    expected = tuple(v.type for v in body.inputs)
    if tuple(inputs) != expected:
        given = ", ".join(map(str, inputs)) or "nothing"
        wanted = ", ".join(map(str, expected)) or "nothing"
        raise ShapeError(f"fused: the body @{body.name} takes ({wanted}), given ({given})")
    return tuple(v.type for v in body.outputs)


def _body_flops(inputs, outputs, attrs) -> int:
    from ir.summary import summarize  # summary reads the table this module fills

    return summarize(attrs["body"]).flops


register(
    OpDef(
        "fused",
        OpKind.OPAQUE,
        ("*inputs?",),
        _infer_fused,
        None,
        attrs=(
            Attr("body", AttrKind.GRAPH),
            Attr("kind", AttrKind.STR, "opaque"),
        ),
        flops=_body_flops,
        decompose=lambda builder, *values, body, kind: inline(builder, body, values),
        doc="the nodes of `body`, computed by one kernel; `kind` names the kernel's schedule",
    )
)


def inline(builder, body, values):
    """Append `body`'s nodes to `builder` with `values` as its inputs; returns its outputs."""
    mapping = dict(zip(body.inputs, values))
    for node in body.nodes:
        if node.op == "const":
            mapping[node.outputs[0]] = builder.constant(body.constants[node.attrs["name"]], node.attrs["name"])
            continue
        results = builder.op(node.op, *(mapping[v] for v in node.inputs), source=node.source, **node.attrs)
        results = results if isinstance(results, tuple) else (results,)
        mapping.update(zip(node.outputs, results))
    outputs = tuple(mapping[v] for v in body.outputs)
    return outputs[0] if len(outputs) == 1 else outputs
