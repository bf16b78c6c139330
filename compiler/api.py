"""`compile`: a model in, a callable that computes the same function out.

    fast = compiler.compile(model, example_inputs=(x,), target="reference")
    y = fast(x)

The model goes through its frontend into the graph IR, then through the target's pipeline
(`passes`), then to the target's executor. Calls take numpy arrays or torch tensors and
return the same kind; shapes and dtypes are checked against the graph before anything runs.
Targets: `reference` (the numpy interpreter: the oracle every other target is compared with)
and `cpu` (kernels lowered to LLVM IR, compiled for the host, run by `runtime.CpuExecutor`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ir
from compiler.errors import InputMismatchError
from compiler.frontends import ImportedModel, import_model, unflatten_single_or_tuple
from compiler.tensors import is_torch_tensor, to_numpy, to_torch
from ir.graph import to_identifier
from passes import Pass, PassManager, parse_pipeline
from passes.instruments import PassStatistics
from passes.pipelines import default_pipeline

TARGETS = ("reference", "cpu")


@dataclass
class CompiledModel:
    """A compiled model: call it like the original."""

    imported: ImportedModel
    """The model as its frontend imported it (`imported.graph` is the graph before passes)."""
    target: str
    graph: ir.Graph
    """The graph the target runs, after the pipeline."""
    stats: dict[str, Any] = field(default_factory=dict)
    """`passes`: one `PassRecord` per pass run (nodes before/after, kernels, FLOPs, time)."""
    program: Any = None
    """The `runtime.Program` a compiled (non-reference) target runs."""
    kernels: dict[str, str] = field(default_factory=dict)
    """Kernel name -> its kernel IR, printed."""
    executor: Any = None

    def save(self, path: str) -> None:
        """Write the compiled program to one file; `compiler.load` (or `runtime.load_executor`,
        without the rest of Kiln) runs it."""
        if self.program is None:
            raise ValueError(f"the {self.target} target has no program to save; compile for target='cpu'")
        self.program.save(path)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        given = self.imported.flatten_inputs(args, kwargs)
        arrays = check_inputs(self.graph, given)
        outputs = ir.run(self.graph, arrays) if self.executor is None else self.executor.run(arrays)
        like = next((g for g in given if is_torch_tensor(g)), None)
        if like is not None:
            outputs = [to_torch(o, like) for o in outputs]
        return self.imported.unflatten_outputs(outputs)


def check_inputs(graph: ir.Graph, given: Sequence[Any]) -> list[np.ndarray]:
    """The inputs as numpy arrays, or `InputMismatchError` naming the first that does not fit."""
    if len(given) != len(graph.inputs):
        signature = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
        raise InputMismatchError(f"the model takes {len(graph.inputs)} input(s) ({signature}), got {len(given)}")
    arrays = []
    for index, (value, item) in enumerate(zip(graph.inputs, given)):
        array = to_numpy(item)
        expected = value.type
        try:
            got = ir.TensorType(array.shape, ir.DType.from_numpy(array.dtype))
        except TypeError:
            got = None
        if got != expected:
            shown = got or f"{array.dtype}[{','.join(map(str, array.shape))}]"
            hint = (
                f"convert it with .astype({expected.dtype.numpy.name!r})"
                if got is not None and got.shape == expected.shape
                else "the shapes were fixed by the example inputs at compile time; recompile for new shapes"
            )
            raise InputMismatchError(f"input {index} (%{value.name}) expects {expected}, got {shown}: {hint}")
        arrays.append(array)
    return arrays


def compile(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    target: str = "reference",
    *,
    opt_level: int = 2,
    precision: str = "fp32",
    debug: bool = False,
    threads: int | None = None,
) -> CompiledModel:
    """Compile `model` (a torch `nn.Module` with `example_inputs`, an ONNX `ModelProto` or path,
    a `.kiln` path, or an `ir.Graph`) for `target`, running the target's pipeline at
    `opt_level` (0-3) and `precision` ("fp32", "bf16", "fp16"). `debug` verifies the graph
    after every pass; `threads` sets the CPU target's worker count (default: the CPUs this process
    may use)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; Kiln has {', '.join(TARGETS)}")
    imported = import_model(model, example_inputs)
    ir.verify(imported.graph)
    statistics = PassStatistics()
    steps = default_pipeline(target, opt_level, precision)
    if example_inputs is not None:
        steps = with_example_inputs(steps, imported, example_inputs)
    graph = PassManager(steps, instruments=[statistics], verify_each=debug).run(imported.graph)
    compiled = CompiledModel(imported, target, graph, {"passes": statistics.records})
    if target == "cpu":
        from backends.cpu import build_program
        from ir.loop import print_kernel
        from runtime import CpuExecutor

        if opt_level < 2:  # the CPU target runs kernels: fuse is what makes them
            graph = PassManager(parse_pipeline("fuse")).run(graph)
            compiled.graph = graph
        compiled.program, kernels = build_program(graph)
        compiled.kernels = {k.name: print_kernel(k) for k in kernels}
        compiled.executor = CpuExecutor(compiled.program, threads=threads)
    return compiled


def with_example_inputs(steps: list[Pass], imported: ImportedModel, example_inputs: Sequence[Any]) -> list[Pass]:
    """Hand the example inputs to the passes that measure on them (an `example_inputs` option:
    lower_precision's range check and error report)."""
    arrays = check_inputs(imported.graph, imported.flatten_inputs(tuple(example_inputs), {}))
    return [
        dataclasses.replace(step, example_inputs=(arrays,))
        if "example_inputs" in {f.name for f in dataclasses.fields(step)}
        else step
        for step in steps
    ]


def load(path: str, threads: int | None = None) -> CompiledModel:
    """A model saved with `CompiledModel.save`, ready to call (inputs by position; one output,
    or a tuple of them: the torch output structure is not saved)."""
    from runtime import CpuExecutor
    from runtime import load as load_program

    program = load_program(path)
    builder = ir.GraphBuilder(to_identifier(program.name))
    inputs = [
        builder.input(to_identifier(spec.name), spec.shape, ir.DType.from_numpy(spec.numpy_dtype))
        for spec in program.input_specs
    ]
    signature = builder.build(*inputs)  # the inputs alone: what calls are checked against
    imported = ImportedModel(signature, lambda args, kwargs: list(args), unflatten_single_or_tuple)
    return CompiledModel(imported, program.target, signature, program=program,
                         executor=CpuExecutor(program, threads=threads))  # fmt: skip
