"""The pass manager: registration, pipeline text, instruments, verification, error notes."""

import dataclasses
import io

import numpy as np
import pytest

import ir
from ir import DType, Graph, GraphBuilder, ShapeError, VerificationError
from passes import PASSES, Instrument, Numerics, Pass, PassManager, parse_pipeline, register_pass
from passes.editing import keep
from passes.instruments import PassStatistics, PrintAfter
from passes.pipelines import default_pipeline


@register_pass
class NegateOutputs(Pass):
    """Test pass: negate every f32 output `times` times."""

    name = "test_negate_outputs"
    times: int = 1
    dtype: DType = DType.f32
    strict: bool = False

    def run(self, graph: Graph) -> Graph:
        builder = GraphBuilder(graph.name)
        builder.adopt_inputs(graph.inputs)
        for node in graph.nodes:
            keep(builder, graph, node, node.inputs)
        outputs = []
        for value in graph.outputs:
            for _ in range(self.times):
                value = builder.neg(value)
            outputs.append(value)
        return builder.build(*outputs)


@register_pass
class Breaks(Pass):
    """Test pass: returns a graph whose output nothing defines."""

    name = "test_breaks"

    def run(self, graph: Graph) -> Graph:
        return Graph(graph.name, graph.inputs, (ir.Value(graph.outputs[0].type),), graph.nodes, graph.constants)


@register_pass
class Raises(Pass):
    """Test pass: raises a ShapeError."""

    name = "test_raises"

    def run(self, graph: Graph) -> Graph:
        raise ShapeError("boom")


def tiny():
    b = GraphBuilder("tiny")
    x = b.input("x", (2,))
    return b.build(b.relu(x))


def test_passes_are_frozen_dataclasses_with_a_name_and_purpose():
    step = PASSES["test_negate_outputs"](times=2)
    assert dataclasses.is_dataclass(step) and step.numerics is Numerics.EXACT
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.times = 3
    assert NegateOutputs.purpose() == "Test pass: negate every f32 output `times` times."
    assert str(step) == "test_negate_outputs{times=2}" and str(PASSES["test_negate_outputs"]()) == "test_negate_outputs"


def test_pipeline_text_round_trips_with_typed_options():
    steps = parse_pipeline("prune_dead_nodes, test_negate_outputs{times=3,dtype=bf16,strict=true},prune_dead_nodes")
    assert [s.name for s in steps] == ["prune_dead_nodes", "test_negate_outputs", "prune_dead_nodes"]
    assert steps[1] == NegateOutputs(times=3, dtype=DType.bf16, strict=True)
    assert (
        ",".join(map(str, steps))
        == "prune_dead_nodes,test_negate_outputs{times=3,dtype=bf16,strict=true},prune_dead_nodes"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no_such_pass", "unknown pass 'no_such_pass'; passes: "),
        ("test_negate_outputs{times=two}", "option times='two' is not a valid int"),
        ("test_negate_outputs{strict=yes}", "option strict='yes' is not a valid bool"),
        ("test_negate_outputs{speed=3}", "has no option\\(s\\) \\['speed'\\]"),
        ("test_negate_outputs{times}", "needs a value"),
        ("prune_dead_nodes;cse", "cannot read the pipeline"),
    ],
)
def test_bad_pipeline_text_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pipeline(text)


def test_manager_runs_in_order_and_instruments_see_every_pass():
    stream = io.StringIO()
    stats = PassStatistics()
    manager = PassManager.from_text(
        "test_negate_outputs,test_negate_outputs{times=2}", instruments=[PrintAfter(stream=stream), stats]
    )
    result = manager.run(tiny())
    assert [n.op for n in result.nodes] == ["relu", "neg", "neg", "neg"]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(ir.run(result, [x])[0], -np.maximum(x, 0))
    printed = stream.getvalue()
    assert "# IR after pass 1: test_negate_outputs\n" in printed
    assert "# IR after pass 2: test_negate_outputs{times=2}\n" in printed
    assert [(r.nodes_before, r.nodes_after) for r in stats.records] == [(1, 2), (2, 4)]
    assert "nodes     2 -> 4" in stats.table()


def test_an_instrument_may_skip_a_pass():
    class SkipNegations(Instrument):
        def before_pass(self, step, graph):
            return step.name != "test_negate_outputs"

    result = PassManager.from_text("test_negate_outputs", instruments=[SkipNegations()]).run(tiny())
    assert [n.op for n in result.nodes] == ["relu"]


def test_verify_each_names_the_pass_that_broke_the_graph():
    with pytest.raises(VerificationError, match="after pass test_breaks: graph @tiny is invalid"):
        PassManager.from_text("test_breaks", verify_each=True).run(tiny())
    PassManager.from_text("test_breaks").run(tiny())  # not verified unless asked


def test_errors_raised_in_a_pass_say_which():
    with pytest.raises(ShapeError, match="boom") as error:
        PassManager.from_text("prune_dead_nodes,test_raises").run(tiny())
    assert "in pass test_raises" in error.value.__notes__


def test_default_pipelines_grow_with_the_level():
    assert default_pipeline("reference", 0) == []
    assert "prune_dead_nodes" in [p.name for p in default_pipeline("reference", 1)]
    with pytest.raises(ValueError, match="opt_level must be"):
        default_pipeline("reference", 7)
    with pytest.raises(ValueError, match="precision must be one of"):
        default_pipeline("reference", 2, precision="int4")


def test_o1_changes_no_value_and_o2_adds_the_rest():
    assert [str(p) for p in default_pipeline("reference", 1)] == [
        "canonicalize{exact_only=true}",
        "fold_constants",
        "cse",
        "prune_dead_nodes",
    ]
    assert all(p.numerics is Numerics.EXACT for p in default_pipeline("reference", 1))
    o2 = [str(p) for p in default_pipeline("reference", 2, precision="bf16")]
    assert o2[:2] == ["fuse_qdq", "canonicalize"] and o2[-1] == "fuse" and "lower_precision" in o2
