"""Movement ops (reshape ... tile, gather/scatter): shape rules with their errors, references against
torch and hand-computed values, low-precision and oracle runs, and the text form round trip."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder, InterpreterError, OpAttributeError, OpKind, ShapeError, TensorType, get_op

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MOVEMENT_OPS = (
    *("reshape", "transpose", "expand", "concat", "split", "slice", "gather", "gather_elements", "scatter"),
    *("pad", "squeeze", "unsqueeze", "flatten", "tile"),
)


def T(text: str) -> TensorType:
    """A tensor type from its text form: `T("f32[2,3]")`."""
    match = re.fullmatch(r"(\w+)\[([\d,]*)\]", text)
    dims = tuple(int(d) for d in match.group(2).split(",") if d)
    return TensorType(dims, DType.parse(match.group(1)))


def infer(op: str, inputs: tuple[str, ...], attrs: dict[str, Any]) -> tuple[TensorType, ...]:
    definition = get_op(op)
    return definition.infer_types(tuple(T(t) for t in inputs), definition.normalize_attrs(attrs))


def build(op: str, arrays: list[np.ndarray], attrs: dict[str, Any]) -> ir.Graph:
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    outputs = builder.op(op, *inputs, **attrs)
    return builder.build(*(outputs if isinstance(outputs, tuple) else (outputs,)))


def run_op(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], oracle: bool = False) -> list[np.ndarray]:
    return ir.run(build(op, arrays, attrs), arrays, oracle=oracle)


# -- shape inference --------------------------------------------------------------------------

INFER_CASES = [
    ("reshape", ("f32[2,3,4]",), {"shape": (4, 6)}, ("f32[4,6]",)),
    ("reshape", ("f32[2,3,4]",), {"shape": (2, -1)}, ("f32[2,12]",)),
    ("reshape", ("f32[0,3]",), {"shape": (-1, 3)}, ("f32[0,3]",)),
    ("reshape", ("f32[0,3]",), {"shape": (3, 0, 5)}, ("f32[3,0,5]",)),
    ("reshape", ("i8[1]",), {"shape": ()}, ("i8[]",)),
    ("transpose", ("f16[2,3,4]",), {"perm": (2, 0, 1)}, ("f16[4,2,3]",)),
    ("transpose", ("f32[]",), {"perm": ()}, ("f32[]",)),
    ("expand", ("f32[3,1]",), {"shape": (2, 3, 4)}, ("f32[2,3,4]",)),
    ("expand", ("bool[]",), {"shape": (2, 2)}, ("bool[2,2]",)),
    ("expand", ("f32[1,4]",), {"shape": (0, 4)}, ("f32[0,4]",)),
    ("concat", ("f32[2,3]", "f32[4,3]"), {"axis": 0}, ("f32[6,3]",)),
    ("concat", ("i32[2,3]", "i32[2,0]", "i32[2,1]"), {"axis": -1}, ("i32[2,4]",)),
    ("split", ("f32[5,4]",), {"axis": 0, "sizes": (2, 3)}, ("f32[2,4]", "f32[3,4]")),
    ("split", ("f32[2,6]",), {"axis": -1, "sizes": (1, 0, 5)}, ("f32[2,1]", "f32[2,0]", "f32[2,5]")),
    ("slice", ("f32[6,5]",), {"starts": (1,), "ends": (-1,)}, ("f32[4,5]",)),
    ("slice", ("f32[6,5]",), {"starts": (0, 1), "ends": (INT64_MAX, 4), "steps": (2, 2)}, ("f32[3,2]",)),
    ("slice", ("f32[6,5]",), {"starts": (-1,), "ends": (INT64_MIN,), "axes": (1,), "steps": (-1,)}, ("f32[6,5]",)),
    ("slice", ("f32[6,5]",), {"starts": (4,), "ends": (0,), "steps": (-3,)}, ("f32[2,5]",)),
    ("slice", ("f32[6,5]",), {"starts": (5,), "ends": (1,)}, ("f32[0,5]",)),
    ("slice", ("f32[0,5]",), {"starts": (-1,), "ends": (INT64_MIN,), "steps": (-1,)}, ("f32[0,5]",)),
    ("gather", ("f32[10,4]", "i64[2,3]"), {}, ("f32[2,3,4]",)),
    ("gather", ("f32[3,4,5]", "i32[]"), {"axis": 1}, ("f32[3,5]",)),
    ("gather", ("f32[3,4,5]", "i32[2]"), {"axis": -1}, ("f32[3,4,2]",)),
    ("gather_elements", ("f32[3,4]", "i64[2,4]"), {}, ("f32[2,4]",)),
    ("gather_elements", ("f32[3,4]", "i32[2,7]"), {"axis": 1}, ("f32[2,7]",)),
    ("scatter", ("f32[3,4]", "i64[2,4]", "f32[2,4]"), {"reduction": "add"}, ("f32[3,4]",)),
    ("scatter", ("i32[3,4]", "i32[3,6]", "i32[3,6]"), {"axis": 1}, ("i32[3,4]",)),
    ("pad", ("f32[2,3]",), {"pads": (1, 0, 2, 3)}, ("f32[5,6]",)),
    ("pad", ("f32[2,3]",), {"pads": (0, -1, 0, 1), "mode": "reflect"}, ("f32[2,3]",)),
    ("pad", ("u8[4]",), {"pads": (-4, 0)}, ("u8[0]",)),
    ("pad", ("f32[0,3]",), {"pads": (0, 1, 0, 1), "mode": "edge"}, ("f32[0,5]",)),
    ("pad", ("f32[]",), {"pads": ()}, ("f32[]",)),
    ("squeeze", ("f32[1,3,1,2]",), {}, ("f32[3,2]",)),
    ("squeeze", ("f32[1,3,1,2]",), {"axes": (-2,)}, ("f32[1,3,2]",)),
    ("squeeze", ("f32[1]",), {}, ("f32[]",)),
    ("unsqueeze", ("f32[3,4]",), {"axes": (0, 3)}, ("f32[1,3,4,1]",)),
    ("unsqueeze", ("f32[3,4]",), {"axes": (1, -1)}, ("f32[3,1,4,1]",)),
    ("unsqueeze", ("f32[]",), {"axes": (0,)}, ("f32[1]",)),
    ("flatten", ("f32[2,3,4]",), {}, ("f32[24]",)),
    ("flatten", ("f32[2,3,4,5]",), {"start_axis": 1, "end_axis": 2}, ("f32[2,12,5]",)),
    ("flatten", ("f32[]",), {}, ("f32[1]",)),
    ("tile", ("f32[2,3]",), {"repeats": (2, 1)}, ("f32[4,3]",)),
    ("tile", ("f32[2,1,3]",), {"repeats": (2, 2, 0)}, ("f32[4,2,0]",)),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "expected"), INFER_CASES)
def test_infer_gives_the_output_types(op, inputs, attrs, expected):
    assert infer(op, inputs, attrs) == tuple(T(t) for t in expected)


INFER_ERRORS = [
    ("reshape", ("f32[2,3]",), {"shape": (4,)}, r"reshape: cannot reshape f32\[2,3\] \(6 elements\) to \[4\] \(4 el"),
    ("reshape", ("f32[2,3]",), {"shape": (-1, -1)}, r"reshape: shape \[-1,-1\] has more than one -1"),
    ("reshape", ("f32[2,3]",), {"shape": (4, -1)}, r"reshape: .* to \[4,-1\]: not a multiple of 4"),
    ("reshape", ("f32[0,3]",), {"shape": (0, -1)}, r"reshape: cannot infer the -1 of \[0,-1\]"),
    ("reshape", ("f32[2,3]",), {"shape": (-2, -3)}, r"reshape: shape \[-2,-3\] has a negative size other than -1"),
    ("transpose", ("f32[2,3]",), {"perm": (0,)}, r"transpose: perm \[0\] is not a permutation of range\(2\)"),
    ("transpose", ("f32[2,3]",), {"perm": (1, 1)}, r"transpose: perm \[1,1\] is not a permutation"),
    ("transpose", ("f32[2,3]",), {"perm": (-1, 0)}, r"transpose: perm \[-1,0\] is not a permutation"),
    ("expand", ("f32[2,3]",), {"shape": (3, 3)}, r"expand: f32\[2,3\] does not broadcast to \[3,3\]"),
    ("expand", ("f32[2,3]",), {"shape": (3,)}, r"expand: f32\[2,3\] does not broadcast to \[3\]"),
    ("expand", ("f32[3]",), {"shape": (-1, 3)}, r"expand: shape \[-1,3\] has a negative size"),
    ("concat", ("f32[2,3]", "f32[4,5]"), {"axis": 1}, r"concat: inputs differ on axis 0: f32\[2,3\] vs f32\[4,5\]"),
    ("concat", ("f32[2,3]", "f32[2,3,1]"), {"axis": 0}, r"concat: inputs differ in rank: f32\[2,3\] vs f32\[2,3,1\]"),
    ("concat", ("f32[2,3]", "f16[2,3]"), {"axis": 0}, r"concat: inputs must have one dtype"),
    ("concat", ("f32[2,3]", "f32[2,3]"), {"axis": 2}, r"concat: axis 2 is out of range for rank 2"),
    ("concat", ("f32[]", "f32[]"), {"axis": 0}, r"concat: cannot concatenate scalars"),
    (
        "split",
        ("f32[5,4]",),
        {"axis": 0, "sizes": (2, 2)},
        r"split: sizes \[2,2\] sum to 4, but axis 0 of f32\[5,4\] h",
    ),
    ("split", ("f32[5,4]",), {"axis": 0, "sizes": ()}, r"split: sizes must name at least one piece"),
    ("split", ("f32[5,4]",), {"axis": 1, "sizes": (6, -2)}, r"split: sizes \[6,-2\] has a negative size"),
    ("split", ("f32[5,4]",), {"axis": -3, "sizes": (5,)}, r"split: axis -3 is out of range for rank 2"),
    ("slice", ("f32[6,5]",), {"starts": (0,), "ends": (4,), "steps": (0,)}, r"slice: step 0 on axis 0"),
    (
        "slice",
        ("f32[6,5]",),
        {"starts": (0, 0), "ends": (1,)},
        r"slice: .* one entry per sliced axis, got 2, 1, 2 and 2",
    ),
    ("slice", ("f32[6,5]",), {"starts": (0,), "ends": (1,), "steps": (1, 1)}, r"got 1, 1, 1 and 2"),
    ("slice", ("f32[6,5]",), {"starts": (0,), "ends": (1,), "axes": (2,)}, r"slice: axis 2 is out of range for rank 2"),
    ("slice", ("f32[6,5]",), {"starts": (0, 0), "ends": (1, 1), "axes": (1, -1)}, r"slice: repeated axis in \(1, -1\)"),
    ("gather", ("f32[10,4]", "f32[2]"), {}, r"gather: indices must be one of i32, i64, got f32\[2\]"),
    ("gather", ("f32[]", "i64[2]"), {}, r"gather: axis 0 is out of range for rank 0"),
    ("gather", ("f32[10,4]", "i64[2]"), {"axis": -3}, r"gather: axis -3 is out of range for rank 2"),
    ("gather_elements", ("f32[3,4]", "i64[3]"), {}, r"gather_elements: indices must have the rank of x"),
    ("gather_elements", ("f32[3,4]", "i64[2,5]"), {}, r"gather_elements: indices i64\[2,5\] are larger .* on axis 1"),
    ("gather_elements", ("f32[3,4]", "i8[2,4]"), {}, r"gather_elements: indices must be one of i32, i64"),
    ("gather_elements", ("f32[3,4]", "i64[2,4]"), {"axis": 2}, r"gather_elements: axis 2 is out of range"),
    ("scatter", ("f32[3,4]", "i64[2,4]", "f32[2,3]"), {}, r"scatter: indices and updates must have one shape"),
    ("scatter", ("f32[3,4]", "i64[2,4]", "f16[2,4]"), {}, r"scatter: inputs must have one dtype"),
    ("scatter", ("f32[3,4]", "i64[4,4]", "f32[4,4]"), {"axis": 1}, r"scatter: indices i64\[4,4\] are larger .* axis 0"),
    ("scatter", ("f32[3,4]", "i64[4]", "f32[4]"), {}, r"scatter: indices must have the rank of x"),
    ("scatter", ("f32[3,4]", "f32[2,4]", "f32[2,4]"), {}, r"scatter: indices must be one of i32, i64"),
    ("pad", ("f32[2,3]",), {"pads": (1, 1)}, r"pad: pads must hold 2 \* rank = 4 values .* got 2 for f32\[2,3\]"),
    ("pad", ("f32[2,3]",), {"pads": (0, 3, 0, 0), "mode": "reflect"}, r"pad: reflect padding of 3 on axis 1 needs"),
    ("pad", ("f32[2,3]",), {"pads": (0, -1, 0, 2), "mode": "reflect"}, r"reflect padding of 2 .* has 2 there"),
    ("pad", ("f32[1,3]",), {"pads": (1, 0, 0, 0), "mode": "reflect"}, r"reflect padding of 1 on axis 0"),
    # the limit holds for what is left after cropping, as in onnxruntime
    ("pad", ("f32[5]",), {"pads": (3, -2), "mode": "reflect"}, r"reflect padding of 3 .* f32\[5\] has 3 there"),
    (
        "pad",
        ("f32[2,3]",),
        {"pads": (0, -2, 0, -2)},
        r"pad: pads \[0,-2,0,-2\] crop more than the 3 elements of axis 1",
    ),
    ("pad", ("f32[0,3]",), {"pads": (1, 0, 0, 0), "mode": "edge"}, r"pad: edge padding of axis 0 .* needs an element"),
    ("squeeze", ("f32[2,1]",), {"axes": (0,)}, r"squeeze: axis 0 of \[2,1\] has size 2, not 1"),
    ("squeeze", ("f32[2,1]",), {"axes": (2,)}, r"squeeze: axis 2 is out of range for rank 2"),
    ("squeeze", ("f32[1,1]",), {"axes": (1, -1)}, r"squeeze: repeated axis"),
    ("unsqueeze", ("f32[2,3]",), {"axes": (3,)}, r"unsqueeze: axis 3 is out of range for rank 3"),
    ("unsqueeze", ("f32[2,3]",), {"axes": (1, -3)}, r"unsqueeze: repeated axis in \(1, -3\)"),
    ("flatten", ("f32[2,3,4]",), {"start_axis": 2, "end_axis": 1}, r"flatten: start_axis 2 comes after end_axis 1"),
    ("flatten", ("f32[2,3,4]",), {"start_axis": 3}, r"flatten: axis 3 is out of range for rank 3"),
    ("flatten", ("f32[]",), {"start_axis": 1}, r"flatten: axis 1 is out of range for rank 1"),
    ("tile", ("f32[2,3]",), {"repeats": (2,)}, r"tile: repeats \[2\] must have one entry per axis of f32\[2,3\]"),
    ("tile", ("f32[2,3]",), {"repeats": (2, -1)}, r"tile: repeats \[2,-1\] has a negative count"),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "message"), INFER_ERRORS)
def test_infer_rejects_bad_inputs(op, inputs, attrs, message):
    with pytest.raises(ShapeError, match=message):
        infer(op, inputs, attrs)


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("reshape", {}, r"reshape: attribute 'shape' \(ints\) is required"),
        ("scatter", {"reduction": "sum"}, r"scatter: attribute 'reduction' must be one of"),
        ("pad", {"pads": (0, 0), "mode": "wrap"}, r"pad: attribute 'mode' must be one of"),
        ("slice", {"starts": (0,), "ends": 1}, r"slice: attribute 'ends' expects ints"),
    ],
)
def test_bad_attributes_are_rejected(op, attrs, message):
    with pytest.raises(OpAttributeError, match=message):
        get_op(op).normalize_attrs(attrs)


def test_builder_quotes_the_node_on_a_shape_error():
    builder = GraphBuilder("t")
    x = builder.input("x", (2, 3))
    with pytest.raises(ShapeError, match=r"(?s)reshape: cannot reshape.*in: reshape\(%x: f32\[2,3\]\)"):
        builder.reshape(x, shape=(5,))


def test_kinds_and_costs():
    for op in MOVEMENT_OPS:
        definition = get_op(op)
        assert definition.kind == (OpKind.OPAQUE if op == "scatter" else OpKind.MOVEMENT), op
        assert definition.doc, op
    types = (T("f32[3,4]"), T("i64[2,4]"), T("f32[2,4]"))
    scatter = get_op("scatter")
    assert scatter.cost_flops(types, (types[0],), scatter.normalize_attrs({"reduction": "add"})) == 8
    assert scatter.cost_flops(types, (types[0],), scatter.normalize_attrs({})) == 0
    reshape = get_op("reshape")
    assert reshape.cost_flops((types[0],), (T("f32[12]"),), reshape.normalize_attrs({"shape": (12,)})) == 0


# -- references against torch ----------------------------------------------------------------


def floats(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


def ints(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.integers(-50, 50, size=shape).astype(np.int64)


def index(values, dtype=np.int64) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: np.array(values, dtype=dtype)


@dataclass(frozen=True)
class Case:
    """One op application: inputs drawn from a generator, attributes, and torch's answer."""

    op: str
    inputs: tuple[Callable[[np.random.Generator], np.ndarray], ...]
    attrs: dict[str, Any]
    torch_fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    rtol: float = 0.0
    """Only scatter's reductions round (in a different order from torch's)."""

    def arrays(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [make(rng) for make in self.inputs]


def wrap(i: torch.Tensor, size: int) -> torch.Tensor:
    """torch.gather and scatter take no negative indices; ONNX's count from the end."""
    return (i % size).long()


CASES = {
    "reshape-2d": Case("reshape", (floats(2, 3, 4),), {"shape": (4, 6)}, lambda x: x.reshape(4, 6)),
    "reshape-infer": Case("reshape", (floats(2, 3, 4),), {"shape": (2, -1, 2)}, lambda x: x.reshape(2, -1, 2)),
    "reshape-empty": Case("reshape", (floats(0, 3),), {"shape": (3, -1)}, lambda x: x.reshape(3, -1)),
    "reshape-scalar": Case("reshape", (floats(1, 1),), {"shape": ()}, lambda x: x.reshape(())),
    "reshape-int": Case("reshape", (ints(6),), {"shape": (3, 1, 2)}, lambda x: x.reshape(3, 1, 2)),
    "transpose-3d": Case("transpose", (floats(2, 3, 4),), {"perm": (2, 0, 1)}, lambda x: x.permute(2, 0, 1)),
    "transpose-2d": Case("transpose", (floats(3, 5),), {"perm": (1, 0)}, lambda x: x.T),
    "transpose-4d": Case("transpose", (ints(2, 1, 3, 2),), {"perm": (3, 1, 0, 2)}, lambda x: x.permute(3, 1, 0, 2)),
    "expand-rank": Case("expand", (floats(3, 1),), {"shape": (2, 3, 4)}, lambda x: x.expand(2, 3, 4)),
    "expand-scalar": Case("expand", (floats(),), {"shape": (2, 2)}, lambda x: x.expand(2, 2)),
    "expand-same": Case("expand", (ints(2, 3),), {"shape": (2, 3)}, lambda x: x.expand(2, 3)),
    "concat-0": Case("concat", (floats(2, 3), floats(4, 3)), {"axis": 0}, lambda a, b: torch.cat([a, b], 0)),
    "concat-last": Case(
        "concat", (floats(2, 3), floats(2, 1), floats(2, 0)), {"axis": -1}, lambda *xs: torch.cat(xs, -1)
    ),
    "concat-one": Case("concat", (ints(1, 2, 3),), {"axis": 1}, lambda x: torch.cat([x], 1)),
    "concat-middle": Case("concat", (floats(2, 2, 1), floats(2, 3, 1)), {"axis": 1}, lambda *xs: torch.cat(xs, 1)),
    "split-0": Case("split", (floats(5, 4),), {"axis": 0, "sizes": (2, 3)}, lambda x: torch.split(x, [2, 3], 0)),
    "split-empty-piece": Case(
        "split", (floats(2, 6),), {"axis": -1, "sizes": (1, 0, 5)}, lambda x: torch.split(x, [1, 0, 5], -1)
    ),
    "split-whole": Case("split", (ints(3),), {"axis": 0, "sizes": (3,)}, lambda x: (x,)),
    "slice-1": Case("slice", (floats(6, 5),), {"starts": (1,), "ends": (-1,)}, lambda x: x[1:-1]),
    "slice-steps": Case(
        "slice",
        (floats(6, 5),),
        {"starts": (0, 1), "ends": (INT64_MAX, 4), "steps": (2, 2)},
        lambda x: x[0::2, 1:4:2],
    ),
    "slice-clamp": Case("slice", (floats(6, 5),), {"starts": (-100,), "ends": (100,), "axes": (-1,)}, lambda x: x),
    "slice-reverse": Case(
        "slice",
        (floats(6, 5),),
        {"starts": (-1,), "ends": (INT64_MIN,), "axes": (1,), "steps": (-1,)},
        lambda x: torch.flip(x, [1]),
    ),
    # rows 4 and 2: the flipped tensor holds row r at 5 - r
    "slice-reverse-step": Case(
        "slice", (floats(6, 5),), {"starts": (4,), "ends": (0,), "steps": (-2,)}, lambda x: torch.flip(x, [0])[1:4:2]
    ),
    "slice-empty": Case("slice", (floats(6, 5),), {"starts": (5,), "ends": (1,)}, lambda x: x[5:1]),
    "slice-axes": Case(
        "slice",
        (ints(2, 3, 4),),
        {"starts": (1, -3), "ends": (10, -1), "axes": (2, 0)},
        lambda x: x[0:1, :, 1:4],
    ),
    "gather-embedding": Case(
        "gather", (floats(10, 4), index([[0, 9, 3], [3, 3, 1]])), {}, lambda w, i: F.embedding(i, w)
    ),
    "gather-negative": Case(
        "gather", (floats(3, 4, 5), index([-1, 0, 2, -4], np.int32)), {"axis": 1}, lambda x, i: x[:, i.long()]
    ),
    "gather-scalar-index": Case("gather", (floats(3, 4, 5), index(2)), {"axis": -1}, lambda x, i: x[..., 2]),
    "gather-index-select": Case(
        "gather", (ints(4, 3), index([2, 0], np.int32)), {"axis": 1}, lambda x, i: torch.index_select(x, 1, i)
    ),
    "gather_elements-0": Case(
        "gather_elements",
        (floats(3, 4), index([[0, 1, 2, 0], [2, 2, 1, 0]])),
        {},
        lambda x, i: torch.gather(x, 0, i),
    ),
    "gather_elements-smaller": Case(
        "gather_elements",
        (floats(3, 4), index([[3, -1], [0, 2], [-4, 1]], np.int32)),
        {"axis": 1},
        lambda x, i: torch.gather(x, 1, wrap(i, 4)),
    ),
    "gather_elements-last": Case(
        "gather_elements",
        (ints(2, 3, 4), index(np.arange(12).reshape(1, 2, 6) % 4)),
        {"axis": -1},
        lambda x, i: torch.gather(x, -1, i),
    ),
    "scatter-none": Case(
        "scatter",
        (floats(3, 4), index([[2, 0, 1, 1], [0, 1, 2, 0]]), floats(2, 4)),
        {},
        lambda x, i, u: torch.scatter(x, 0, i, u),
    ),
    "scatter-none-axis1": Case(
        "scatter",
        (ints(2, 5), index([[4, -5], [-1, 2]], np.int32), ints(2, 2)),
        {"axis": 1},
        lambda x, i, u: torch.scatter(x, 1, wrap(i, 5), u),
    ),
    "scatter-add": Case(
        "scatter",
        (floats(3, 4), index([[2, 2, 1, 1], [2, 1, 1, 0], [2, 2, 2, 2]]), floats(3, 4)),
        {"reduction": "add"},
        lambda x, i, u: torch.scatter_reduce(x, 0, i, u, "sum"),
        rtol=1e-6,
    ),
    "scatter-mul": Case(
        "scatter",
        (floats(2, 4), index([[0, 0, 3], [1, 1, 1]]), floats(2, 3)),
        {"axis": -1, "reduction": "mul"},
        lambda x, i, u: torch.scatter_reduce(x, -1, i, u, "prod"),
        rtol=1e-6,
    ),
    "scatter-max": Case(
        "scatter",
        (ints(3, 3), index([[0, 0, 0], [0, 1, 0]]), ints(2, 3)),
        {"reduction": "max"},
        lambda x, i, u: torch.scatter_reduce(x, 0, i, u, "amax"),
    ),
    "scatter-min": Case(
        "scatter",
        (floats(3, 3), index([[1, 1], [1, 1]]), floats(2, 2)),
        {"reduction": "min"},
        lambda x, i, u: torch.scatter_reduce(x, 0, i, u, "amin"),
    ),
    "pad-constant": Case(
        "pad", (floats(2, 3),), {"pads": (1, 0, 2, 3), "value": 1.5}, lambda x: F.pad(x, (0, 3, 1, 2), value=1.5)
    ),
    "pad-crop": Case("pad", (floats(4, 5),), {"pads": (-1, 2, 1, -3)}, lambda x: F.pad(x, (2, -3, -1, 1))),
    "pad-int": Case(
        "pad", (ints(3, 2),), {"pads": (0, 1, 2, 0), "value": 7.0}, lambda x: F.pad(x, (1, 0, 0, 2), value=7)
    ),
    "pad-reflect": Case(
        "pad",
        (floats(2, 3, 5, 6),),
        {"pads": (0, 0, 1, 2, 0, 0, 3, 1), "mode": "reflect"},
        lambda x: F.pad(x, (2, 1, 1, 3), mode="reflect"),
    ),
    "pad-edge": Case(
        "pad",
        (floats(2, 4, 3),),
        {"pads": (0, 3, 0, 0, 1, 2), "mode": "edge"},
        lambda x: F.pad(x, (0, 2, 3, 1), mode="replicate"),
    ),
    "squeeze-all": Case("squeeze", (floats(1, 3, 1, 2),), {}, lambda x: x.squeeze()),
    "squeeze-some": Case("squeeze", (floats(1, 3, 1, 2),), {"axes": (-2, 0)}, lambda x: x.squeeze((0, 2))),
    "squeeze-to-scalar": Case("squeeze", (ints(1),), {}, lambda x: x.squeeze()),
    "squeeze-nothing": Case("squeeze", (floats(2, 3),), {}, lambda x: x),
    "unsqueeze-front": Case("unsqueeze", (floats(3, 4),), {"axes": (0,)}, lambda x: x.unsqueeze(0)),
    "unsqueeze-two": Case("unsqueeze", (floats(3, 4),), {"axes": (0, 3)}, lambda x: x.unsqueeze(0).unsqueeze(3)),
    # -1 is position 3 of the rank-4 output; inserting 1 first leaves it there
    "unsqueeze-negative": Case("unsqueeze", (ints(3, 4),), {"axes": (-1, 1)}, lambda x: x.unsqueeze(1).unsqueeze(3)),
    "unsqueeze-scalar": Case("unsqueeze", (floats(),), {"axes": (-1,)}, lambda x: x.unsqueeze(0)),
    "flatten-all": Case("flatten", (floats(2, 3, 4),), {}, lambda x: torch.flatten(x)),
    "flatten-tail": Case("flatten", (floats(2, 3, 4),), {"start_axis": 1}, lambda x: torch.flatten(x, 1)),
    "flatten-middle": Case(
        "flatten", (ints(2, 3, 4, 5),), {"start_axis": 1, "end_axis": -2}, lambda x: torch.flatten(x, 1, -2)
    ),
    "flatten-scalar": Case("flatten", (floats(),), {}, lambda x: torch.flatten(x)),
    "tile-2d": Case("tile", (floats(2, 3),), {"repeats": (2, 3)}, lambda x: torch.tile(x, (2, 3))),
    "tile-zero": Case("tile", (floats(2, 1, 3),), {"repeats": (2, 2, 0)}, lambda x: torch.tile(x, (2, 2, 0))),
    "tile-int": Case(
        "tile",
        (
            ints(
                3,
            ),
        ),
        {"repeats": (4,)},
        lambda x: torch.tile(x, (4,)),
    ),
}

# One case per op, for the checks that need no more: low precision, oracle mode.
ONE_PER_OP = {
    case.op: name for name, case in reversed(CASES.items()) if case.rtol == 0 and case.arrays()[0].dtype == np.float32
}


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def assert_matches(got: list[np.ndarray], expected: tuple[torch.Tensor, ...], rtol: float = 0.0) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = e.numpy() if e.dtype != torch.bfloat16 else e.float().numpy()
        assert g.shape == e.shape
        if rtol:
            np.testing.assert_allclose(g, e, rtol=rtol)
        else:
            np.testing.assert_array_equal(g.astype(e.dtype), e)


def test_every_op_has_cases():
    assert set(MOVEMENT_OPS) == {case.op for case in CASES.values()} == set(ONE_PER_OP)


@pytest.mark.parametrize("name", CASES)
def test_reference_matches_torch(name):
    case = CASES[name]
    arrays = case.arrays()
    got = run_op(case.op, arrays, case.attrs)
    assert all(g.dtype == arrays[0].dtype for g in got)
    assert_matches(got, as_tuple(case.torch_fn(*map(torch.from_numpy, arrays))), case.rtol)


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16])
@pytest.mark.parametrize("op", MOVEMENT_OPS)
def test_low_precision_matches_torch(op, dtype):
    case = CASES[ONE_PER_OP[op]]
    torch_dtype = {DType.f16: torch.float16, DType.bf16: torch.bfloat16}[dtype]
    arrays = [a.astype(dtype.numpy) if a.dtype == np.float32 else a for a in case.arrays()]
    tensors = [
        torch.from_numpy(a.astype(np.float32)).to(torch_dtype) if a.dtype == dtype.numpy else torch.from_numpy(a)
        for a in arrays
    ]
    got = run_op(case.op, arrays, case.attrs)
    assert all(g.dtype == dtype.numpy for g in got)
    assert_matches([g.astype(np.float32) for g in got], as_tuple(case.torch_fn(*tensors)))


