"""lower_precision: run an f32 graph mostly in f16 or bf16, keep the numerically sensitive nodes
in f32, and report what was kept, why, and what the lowering cost on example inputs.

The rewrite. Every node that computes on f32 values is either *lowered* (it reads its f32 inputs
as `dtype` and its f32 results become `dtype`) or *kept* in f32 for a reason the report gives:

- reductions (`OpKind.REDUCTION`: softmax, log_softmax, layer/group/rms norm, sum, mean, pooling)
  combine many elements, and softmax and the norms divide by such a sum; they run in f32 so the
  sum is accumulated and stored precisely. Opaque ops (cumsum, scatter) are kept as well, since
  the policy knows nothing of their numerics; `SENSITIVE_OPS` adds exp, log, pow and batch_norm;
  the `keep_f32` option adds the user's own.
- for f16 only, nodes whose inputs or results range analysis (`passes.range_analysis`) says may
  exceed 65504, f16's largest finite value: sampled on the example inputs when given (times
  `range_margin`), else interval arithmetic from the constants and `input_bound`. bf16 has f32's
  exponent range, so it needs no range check.
- ops that compute nothing (movement: reshape, transpose, slice, ...) and ops with no float
  result (comparisons, argmax, casts to int) *follow their inputs*: they run in `dtype` when all
  their f32 inputs already are, so they never add a cast, nor round a value a kept node reads.
  Sources (`full`, `arange`) stay as they are.

"Low-precision inputs, f32 accumulation" for contractions (matmul, gemm, conv, conv_transpose,
attention) is expressed by the lowered node itself: it reads `dtype` inputs and returns `dtype`.
The interpreter computes every f16/bf16 op in f32 and rounds its result once, and the backends
do the same (tensor-core MMA and AVX512-BF16 dot products accumulate in f32), so the node means
exactly "dtype inputs, f32 accumulation, one rounding on store". The alternative, an f32 result
followed by a cast, cannot be one node (a contraction takes and returns one dtype) and would
write twice the bytes; a fused epilogue may still keep the accumulator in f32 until its store.

Casts. Each value gets at most one cast per type, made where a reader first needs it and shared
by all readers; constants are converted at compile time instead (the f32 array is kept only if an
f32 reader remains). Cast chains collapse: a value read back in the type it came from, through
exact upcasts (`cast(cast(x: bf16, f32), bf16)` is `x`), costs no cast. Graph inputs and outputs
keep their types, so the signature never changes (outputs are cast back to f32 at the end); f64,
integer and bool values are untouched. Casts left unused (an upcast that only fed a collapsed
chain) are pruned.

Numerics: precision-reducing. Each lowered value carries a relative rounding error of at most
2^-8 (bf16) or 2^-11 (f16), which the graph's conditioning propagates; the report measures the
resulting error on the example inputs against the f32 graph.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ir import DType, Graph, GraphBuilder, Node, OpKind, Value, get_op, run
from ir.dtype import LOW_PRECISION_FLOATS
from ir.printer import print_node, value_names
from passes.editing import keep, map_nodes
from passes.manager import Numerics, Pass, register_pass
from passes.prune_dead_nodes import PruneDeadNodes
from passes.range_analysis import Bounds, interval_bounds, merge_sampled, sampled_bounds

F16_MAX = float(np.finfo(np.float16).max)  # 65504

# Why each kind of node stays in f32 (the policy reads kinds from the op table).
SENSITIVE_KINDS: Mapping[OpKind, str] = {
    OpKind.REDUCTION: "reduction: combines many elements (softmax and the norms divide by a sum), "
    "so it accumulates and stores in f32",
    OpKind.OPAQUE: "opaque op: its numerics are unknown to the precision policy",
}

# Ops kept in f32 that their kind does not tell apart; each with the numerical reason.
SENSITIVE_OPS: Mapping[str, str] = {
    "exp": "exp: turns an absolute input error into a relative output error, and overflows f16 above x = 11",
    "log": "log: its result's relative error grows without limit as x nears 1",
    "pow": "pow: magnifies the base's relative error by the exponent, and overflows easily",
    "batch_norm": "normalisation: divides by sqrt(var + eps), magnifying rounding where the variance is small",
}


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptNode:
    """A node that computes on f32 values and stays in f32."""

    node: str
    """The node in the text form of the graph before lowering."""
    op: str
    reason: str


@dataclass(frozen=True)
class OutputError:
    """How far one output of the lowered graph lies from the f32 graph's, on the example inputs."""

    index: int
    type: str
    max_abs: float
    max_rel: float
    """max |lowered - f32| / max |f32| (relative to the output's largest magnitude, so that
    elements near zero do not make it meaningless)."""


