"""`compile`: a model in, a callable that computes the same function out.

    fast = compiler.compile(model, example_inputs=(x,), target="reference")
    y = fast(x)

The model goes through its frontend into the graph IR, then through the target's pipeline
(`passes`), then to the target's executor. Calls take numpy arrays or torch tensors and
return the same kind; shapes and dtypes are checked against the graph before anything runs.
A CPU call whose positional arrays or tensors fit the inputs exactly takes a short path
(`compiler.calls`: a few µs, torch tensors in and out without copies).
Targets: `reference` (the numpy interpreter: the oracle every other target is compared with),
`cpu` (kernels lowered to LLVM IR, compiled for the host, run by `runtime.CpuExecutor`) and
`cuda` (kernels printed as CUDA C, compiled by NVRTC to cubins, run by `runtime.CudaExecutor`).

Compiling for `cuda` needs NVRTC but no GPU: a GPU-less machine (CI) gets the program, its
cubins and the ptxas report, and can save them. The GPU is first needed at the first call,
which loads the program onto the device and raises `compiler.errors.CudaUnavailableError`
(no pycuda, no driver or no device) there. torch CUDA tensors go in and come out without
copies, on torch's current stream; numpy arrays and CPU tensors are copied in and out.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
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
from passes.observers import Calibration
from passes.pipelines import default_pipeline

TARGETS = ("reference", "cpu", "cuda")


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
    """Kernel name -> its kernel IR, printed (cpu), or its CUDA C source (cuda)."""
    executor: Any = None
    """What runs `program`; for cuda, made at the first call (it needs the GPU)."""
    make_executor: Callable[[int | None], Any] | None = field(default=None, repr=False)
    """How to make the executor later, given the CUDA device (None: torch's current, else 0)."""
    _short_call: Any = field(default=None, init=False, repr=False, compare=False)
    """The CPU target's `compiler.calls.CpuCall` (False where calls cannot take it), made at the
    first call."""

    def save(self, path: str) -> None:
        """Write the compiled program to one file; `compiler.load` (or `runtime.load_executor`,
        without the rest of Kiln) runs it."""
        if self.program is None:
            raise ValueError(f"the {self.target} target has no program to save; compile for target='cpu' or 'cuda'")
        self.program.save(path)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.target == "cpu" and not kwargs:
            short = self._short_call
            if short is None or (short and short.executor is not self.executor):
                short = self._short_call = self._make_short_call()
            outputs = short(args) if short else None
            if outputs is not None:
                return self.imported.unflatten_outputs(outputs)
        return self._call(args, kwargs)

    def _make_short_call(self) -> Any:
        """The short path of `compiler.calls`, or False where no call can take it."""
        from compiler.calls import CpuCall, positional_inputs

        if self.executor is None or not positional_inputs(self.imported.flatten_inputs, len(self.graph.inputs)):
            return False
        return CpuCall(self.executor, self.graph)

    def _call(self, args: tuple, kwargs: dict) -> Any:
        """Any call: flattened by the frontend, converted and checked against the graph."""
        given = self.imported.flatten_inputs(args, kwargs)
        cuda_tensor = next((g for g in given if is_torch_tensor(g) and g.device.type == "cuda"), None)
        if self.target == "cuda" and cuda_tensor is not None:
            return self.imported.unflatten_outputs(self._run_on_device(given, cuda_tensor.device))
        arrays = check_inputs(self.graph, given)
        outputs = ir.run(self.graph, arrays) if self.target == "reference" else self.load_executor().run(arrays)
        like = next((g for g in given if is_torch_tensor(g)), None)
        if like is not None:
            outputs = [to_torch(o, like) for o in outputs]
        return self.imported.unflatten_outputs(outputs)

    def load_executor(self, device: int | None = None) -> Any:
        """The executor, made now if it was left for later (cuda: loads the program onto `device`)."""
        if self.executor is None and self.make_executor is not None:
            self.executor = self.make_executor(device)
        return self.executor

    def _run_on_device(self, given: Sequence[Any], device: Any) -> list[Any]:
        """torch CUDA tensors in, torch CUDA tensors out, no copies: the kernels read the inputs'
        memory and write fresh tensors, queued on torch's current stream."""
        import torch

        from compiler.frontends.torch_graph import ir_dtype_to_torch, torch_dtype_to_ir

        tensors = [g if is_torch_tensor(g) else torch.as_tensor(to_numpy(g)) for g in given]
        check_types(self.graph, [(tuple(t.shape), torch_dtype_to_ir(t.dtype), str(t.dtype)) for t in tensors])
        tensors = [t.detach().to(device).contiguous() for t in tensors]  # no-ops for contiguous tensors there
        # The kernels' 16-byte vector copies (cp.async) assume buffers as aligned as an allocation:
        # a view that starts inside one (x[1:]) is copied.
        tensors = [t if t.data_ptr() % 16 == 0 else t.clone() for t in tensors]
        executor = self.load_executor(device.index)
        if executor.device != device.index:
            raise InputMismatchError(
                f"the model was loaded onto cuda:{executor.device}, and is called with tensors on {device}: "
                "move them, or compile again for that device"
            )
        types = [value.type for value in self.graph.outputs]
        outputs = [torch.empty(t.shape, dtype=ir_dtype_to_torch(t.dtype), device=device) for t in types]
        pointers = [t.data_ptr() for t in tensors], [t.data_ptr() for t in outputs]
        current = torch.cuda.current_stream(device)
        if current.cuda_stream == 0:  # torch's default stream is the legacy default stream: launch there
            executor.run_on_device(*pointers, stream=None)
            return outputs
        # Another torch stream: pycuda launches only on streams it made, so ours waits for torch's,
        # runs, and torch's waits for ours; the caching allocator learns the tensors were used there.
        ours = torch.cuda.ExternalStream(executor.driver.stream_handle(executor.stream), device=device)
        ours.wait_stream(current)
        executor.run_on_device(*pointers, stream=executor.stream)
        current.wait_stream(ours)
        for tensor in (*tensors, *outputs):
            tensor.record_stream(ours)
        return outputs


def check_inputs(graph: ir.Graph, given: Sequence[Any]) -> list[np.ndarray]:
    """The inputs as numpy arrays, or `InputMismatchError` naming the first that does not fit."""
    arrays = [to_numpy(item) for item in given]
    check_types(graph, [(a.shape, _ir_dtype(a.dtype), str(a.dtype)) for a in arrays])
    return arrays


def _ir_dtype(dtype: np.dtype) -> ir.DType | None:
    try:
        return ir.DType.from_numpy(dtype)
    except TypeError:
        return None


def check_types(graph: ir.Graph, given: Sequence[tuple[tuple[int, ...], ir.DType | None, str] | None]) -> None:
    """`InputMismatchError` naming the first input whose (shape, IR dtype or None, dtype as the
    caller names it) differs from the graph's, or when their number does."""
    if len(given) != len(graph.inputs):
        signature = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
        raise InputMismatchError(f"the model takes {len(graph.inputs)} input(s) ({signature}), got {len(given)}")
    for index, (value, (shape, dtype, dtype_name)) in enumerate(zip(graph.inputs, given)):
        expected = value.type
        got = None if dtype is None else ir.TensorType(tuple(shape), dtype)
        if got != expected:
            shown = got or f"{dtype_name}[{','.join(map(str, shape))}]"
            hint = (
                f"convert it with .astype({expected.dtype.numpy.name!r})"
                if got is not None and got.shape == expected.shape
                else "the shapes were fixed by the example inputs at compile time; recompile for new shapes"
            )
            raise InputMismatchError(f"input {index} (%{value.name}) expects {expected}, got {shown}: {hint}")


def compile(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    target: str = "reference",
    *,
    opt_level: int = 2,
    precision: str = "fp32",
    calibration: Sequence[Sequence[Any]] | Calibration | None = None,
    observer: str | None = None,
    keep_float: Sequence[str] = (),
    keep_ends: bool = True,
    debug: bool = False,
    threads: int | None = None,
    arch: str | Sequence[str] | None = None,
    autotune: bool | None = None,
    cuda_graph: bool = False,
    allow_tf32: bool = False,
) -> CompiledModel:
    """Compile `model` (a torch `nn.Module` with `example_inputs`, an ONNX `ModelProto` or path,
    a `.kiln` path, or an `ir.Graph`) for `target`, running the target's pipeline at
    `opt_level` (0-3) and `precision` ("fp32", "bf16", "fp16", or int8: "int8-weight", "int8-dynamic",
    "int8-static"; `calibration` is a list of input sets like `example_inputs` that static int8 takes its
    activation ranges from, by `observer` "minmax" (default), "percentile" or "entropy", or a
    `passes.observers.Calibration` with the sets and the observer's options; the int8 report is
    `.stats["quantization"]`; `keep_float` names ops ("conv", "matmul", ...) or nodes (by their source:
    torch's file:line, the ONNX node name) int8 must leave in float, beside what the policy keeps:
    softmax, norms and, while `keep_ends`, a model's first and last contraction). `debug` verifies the graph
    after every pass; `threads` sets the CPU target's worker count (default: up to the CPUs this
    process may use, and one, the calling thread, for a program whose first runs take only a few
    µs: `runtime.CpuExecutor`); `arch` the CUDA architectures to compile cubins for (default sm_80
    and sm_90); `autotune`
    times candidate GEMM tiles for the CPU target and caches the fastest on disk (default: on when
    KILN_AUTOTUNE=1; `backends.cpu.autotune`); `cuda_graph` makes the CUDA target replay one CUDA graph of
    all its launches per call, captured at the second call (`runtime.cuda.CudaExecutor`); `allow_tf32` lets
    the CUDA target run f32 GEMMs and convolutions on TF32 tensor cores (operands rounded to 10 mantissa bits,
    f32 accumulation: about 1e-3 relative error; the kernels that do are listed in `.stats["tf32"]`; other
    targets compute f32 in f32)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; Kiln has {', '.join(TARGETS)}")
    imported = import_model(model, example_inputs)
    ir.verify(imported.graph)
    statistics = PassStatistics()
    steps = default_pipeline(target, opt_level, precision)
    if example_inputs is not None:
        steps = with_example_inputs(steps, imported, example_inputs)
    reports: list[Any] = []
    steps = with_calibration(steps, imported, calibration, reports, observer)
    steps = with_float_kept(steps, keep_float, keep_ends)
    graph = PassManager(steps, instruments=[statistics], verify_each=debug).run(imported.graph)
    compiled = CompiledModel(imported, target, graph, {"passes": statistics.records})
    if reports:
        compiled.stats["quantization"] = reports[-1]
    if target != "reference" and opt_level < 2:  # compiled targets run kernels: fuse is what makes them
        compiled.graph = graph = PassManager(parse_pipeline("fuse")).run(graph)
    if target == "cpu":
        from backends.cpu import build_program
        from backends.cpu.autotune import autotuning
        from ir.loop import print_kernel
        from runtime import CpuExecutor

        with autotuning(autotune):
            compiled.program, kernels = build_program(graph)
        compiled.kernels = {k.name: print_kernel(k) for k in kernels}
        compiled.executor = CpuExecutor(compiled.program, threads=threads)
    elif target == "cuda":
        from backends.cuda import emit_kernel
        from backends.cuda.program import build_cuda_program, resources

        compiled.program, kernels = build_cuda_program(graph, arch, allow_tf32=allow_tf32)
        compiled.kernels = {k.name: emit_kernel(k) for k in kernels}
        compiled.stats["cuda"] = {name: resources(compiled.program, name) for name in compiled.program.code["cubins"]}
        templates = compiled.program.code["templates"]
        compiled.stats["tf32"] = sorted(name for name, template in templates.items() if template.endswith(".tf32"))
        compiled.make_executor = cuda_executor_factory(compiled.program, cuda_graph)
    return compiled


def cuda_executor_factory(program: Any, cuda_graph: bool = False) -> Callable[[int | None], Any]:
    """Makes the `runtime.CudaExecutor` of `program` when first needed: on `device`, else torch's
    current device when torch has initialised CUDA, else device 0; a device that none of the
    program's cubins fits gets its CUDA source compiled by NVRTC."""

    def make(device: int | None) -> Any:
        from backends.cuda.program import compile_for_arch
        from compiler.errors import CudaUnavailableError
        from runtime.cuda import CudaExecutor
        from runtime.cuda import CudaUnavailableError as RuntimeCudaUnavailableError

        if device is None:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                device = torch.cuda.current_device()
        try:
            return CudaExecutor(program, device=device, compile_source=compile_for_arch, cuda_graph=cuda_graph)
        except RuntimeCudaUnavailableError as error:
            raise CudaUnavailableError(str(error)) from error

    return make


def with_example_inputs(steps: list[Pass], imported: ImportedModel, example_inputs: Sequence[Any]) -> list[Pass]:
    """Hand the example inputs to the passes that measure on them (an `example_inputs` option:
    lower_precision's range check and error report)."""
    arrays = check_inputs(imported.graph, imported.flatten_inputs(tuple(example_inputs), {}))
    return [
        dataclasses.replace(step, example_inputs=(arrays,)) if _has_option(step, "example_inputs") else step
        for step in steps
    ]


def _has_option(step: Pass, option: str) -> bool:
    """Whether the pass `step` has the option (dataclass field) `option`: how a compile option finds
    the passes it is for."""
    return option in {f.name for f in dataclasses.fields(step)}


def with_calibration(
    steps: list[Pass],
    imported: ImportedModel,
    calibration: Sequence[Sequence[Any]] | Calibration | None,
    reports: list[Any],
    observer: str | None = None,
) -> list[Pass]:
    """Hand the calibration input sets, the observer, and a list to put its report in, to the quantize pass."""
    if not isinstance(calibration, Calibration) and calibration is not None:
        calibration = Calibration(tuple(calibration), observer or "minmax")
    elif isinstance(calibration, Calibration) and observer is not None:
        calibration = dataclasses.replace(calibration, observer=observer)
    elif calibration is None and observer is not None:
        raise ValueError("observer= chooses how calibration= inputs give ranges: pass calibration=[inputs, ...] too")
    options = (
        {"observer": calibration.observer, "percentile": calibration.percentile} if calibration is not None else {}
    )
    sets = None
    if calibration is not None:
        sets = tuple(
            check_inputs(imported.graph, imported.flatten_inputs(tuple(inputs), {})) for inputs in calibration.sets
        )
    takes = [_has_option(step, "calibration") for step in steps]
    if sets is not None and not any(takes):
        raise ValueError("calibration= is for int8 precisions (precision='int8-static' takes its ranges from it)")
    return [
        dataclasses.replace(step, calibration=sets, reports=reports, **options) if taken else step
        for step, taken in zip(steps, takes)
    ]


def with_float_kept(steps: list[Pass], keep_float: Sequence[str], keep_ends: bool) -> list[Pass]:
    """The quantize pass told which ops and nodes the user keeps in float, and whether a model's
    first and last contraction stay float too."""
    if isinstance(keep_float, str):
        keep_float = (keep_float,)
    ops = tuple(name for name in keep_float if name in ir.OPS)
    nodes = tuple(name for name in keep_float if name not in ir.OPS)
    takes = [_has_option(step, "keep_first_last") for step in steps]
    if (keep_float or not keep_ends) and not any(takes):
        raise ValueError("keep_float= and keep_ends= are for int8 precisions (precision='int8-...')")
    return [
        dataclasses.replace(
            step,
            keep_ops=(*step.keep_ops, *ops),
            keep_nodes=(*step.keep_nodes, *nodes),
            keep_first_last=step.keep_first_last and keep_ends,
        )
        if taken
        else step
        for step, taken in zip(steps, takes, strict=True)
    ]


def load(path: str, threads: int | None = None, cuda_graph: bool = False) -> CompiledModel:
    """A model saved with `CompiledModel.save`, ready to call (inputs by position; one output,
    or a tuple of them: the torch output structure is not saved). `threads` and `cuda_graph` are
    `compile`'s options of the CPU and CUDA targets."""
    from runtime import CpuExecutor
    from runtime import load as load_program

    program = load_program(path)
    if program.target == "cuda":
        executor, make_executor = None, cuda_executor_factory(program, cuda_graph)
    else:
        executor, make_executor = CpuExecutor(program, threads=threads), None
    builder = ir.GraphBuilder(to_identifier(program.name))
    inputs = [
        builder.input(to_identifier(spec.name), spec.shape, ir.DType.from_numpy(spec.numpy_dtype))
        for spec in program.input_specs
    ]
    signature = builder.build(*inputs)  # the inputs alone: what calls are checked against
    imported = ImportedModel(signature, lambda args, kwargs: list(args), unflatten_single_or_tuple)
    return CompiledModel(imported, program.target, signature, program=program, executor=executor,
                         make_executor=make_executor)  # fmt: skip