@pytest.mark.parametrize("op", MOVEMENT_OPS)
def test_oracle_mode_runs_in_f64(op):
    case = CASES[ONE_PER_OP[op]]
    arrays = case.arrays()
    got = run_op(case.op, arrays, case.attrs, oracle=True)
    assert all(g.dtype == np.float64 for g in got)
    tensors = [torch.from_numpy(a.astype(np.float64) if a.dtype == np.float32 else a) for a in arrays]
    assert_matches(got, as_tuple(case.torch_fn(*tensors)))


@pytest.mark.parametrize("name", CASES)
def test_text_form_round_trips(name):
    case = CASES[name]
    graph = build(case.op, case.arrays(), case.attrs)
    text = str(graph)
    assert f"= {case.op}(" in text
    assert str(ir.parse_graph(text)) == text


# -- hand-computed values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pads", "mode", "expected"),
    [
        ((-1, 2), "reflect", [1, 2, 3, 4, 3, 2]),  # crop [0], then mirror around the new edge 4
        ((2, -2), "edge", [0, 0, 0, 1, 2]),
        ((2, 1), "reflect", [2, 1, 0, 1, 2, 3, 4, 3]),
        ((1, -4), "constant", [0, 0]),
    ],
)
def test_pad_crops_before_it_pads(pads, mode, expected):
    """Values that onnxruntime's Pad gives for these pads."""
    x = np.arange(5, dtype=np.int32)
    (got,) = run_op("pad", [x], {"pads": pads, "mode": mode})
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int32))