@dataclass(frozen=True)
class PrecisionReport:
    """What `lower_precision` did: nodes lowered, nodes kept in f32 and why, the measured error."""

    dtype: DType
    lowered: int
    kept: tuple[KeptNode, ...]
    ranges: str
    """Where the f16 range check took its bounds from."""
    errors: tuple[OutputError, ...] = ()
    """Per output, on the example inputs; empty when none were given."""

    def kept_ops(self) -> dict[str, str]:
        """op -> reason, for every op kept at least once."""
        return {k.op: k.reason for k in self.kept}

    def __str__(self) -> str:
        lines = [
            f"lower_precision to {self.dtype}: {self.lowered} node(s) lowered, {len(self.kept)} kept in f32",
            f"  ranges: {self.ranges}",
        ]
        if self.kept:
            lines.append("kept in f32:")
            lines += [f"  {k.node}\n      because {k.reason}" for k in self.kept]
        if self.errors:
            lines.append("error on the example inputs against the f32 graph:")
            lines += [
                f"  output {e.index} ({e.type}): max abs {e.max_abs:.3g}, max rel {e.max_rel:.3g}" for e in self.errors
            ]
        return "\n".join(lines)


# -- the pass -----------------------------------------------------------------------------------


@register_pass
class LowerPrecision(Pass):
    """Run f32 nodes in f16 or bf16; keep reductions, norms, exp/log/pow and f16-overflowing values in f32."""

    name = "lower_precision"
    numerics = Numerics.PRECISION_REDUCING

    dtype: DType = DType.bf16
    """The low-precision type: f16 or bf16."""
    keep_f32: tuple[str, ...] = ()
    """Further op names to keep in f32 (user policy)."""
    range_margin: float = 4.0
    """Sampled bounds are multiplied by this, as headroom for inputs larger than the examples."""
    input_bound: float | None = None
    """Without example inputs: the assumed max |x| of float graph inputs for interval analysis
    (None: unbounded, so f16 keeps in f32 whatever reads an input before it is bounded)."""
    example_inputs: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)
    """Example input sets (each a sequence or a mapping by input name) for the range check and
    the error report; set by the compiler from the user's example inputs, not from pipeline text."""

    def __post_init__(self) -> None:
        if self.dtype not in LOW_PRECISION_FLOATS:
            raise ValueError(f"lower_precision: dtype must be f16 or bf16, got {self.dtype}")
        if isinstance(self.keep_f32, str):  # "a+b" as pipeline text gives it (the manager reads tuple[str, ...] as str)
            object.__setattr__(self, "keep_f32", tuple(n for n in self.keep_f32.split("+") if n))
        object.__setattr__(self, "keep_f32", tuple(self.keep_f32))
        for op in self.keep_f32:
            get_op(op)  # an unknown name raises UnknownOpError listing the table's ops
        if not self.range_margin >= 1:
            raise ValueError(f"lower_precision: range_margin must be at least 1, got {self.range_margin}")

    def __str__(self) -> str:
        # Example inputs are data, not an option pipeline text can carry.
        return Pass.__str__(dataclasses.replace(self, example_inputs=None))

    def run(self, graph: Graph) -> Graph:
        # A pipeline has no use for the report: measuring its errors runs the graph twice more
        # on the example inputs, the most of compile's time for a large model (BERT-base b8 s512).
        return self.run_with_report(graph, measure=False)[0]

    def run_with_report(self, graph: Graph, measure: bool = True) -> tuple[Graph, PrecisionReport]:
        """The lowered graph and the report; `measure=False` leaves out the measured errors."""
        examples = list(self.example_inputs or ())
        bounds, ranges = self._bounds(graph, examples)
        decisions = classify(graph, self.dtype, frozenset(self.keep_f32), bounds)
        lowered = PruneDeadNodes().run(rewrite(graph, decisions, self.dtype))
        errors = measure_errors(graph, lowered, examples[0]) if examples and measure else ()
        report = PrecisionReport(self.dtype, len(decisions.lowered), tuple(decisions.kept), ranges, errors)
        return lowered, report

    def _bounds(self, graph: Graph, examples: list[Any]) -> tuple[Bounds | None, str]:
        if self.dtype != DType.f16:
            return None, f"not checked ({self.dtype} has f32's exponent range)"
        if examples:
            bounds = merge_sampled([sampled_bounds(graph, inputs, self.range_margin) for inputs in examples])
            return bounds, f"sampled on {len(examples)} example input set(s), margin {self.range_margin:g}"
        bound = "unbounded" if self.input_bound is None else f"|x| <= {self.input_bound:g}"
        return interval_bounds(graph, self.input_bound), f"interval analysis, float inputs {bound}"


