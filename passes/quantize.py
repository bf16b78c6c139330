"""quantize: run a float model's matmuls and linear layers on int8 weights (and activations), keep
the numerically sensitive rest in f32, and report what was quantized, what was kept and why, and
what it cost on example or calibration inputs. `compile(..., precision="int8-weight" |
"int8-dynamic" | "int8-static", calibration=[...])` runs it (`passes.pipelines`).

What is quantized: `matmul` and `gemm` nodes with f32 results whose weight (b) is a 2-D constant,
and `conv` nodes with a constant weight, but depthwise ones (`passes.quantize_conv`, whose doc says how).
Every weight becomes int8 per output channel, symmetric: s_n = max_k |W[k, n]| / 127 and
q = round_half_even(W / s_n), so that the zero point is 0 and the integer product needs no
correction term. Then, by mode:

- `weight`: activations stay f32; the node reads `dequantize_linear(q, s, 0)`, i.e. the weight is
  stored as int8 and widened where it is read (the precision of a weight-only int8 model).
- `dynamic`: each row of the activation (a token) is quantized at run time, symmetric with
  s_x = max |x_row| / 127, stored as uint8 codes q_x + 128 (zero point 128: the form the int8 GEMM
  reads fastest); y = (f32(matmul_integer(q_x + 128, q_w, 128, 0)) * s_x) * s_w, then bias.
- `static`: the activation's scale and zero point are fixed from the calibration inputs (an
  observer over every calibration set, `passes.observers`: min-max, percentile or entropy; range
  widened to include 0), asymmetric uint8 per tensor;
  y = f32(matmul_integer(q_x, q_w, z_x, 0)) * (s_x * s_w), then bias.

Kept in f32, with the reason in the report: contractions whose weight is not a constant (attention's
q @ k^T), the first contraction of the graph when it reads a graph input (up to movement and ops by
constants: the stem, which sees raw inputs) and the last when it makes a graph output (up to the same
and a softmax: the head, which makes the logits) (`keep_first_last`; a GPT block compiled on its own
reads a norm's output and adds its last product to the residual stream: both are quantized); ops or
nodes the user names (`keep_ops`, `keep_nodes`: node `source`s). Softmax, norms and every other op
are not candidates: they stay f32.

Numerics: precision-reducing. The integer accumulation is exact, so the quantized graph equals,
bit for bit in the interpreter, the float simulation of the same rounding ("fake quant"); the
report measures the error against the float graph: per float output, max abs error, the cosine
similarity of the outputs and top-1 agreement along the last axis (for logits).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ir import DType, Graph, GraphBuilder, KilnError, Node, OpKind, Value, get_op, run
from ir.printer import print_node, value_names
from passes.editing import map_nodes
from passes.manager import Numerics, Pass, register_pass
from passes.observers import check_observer, observe_ranges, random_input_sets
from passes.prune_dead_nodes import PruneDeadNodes
from passes.quantize_conv import CONV_QUANTIZERS, absolute_peak, conv_kept_reason
from passes.quantize_ends import makes_outputs, reads_raw_input

MODES = ("weight", "dynamic", "static")
CANDIDATE_OPS = ("matmul", "gemm")


class QuantizationError(KilnError):
    """A quantization the pass cannot do as asked (static without calibration inputs)."""


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedNode:
    node: str
    """The node in the text form of the graph before quantizing."""
    how: str


@dataclass(frozen=True)
class KeptContraction:
    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class OutputAccuracy:
    """One float output of the quantized graph against the float graph, over the measured inputs."""

    index: int
    max_abs: float
    cosine: float
    """The smallest cosine similarity (flattened output vs float output) over the input sets."""
    top1: float
    """The fraction of positions whose argmax along the last axis agrees with the float graph's."""


@dataclass(frozen=True)
class QuantizationReport:
    mode: str
    quantized: tuple[QuantizedNode, ...]
    kept: tuple[KeptContraction, ...]
    measured_on: str
    accuracy: tuple[OutputAccuracy, ...] = ()

    def __str__(self) -> str:
        lines = [f"quantize ({self.mode}): {len(self.quantized)} contraction(s) int8, {len(self.kept)} kept in float"]
        lines += [f"  int8: {q.node}\n      {q.how}" for q in self.quantized]
        lines += [f"  kept: {k.node}\n      because {k.reason}" for k in self.kept]
        lines.append("  softmax, norms and all other ops stay in float")
        if self.accuracy:
            lines.append(f"error against the float graph ({self.measured_on}):")
            lines += [
                f"  output {a.index}: max abs {a.max_abs:.3g}, min cosine {a.cosine:.6f}, top-1 agreement {a.top1:.4f}"
                for a in self.accuracy
            ]
        return "\n".join(lines)