def test_pad_bool_with_a_true_fill():
    x = np.array([[True, False]])
    (got,) = run_op("pad", [x], {"pads": (0, 1, 1, 0), "value": 1.0})
    np.testing.assert_array_equal(got, [[True, True, False], [True, True, True]])


def test_scatter_does_not_change_its_input():
    x = np.zeros((2, 2), np.float32)
    (got,) = run_op("scatter", [x, np.array([[1, 1]]), np.ones((1, 2), np.float32)], {"reduction": "add"})
    np.testing.assert_array_equal(got, [[0, 0], [1, 1]])
    np.testing.assert_array_equal(x, 0)


def test_scatter_add_combines_colliding_updates():
    x = np.array([10, 20, 30], np.int64)
    (got,) = run_op("scatter", [x, np.array([2, 2, -1, 0]), np.array([1, 2, 4, 8])], {"reduction": "add"})
    np.testing.assert_array_equal(got, [18, 20, 37])


@pytest.mark.parametrize(("op", "indices"), [("gather", [0, 3]), ("gather", [-4]), ("gather_elements", [[3]])])
def test_out_of_range_indices_fail_at_run_time(op, indices):
    x = np.zeros((3,), np.float32) if op == "gather" else np.zeros((3, 1), np.float32)
    with pytest.raises(InterpreterError, match=rf"{op}: indices must lie in \[-3, 3\)"):
        run_op(op, [x, np.array(indices, np.int64)], {})