def lower_precision(
    graph: Graph, example_inputs: Sequence[Any] | Mapping[str, Any] | None = None, **options: Any
) -> tuple[Graph, PrecisionReport]:
    """Lower `graph` (options as `LowerPrecision`'s) with one example input set; returns the graph
    and its report."""
    examples = None if example_inputs is None else (example_inputs,)
    return LowerPrecision(example_inputs=examples, **options).run_with_report(graph)


# -- deciding: which nodes run in low precision -------------------------------------------------


@dataclass
class Decisions:
    lowered: set[Node] = field(default_factory=set)
    kept: list[KeptNode] = field(default_factory=list)
    reads: dict[Value, set[DType]] = field(default_factory=dict)
    """The types each value will be read in (by nodes and as a graph output)."""


def classify(graph: Graph, dtype: DType, keep_f32: frozenset[str], bounds: Bounds | None) -> Decisions:
    """Decide, in graph order, which nodes are lowered and which are kept (with a reason)."""
    decisions = Decisions()
    in_low = set()  # f32 values that have a `dtype` version at no cost: lowered results, exact upcasts
    names = value_names(graph)
    for node in graph.nodes:
        if not _reads_or_makes_f32(node) or node.op == "const" or not node.inputs:
            continue
        if node.op == "cast" and node.output.type.dtype.is_float:
            # Float casts are re-made from the versions of their input (see _Rewriter); casts from
            # ints stay. An upcast of a `dtype` value to f32 has that value as its low version.
            source = node.inputs[0]
            if node.output.type.dtype == DType.f32 and (source.type.dtype == dtype or source in in_low):
                in_low.add(node.output)
            continue
        lower, reason = _by_policy(node, keep_f32, in_low)
        if lower and bounds is not None:
            reason = _range_reason(node, bounds, names)
        if lower and reason is None:
            decisions.lowered.add(node)
            in_low.update(v for v in node.outputs if v.type.dtype == DType.f32)
        elif reason is not None:
            decisions.kept.append(KeptNode(print_node(node, names), node.op, reason))
    for node in graph.nodes:
        for v in node.inputs:
            decisions.reads.setdefault(v, set()).add(_read_type(node, v, decisions.lowered, dtype))
    for v in graph.outputs:
        decisions.reads.setdefault(v, set()).add(v.type.dtype)
    return decisions


def _reads_or_makes_f32(node: Node) -> bool:
    return any(v.type.dtype == DType.f32 for v in (*node.inputs, *node.outputs))


def _follows_inputs(node: Node) -> bool:
    """Ops that compute no float value: lowering them only saves bytes, never adds error."""
    return get_op(node.op).kind == OpKind.MOVEMENT or not any(v.type.dtype.is_float for v in node.outputs)


def _by_policy(node: Node, keep_f32: frozenset[str], in_low: set[Value]) -> tuple[bool, str | None]:
    """(lower it?, why it stays in f32 if not: None where there is nothing to report)."""
    if node.op in keep_f32:
        return False, "user policy: keep_f32 names this op"
    if _follows_inputs(node):
        f32_inputs = [v for v in node.inputs if v.type.dtype == DType.f32]
        return bool(f32_inputs) and all(v in in_low for v in f32_inputs), None
    reason = SENSITIVE_OPS.get(node.op) or SENSITIVE_KINDS.get(get_op(node.op).kind)
    return reason is None, reason


def _range_reason(node: Node, bounds: Bounds, names: Mapping[Value, str]) -> str | None:
    """Why this node cannot run in f16: a value it reads or makes may not fit (None: all fit)."""
    for value in (*node.inputs, *node.outputs):
        bound = bounds.get(value, math.inf)
        if value.type.dtype == DType.f32 and not bound <= F16_MAX:
            size = "is unbounded" if math.isinf(bound) else f"may reach {bound:.3g}"
            return f"range: %{names.get(value, '?')} {size}, beyond f16's largest finite value {F16_MAX:g}"
    return None


def _read_type(node: Node, value: Value, lowered: set[Node], dtype: DType) -> DType:
    if node in lowered and value.type.dtype == DType.f32:
        return dtype
    if node.op == "cast" and value.type.dtype.is_float and node.attrs["dtype"].is_float:
        return node.attrs["dtype"]  # a float cast is that value's version in the target type
    return value.type.dtype


# -- rewriting: one version of each value per type ----------------------------------------------


def _is_exact_upcast(source: DType, target: DType) -> bool:
    """Whether every `source` value is exactly a `target` value (so a round trip is the identity)."""
    wider = {DType.f16: {DType.f32, DType.f64}, DType.bf16: {DType.f32, DType.f64}, DType.f32: {DType.f64}}
    return target in wider.get(source, set())