# -- the pass -----------------------------------------------------------------------------------


@register_pass
class Quantize(Pass):
    """Quantize matmuls and linear layers with constant weights to int8 (weight-only, dynamic or static)."""

    name = "quantize"
    numerics = Numerics.PRECISION_REDUCING

    mode: str = "dynamic"
    """weight, dynamic or static (static needs `calibration`)."""
    keep_first_last: bool = True
    """Keep the graph's first and last contraction in float."""
    keep_ops: tuple[str, ...] = ()
    """Op names never quantized (of matmul, gemm)."""
    keep_nodes: tuple[str, ...] = ()
    """Node sources (torch's file:line, ONNX node names) never quantized."""
    example_inputs: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)
    """Input sets the report measures on (set by the compiler)."""
    calibration: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)
    """Input sets (each a sequence or a mapping by input name) that static scales come from; the
    report measures on them too."""
    reports: list | None = field(default=None, compare=False, repr=False)
    """Where each run appends its `QuantizationReport` (the compiler puts it in `.stats`)."""
    observer: str = "minmax"
    """How static ranges are taken from the calibration values: minmax, percentile or entropy."""
    percentile: float = 99.99
    """The percentile observer's upper percentile (the lower is 100 minus it)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"quantize: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for option in ("keep_ops", "keep_nodes"):
            given = getattr(self, option)
            if isinstance(given, str):  # pipeline text gives "a+b"
                object.__setattr__(self, option, tuple(n for n in given.split("+") if n))
        for op in self.keep_ops:
            get_op(op)
        check_observer(self.observer, self.percentile)

    def __str__(self) -> str:
        return Pass.__str__(dataclasses.replace(self, example_inputs=None, calibration=None, reports=None))

    def run(self, graph: Graph) -> Graph:
        return self.run_with_report(graph)[0]

    def run_with_report(self, graph: Graph) -> tuple[Graph, QuantizationReport]:
        calibration = list(self.calibration or ())
        if self.mode == "static" and not calibration:
            raise QuantizationError(
                "int8-static quantization needs calibration inputs: pass calibration=[inputs, ...] (input sets "
                "like example_inputs), or use precision='int8-dynamic', which needs none"
            )
        chosen, kept = choose(graph, self.keep_first_last, frozenset(self.keep_ops), frozenset(self.keep_nodes))
        ranges = (
            observe_ranges(graph, [n.inputs[0] for n in chosen], calibration, self.observer, percentile=self.percentile)
            if self.mode == "static"
            else {}
        )
        names = value_names(graph)
        quantized: list[QuantizedNode] = []

        def replace(node: Node, inputs: list[Value], builder: GraphBuilder):
            if node not in chosen:
                return None
            quantizers = CONV_QUANTIZERS if node.op == "conv" else _QUANTIZERS
            how, result = quantizers[self.mode](builder, graph, node, inputs, ranges.get(node.inputs[0]))
            how = how.replace("{observer}", self.observer)
            quantized.append(QuantizedNode(print_node(node, names), how))
            return result

        result = PruneDeadNodes().run(map_nodes(graph, replace))
        measured = calibration or list(self.example_inputs or ())
        kind = "calibration" if calibration else "example"
        if not measured and quantized:  # the report always gives the error: on random inputs when none are given
            measured, kind = list(random_input_sets(graph, 1)), "random normal (no example or calibration inputs)"
        where = f"{len(measured)} {kind} input set(s)" if measured else "no inputs"
        accuracy = measure_accuracy(graph, result, measured) if measured else ()
        report = QuantizationReport(self.mode, tuple(quantized), tuple(kept), where, accuracy)
        if self.reports is not None:
            self.reports.append(report)
        return result, report


def quantize(graph: Graph, mode: str = "dynamic", **options: Any) -> tuple[Graph, QuantizationReport]:
    """Quantize `graph` (options as `Quantize`'s); returns the graph and its report."""
    return Quantize(mode=mode, **options).run_with_report(graph)


# -- choosing -----------------------------------------------------------------------------------


def weight_of(graph: Graph, node: Node) -> np.ndarray | None:
    """The constant 2-D weight of a matmul/gemm with f32 operands, as [K, N]; None if it has none."""
    if node.op not in CANDIDATE_OPS or node.output.type.dtype != DType.f32 or len(node.inputs) < 2:
        return None
    producer = graph.producers.get(node.inputs[1])
    if producer is None or producer.op != "const" or node.inputs[1].type.rank != 2:
        return None
    if node.op == "gemm" and (node.attrs["trans_a"] or node.inputs[0].type.rank < 1):
        return None
    if node.op == "matmul" and node.inputs[0].type.rank < 2:
        return None
    weight = graph.constants[producer.attrs["name"]]
    return weight.T if node.op == "gemm" and node.attrs["trans_b"] else weight


def choose(
    graph: Graph, keep_first_last: bool, keep_ops: frozenset[str], keep_nodes: frozenset[str]
) -> tuple[set[Node], list[KeptContraction]]:
    """The nodes to quantize, and the float contractions kept with their reasons."""
    names = value_names(graph)
    contractions = [n for n in graph.nodes if get_op(n.op).kind == OpKind.CONTRACTION and n.op != "fused"]
    ends = set()
    if keep_first_last and contractions:
        ends |= {contractions[0]} if reads_raw_input(graph, contractions[0]) else set()
        ends |= {contractions[-1]} if makes_outputs(graph, contractions[-1]) else set()
    chosen, kept = set(), []
    for node in contractions:
        if node.output.type.dtype != DType.f32:
            continue
        if node.op not in (*CANDIDATE_OPS, "conv"):
            reason = f"{node.op}: no int8 form in this pass yet (matmul, gemm and conv are quantized)"
        elif node.op == "conv" and (conv_reason := conv_kept_reason(graph, node)) is not None:
            reason = conv_reason
        elif node.op != "conv" and weight_of(graph, node) is None:
            reason = "its weight is not a 2-D constant (activation x activation, e.g. attention scores)"
        elif node in ends:
            which = "it reads raw inputs" if node is contractions[0] else "it makes the outputs"
            reason = f"first or last contraction of the model (keep_first_last): {which}"
        elif node.op in keep_ops:
            reason = "user policy: keep_ops names this op"
        elif node.source in keep_nodes:
            reason = "user policy: keep_nodes names this node"
        else:
            chosen.add(node)
            continue
        kept.append(KeptContraction(print_node(node, names), node.op, reason))
    return chosen, kept


# -- rewriting ----------------------------------------------------------------------------------


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per column of a [K, N] weight: (q [K, N] int8, scale [N] f32)."""
    weight = weight.astype(np.float32)
    scale = (np.abs(weight).max(axis=0) / np.float32(127)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)  # an all-zero column: any scale
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return q, scale


def static_parameters(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """Asymmetric uint8 over [min(low, 0), max(high, 0)], so that 0 is exact (ONNX's rule)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = np.float32((high - low) / 255) if high > low else np.float32(1)
    point = np.uint8(np.clip(np.rint(-low / scale), 0, 255))
    return scale, point


def _tail(builder: GraphBuilder, node: Node, inputs: list[Value], product: Value) -> Value:
    """What the node adds after its product: gemm's alpha and its bias scaled by beta."""
    if node.op != "gemm":
        return product
    attrs = node.attrs
    if attrs["alpha"] != 1.0:
        product = builder.mul(product, builder.constant(np.float32(attrs["alpha"]), "alpha"))
    if len(inputs) == 3:
        bias = inputs[2]
        if attrs["beta"] != 1.0:
            bias = builder.mul(bias, builder.constant(np.float32(attrs["beta"]), "beta"))
        product = builder.add(product, bias)
    return product


def _weight_only(builder, graph, node, inputs, _range):
    q, scale = quantize_weight(weight_of(graph, node))
    # Stored [K, N] whatever the float weight's layout (gemm's trans_b dropped): the GEMMs read B
    # along N, so the dequantizing read that fusion puts in the GEMM (`fusion_groups`' weight
    # prologue) loads consecutive bytes and scales (the CPU's vector loop, the GPU's staging).
    weight = builder.dequantize_linear(
        builder.constant(q, "w_int8"), builder.constant(scale.reshape(1, -1), "w_scale"),
        builder.constant(np.int8(0), "zero_i8"),
    )  # fmt: skip
    attrs = {**node.attrs, "trans_b": False} if node.op == "gemm" else node.attrs
    rebuilt = builder.op(node.op, inputs[0], weight, *inputs[2:], source=node.source, **attrs)
    return "int8 weight per output channel, dequantized where read; f32 activations", rebuilt


def _dynamic(builder, graph, node, inputs, _range):
    q, w_scale = quantize_weight(weight_of(graph, node))
    x = inputs[0]
    peak = absolute_peak(builder, x, (x.type.rank - 1,))
    x_scale = builder.div(peak, builder.constant(np.float32(127), "int8_max"))
    # Symmetric int8 stored as uint8 with zero point 128: |x / s_x| <= 127, so the codes are the int8
    # ones plus 128 and the i32 product is the same bit for bit; but the int8 GEMM (u8 x s8 `vpdpbusd`)
    # then reads four activation bytes as one 32-bit load instead of widening and shifting each byte.
    point = builder.constant(np.uint8(128), "zero_128")
    qx = builder.quantize_linear(x, x_scale, point)
    accumulated = builder.op(
        "matmul_integer", qx, builder.constant(q, "w_int8"), point, builder.constant(np.int8(0), "zero_i8"),
        source=node.source,
    )  # fmt: skip
    real = builder.mul(
        builder.mul(builder.cast(accumulated, dtype=DType.f32), x_scale), builder.constant(w_scale, "w_scale")
    )
    how = (
        "int8 weight per output channel; activation int8 per row at run time (symmetric, stored as uint8 + 128); "
        "i32 accumulation"
    )
    return how, _tail(builder, node, inputs, real)


def _static(builder, graph, node, inputs, observed):
    q, w_scale = quantize_weight(weight_of(graph, node))
    x_scale, x_point = static_parameters(*observed)
    qx = builder.quantize_linear(inputs[0], builder.constant(x_scale, "x_scale"), builder.constant(x_point, "x_zero"))
    accumulated = builder.op(
        "matmul_integer", qx, builder.constant(q, "w_int8"), builder.constant(x_point, "x_zero"),
        builder.constant(np.int8(0), "zero_i8"), source=node.source,
    )  # fmt: skip
    combined = (x_scale * w_scale).astype(np.float32)
    real = builder.mul(builder.cast(accumulated, dtype=DType.f32), builder.constant(combined, "scale"))
    how = (
        f"int8 weight per output channel; activation uint8 per tensor, scale {float(x_scale):.4g} and zero point "
        f"{int(x_point)} from calibration ({{observer}} observer); i32 accumulation"
    )
    return how, _tail(builder, node, inputs, real)


_QUANTIZERS = {"weight": _weight_only, "dynamic": _dynamic, "static": _static}


# -- the report's measurement -------------------------------------------------------------------


def measure_accuracy(before: Graph, after: Graph, input_sets: Sequence[Any]) -> tuple[OutputAccuracy, ...]:
    """Per float output, over all input sets: max abs error, min cosine, mean top-1 agreement."""
    stats: dict[int, list] = {}
    for inputs in input_sets:
        for index, (value, expected, got) in enumerate(zip(before.outputs, run(before, inputs), run(after, inputs))):
            if not value.type.dtype.is_float:
                continue
            e, g = expected.astype(np.float64), got.astype(np.float64)
            denominator = np.linalg.norm(e) * np.linalg.norm(g)
            cosine = float(e.ravel() @ g.ravel() / denominator) if denominator > 0 else float(np.array_equal(e, g))
            agree = np.argmax(e, axis=-1) == np.argmax(g, axis=-1) if e.ndim else np.array(True)
            entry = stats.setdefault(index, [0.0, math.inf, 0, 0])
            entry[0] = max(entry[0], float(np.abs(e - g).max(initial=0.0)))
            entry[1] = min(entry[1], cosine)
            entry[2] += int(agree.sum())
            entry[3] += agree.size
    return tuple(
        OutputAccuracy(index, max_abs, cosine, agreed / max(total, 1))
        for index, (max_abs, cosine, agreed, total) in stats.items()
    )