@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    bounds=st.lists(st.tuples(st.integers(-8, 8), st.integers(-8, 8), st.integers(-3, 3).filter(bool)), max_size=3),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_slice_equals_python_slicing(shape, bounds, data):
    """ONNX Slice counts from the end and clamps as Python slicing does, except that a backward
    slice starting before the first element starts at it (ONNX clamps starts into [0, size - 1]
    going backwards; Python gives nothing; onnxruntime follows ONNX)."""
    bounds = bounds[: len(shape)]
    axes = data.draw(st.permutations(range(len(shape))))[: len(bounds)]
    x = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    starts, ends, steps = (tuple(b[k] for b in bounds) for k in range(3))
    (got,) = run_op("slice", [x], {"starts": starts, "ends": ends, "axes": tuple(axes), "steps": steps})
    index = [slice(None)] * len(shape)
    for axis, (start, end, step) in zip(axes, bounds):
        before_first = step < 0 and start < -shape[axis]
        index[axis] = slice(0 if before_first else start, end, step)
    np.testing.assert_array_equal(got, x[tuple(index)])


@pytest.mark.parametrize(
    ("starts", "ends", "expected"),
    [((-9,), (-20,), [0]), ((-9,), (INT64_MIN,), [0]), ((INT64_MAX,), (-9,), [4, 3, 2, 1, 0]), ((1,), (1,), [])],
)
def test_backward_slice_clamps_its_start_into_the_axis(starts, ends, expected):
    (got,) = run_op("slice", [np.arange(5, dtype=np.int32)], {"starts": starts, "ends": ends, "steps": (-1,)})
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int32))


def test_bf16_values_pass_through_exactly():
    x = np.array([1 / 3, -7.25, 3e38], dtype=ml_dtypes.bfloat16).reshape(3, 1)
    (got,) = run_op("tile", [x], {"repeats": (1, 2)})
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got.view(np.uint16), np.repeat(x, 2, axis=1).view(np.uint16))