class _Rewriter:
    """Builds the lowered graph through `map_nodes`, holding every value's versions by type."""

    def __init__(self, graph: Graph, decisions: Decisions, dtype: DType) -> None:
        self.graph, self.decisions, self.dtype = graph, decisions, dtype
        self.builder: GraphBuilder | None = None
        self.versions: dict[Value, dict[DType, Value]] = {v: {v.type.dtype: v} for v in graph.inputs}
        self.upcast_of: dict[Value, Value] = {}  # original cast results that are exact upcasts -> their input
        self.constant_of: dict[Value, str] = {}  # original const values -> their table entry
        self.outputs = set(graph.outputs)

    def replace(self, node: Node, _inputs: list[Value], builder: GraphBuilder) -> list[Value]:
        self.builder = builder
        if node.op == "const":
            self._constant(node)
        elif node.op == "cast" and node.inputs[0].type.dtype.is_float and node.attrs["dtype"].is_float:
            self._float_cast(node)
        elif node in self.decisions.lowered:
            self._lowered(node)
        else:
            kept = keep(builder, self.graph, node, [self.version(v, v.type.dtype) for v in node.inputs])
            for old, new in zip(node.outputs, kept.outputs):
                self.versions[old] = {old.type.dtype: new}
        # map_nodes only reads what is returned here for the graph's outputs, which keep their types.
        return [self.version(v, v.type.dtype) if v in self.outputs else self._any_version(v) for v in node.outputs]

    def _constant(self, node: Node) -> None:
        (value,) = node.outputs
        name = node.attrs["name"]
        self.constant_of[value] = name
        reads = self.decisions.reads.get(value, set())
        if value.type.dtype == DType.f32 and reads == {self.dtype}:  # only low readers: convert in place
            converted = self.builder.constant(self.graph.constants[name].astype(self.dtype.numpy), name)
            self.versions[value] = {self.dtype: converted}
        else:
            self.versions[value] = {value.type.dtype: keep(self.builder, self.graph, node, []).output}

    def _float_cast(self, node: Node) -> None:
        (source,), (result,) = node.inputs, node.outputs
        if _is_exact_upcast(source.type.dtype, result.type.dtype):
            self.upcast_of[result] = source
        self.versions[result] = {result.type.dtype: self.version(source, result.type.dtype)}

    def _lowered(self, node: Node) -> None:
        inputs = [self.version(v, self.dtype if v.type.dtype == DType.f32 else v.type.dtype) for v in node.inputs]
        results = self.builder.op(node.op, *inputs, source=node.source, **node.attrs)
        results = results if isinstance(results, tuple) else (results,)
        for old, new in zip(node.outputs, results):
            self.versions[old] = {new.type.dtype: new}

    def _any_version(self, value: Value) -> Value:
        return next(iter(self.versions[value].values()))

    def version(self, value: Value, dtype: DType) -> Value:
        """`value` as a `dtype` value of the new graph, made once and shared."""
        have = self.versions[value]
        if dtype in have:
            return have[dtype]
        if value in self.upcast_of:  # cast(cast(x, wider), t) == cast(x, t): skip the round trip
            made = self.version(self.upcast_of[value], dtype)
        elif value in self.constant_of:  # convert the constant at compile time
            name = self.constant_of[value]
            made = self.builder.constant(self.graph.constants[name].astype(dtype.numpy), f"{name}_{dtype}")
        else:  # from the exact version if there is one, else the low one (upcasting it is exact)
            made = self.builder.op("cast", have.get(value.type.dtype) or self._any_version(value), dtype=dtype)
        have[dtype] = made
        return made


def rewrite(graph: Graph, decisions: Decisions, dtype: DType) -> Graph:
    """The graph with `decisions.lowered` run in `dtype` and casts where values cross over."""
    return map_nodes(graph, _Rewriter(graph, decisions, dtype).replace)


# -- the report's error measurement -------------------------------------------------------------


def measure_errors(before: Graph, after: Graph, inputs: Sequence[Any] | Mapping[str, Any]) -> tuple[OutputError, ...]:
    """Per float output: max absolute and relative error of `after` against `before` on `inputs`."""
    errors = []
    for index, (value, expected, actual) in enumerate(zip(before.outputs, run(before, inputs), run(after, inputs))):
        if not value.type.dtype.is_float:
            continue
        e, a = expected.astype(np.float64), actual.astype(np.float64)
        with np.errstate(all="ignore"):
            same = (e == a) | (np.isnan(e) & np.isnan(a))
            difference = np.where(same, 0.0, np.abs(a - e))
        max_abs = float(np.nan_to_num(difference, nan=np.inf).max(initial=0.0))
        finite = np.abs(e[np.isfinite(e)])
        scale = float(finite.max(initial=0.0))
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        errors.append(OutputError(index, str(value.type), max_abs, max_rel))
    return tuple(errors)
