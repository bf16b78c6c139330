"""`irdump`: print a model's IR, verified, before and after passes, with a summary.

    irdump model.kiln                          # parse, verify and print a text-form graph
    irdump model.onnx                          # the imported IR of an ONNX model
    irdump my_model.py:make                    # make() returns (torch module, example inputs)
    irdump model.onnx -O2 --print-after-all    # the IR after every pass of the default pipeline
    irdump model.onnx --passes canonicalize,fold_constants --print-after fold_constants
    irdump model.onnx --target cpu --emit loop     # each kernel in kernel IR (also: llvm, asm)
    irdump model.onnx -O2 --precision int8-static --observer entropy   # + the quantization report
    irdump model.onnx --target cuda --emit cuda    # each kernel's CUDA C (also: loop, ptx), with
                                                   # ptxas's registers, shared memory and spills
    irdump model.onnx -O2 --target cuda --emulate race [--kernel K]
                                  # each kernel (or K) run in the CUDA emulator on random inputs:
                                  # OK, or the race / bounds / deadlock with its source lines, and
                                  # the largest error against the interpreter (compiler/emulate.py)

After the final IR come one summary line per pass (nodes before -> after, kernels, FLOPs,
bytes moved, time) and a summary of the final graph, all as `#` comments so that the output
of a .kiln input still parses. Exit status: 0 when all went well, 1 when the model is invalid,
a pass failed (the error on stderr) or an emulated kernel failed or missed the interpreter, 2 for
a bad command line or an unreadable file.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from compiler.errors import KilnError
from compiler.frontends import import_model
from compiler.irdump_quant import INT8_PRECISIONS, report_lines, with_report
from ir import Graph, print_graph, verify
from ir.summary import summarize
from passes import PassManager, parse_pipeline
from passes.instruments import PassStatistics, PrintAfter
from passes.observers import OBSERVERS
from passes.pipelines import default_pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irdump", description="Print a model's Kiln IR, verified, with a summary.")
    parser.add_argument("model", help="a .kiln text-form graph, an .onnx model, or FILE.py:FACTORY")
    passes = parser.add_mutually_exclusive_group()
    passes.add_argument("--passes", metavar="PIPELINE", help="passes to run, e.g. canonicalize,fold_constants")
    passes.add_argument("-O", dest="opt_level", type=int, choices=range(4), help="run the default pipeline at -O0..-O3")
    parser.add_argument("--target", default="reference", help="the target whose pipeline -O runs (default: reference)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16", *INT8_PRECISIONS),
        help="for -O pipelines; int8 ones print the quantization report (on random inputs)",
    )
    parser.add_argument(
        "--observer", default="minmax", choices=OBSERVERS, help="with --precision int8-static: the range observer"
    )
    parser.add_argument(
        "--calibration-sets", type=int, default=4, metavar="N", help="int8: random input sets to calibrate/measure on"
    )
    parser.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("--print-after", action="append", default=[], metavar="PASS", help="print the IR after PASS")
    parser.add_argument("--summary-only", action="store_true", help="print the summaries, not the final IR")
    parser.add_argument(
        "--emit",
        choices=sorted({form for forms in EMITTERS.values() for form in forms}),
        help="with --target cpu: each kernel as kernel IR, the LLVM module, or the host's assembly (loop, llvm, "
        "asm); with --target cuda: each kernel's scheduled kernel IR, CUDA C, or the module's PTX (loop, cuda, ptx), "
        "with the ptxas resource report",
    )
    parser.add_argument(
        "--arch",
        action="append",
        metavar="SM",
        help="with --target cuda: an architecture to compile for (repeatable; default sm_80 and sm_90; PTX: the last)",
    )
    parser.add_argument(
        "--emulate",
        nargs="?",
        const="plain",
        choices=("plain", "race", "bounds"),
        help="with --target cuda: run each kernel in the CUDA emulator (default mode plain; race: ThreadSanitizer, "
        "bounds: AddressSanitizer) on random inputs and compare it with the interpreter",
    )
    parser.add_argument(
        "--kernel", action="append", metavar="NAME", help="with --emulate: only this kernel (repeatable)"
    )
    parser.add_argument(
        "--max-constant-elements",
        type=int,
        default=None,
        metavar="N",
        help="elide the data of constants with more than N elements (default: all for .kiln, 16 otherwise)",
    )
    return parser


def load_model(spec: str) -> Graph:
    """The verified IR of a `.kiln` file, an `.onnx` file, or `FILE.py:FACTORY`."""
    head, separator, factory = spec.rpartition(":")
    if separator and head.endswith(".py"):
        module, example_inputs = _call_factory(Path(head), factory)
        graph = import_model(module, example_inputs).graph
    else:
        path = Path(spec)
        if path.suffix not in (".kiln", ".onnx"):
            raise ValueError(f"{path}: expected a .kiln or .onnx file, or FILE.py:FACTORY")
        if not path.is_file():
            raise FileNotFoundError(f"cannot read {path}: no such file")
        graph = import_model(path).graph
    verify(graph)
    return graph


def _call_factory(path: Path, factory: str) -> tuple[Any, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"cannot read {path}: no such file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, factory, None)
    if not callable(function):
        raise ValueError(f"{path} has no function {factory}() returning (module, example_inputs)")
    result = function()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError(f"{path}:{factory}() must return (module, example_inputs), got {type(result).__name__}")
    return result


def emit(graph: Graph, form: str, target: str = "cpu", arch: list[str] | None = None) -> str:
    """The code of a fused graph for `target` in `form` (one of `EMITTERS[target]`)."""
    return EMITTERS[target][form](graph, arch)


def _emit_cpu(form: str) -> Any:
    def emit_cpu(graph: Graph, _arch: Any) -> str:
        from backends.cpu import build_program
        from backends.llvm import compile_module
        from ir.loop import print_kernel

        program, kernels = build_program(graph)
        if form == "loop":
            return "\n".join(print_kernel(kernel) for kernel in kernels) + "\n"
        if form == "llvm":
            return program.code["llvm_ir"]
        return compile_module(program.code["llvm_ir"]).assembly

    return emit_cpu


def _emit_cuda(form: str) -> Any:
    def emit_cuda(graph: Graph, arch: list[str] | None) -> str:
        """Each kernel (scheduled kernel IR or CUDA C) followed by its launch and ptxas report per
        architecture, or the module's PTX followed by every kernel's report."""
        from backends.cuda import emit_kernel
        from backends.cuda.program import build_cuda_program, ptx, resources
        from ir.loop import print_kernel

        program, kernels = build_cuda_program(graph, arch)
        architectures = list(program.code["cubins"])
        reports = {name: resources(program, name) for name in architectures}

        def report(kernel: Any, launch: Any) -> str:
            template = program.code["templates"].get(kernel.name, "?")
            lines = [f"# {kernel.name}: {template}, grid {launch.grid}, block {launch.block}"]
            for name in architectures:
                r = reports[name][kernel.name]
                lines.append(
                    f"#   {name}: {r.registers} registers, {r.shared_bytes} bytes smem, {r.stack_bytes} bytes stack, "
                    f"{r.spill_stores}+{r.spill_loads} bytes spilled, {r.barriers} barriers"
                )
            return "\n".join(lines) + "\n"

        pairs = list(zip(kernels, program.launches, strict=True))
        if form == "ptx":
            return ptx(program.code["cuda_source"], architectures[-1]) + "".join(report(k, x) for k, x in pairs)
        printed = print_kernel if form == "loop" else emit_kernel
        return "\n".join(printed(kernel) + report(kernel, launch) for kernel, launch in pairs)

    return emit_cuda


def _emulate(graph: Graph, args: argparse.Namespace) -> int:
    """`--emulate`: one line per kernel, the emulator's report under a failed one; 1 when any failed."""
    if args.target != "cuda" or args.emit:
        print("irdump: --emulate needs --target cuda (and no --emit)", file=sys.stderr)
        return 2
    from backends.cuda.program import build_cuda_program
    from compiler.emulate import check_kernels

    if not any(node.op == "fused" for node in graph.nodes):
        graph = PassManager(parse_pipeline("fuse")).run(graph)
    try:
        program, _ = build_cuda_program(graph, args.arch)
        checks = check_kernels(graph, program, args.emulate, args.kernel)
    except ValueError as error:  # an unknown --kernel
        print(f"irdump: {error}", file=sys.stderr)
        return 2
    except KilnError as error:  # NVRTC or g++ missing or rejecting the module
        print(f"irdump: {args.model}: {error}", file=sys.stderr)
        return 1
    for check in checks:
        error = "-" if check.max_error is None else f"{check.max_error:.3g}"
        print(f"# emulate ({args.emulate}) {check.kernel}: {check.status}, max error {error} vs the interpreter, "
              f"{check.seconds:.2f} s")  # fmt: skip
        if check.message:
            print("\n".join(f"#   {line}" for line in check.message.splitlines()))
    return 0 if all(check.status == "OK" for check in checks) else 1


EMITTERS: dict[str, dict[str, Any]] = {
    "cpu": {form: _emit_cpu(form) for form in ("loop", "llvm", "asm")},
    "cuda": {form: _emit_cuda(form) for form in ("loop", "cuda", "ptx")},
}
"""What `--emit` can print, per compiled target."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        graph = load_model(args.model)
    except KilnError as error:  # before ValueError: some Kiln errors are ValueErrors too
        print(f"irdump: {args.model}: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"irdump: {error}", file=sys.stderr)
        return 2
    elide = args.max_constant_elements
    if elide is None and not args.model.endswith(".kiln"):
        elide = 16
    try:
        if args.passes is not None:
            steps = parse_pipeline(args.passes)
        elif args.opt_level is not None:
            steps = default_pipeline(args.target, args.opt_level, args.precision)
        else:
            steps = []
    except ValueError as error:
        print(f"irdump: {error}", file=sys.stderr)
        return 2
    steps, reports = with_report(steps, graph, args.calibration_sets, args.observer)
    statistics = PassStatistics()
    instruments = [statistics]
    if args.print_after_all or args.print_after:
        names = None if args.print_after_all else set(args.print_after)
        instruments.append(PrintAfter(names, stream=sys.stdout, max_constant_elements=elide))
    try:
        graph = PassManager(steps, instruments, verify_each=True).run(graph)
    except KilnError as error:
        notes = "".join(f"\n  ({note})" for note in getattr(error, "__notes__", []))
        print(f"irdump: {args.model}: {error}{notes}", file=sys.stderr)
        return 1
    if args.emulate:
        return _emulate(graph, args)
    if args.emit:
        forms = EMITTERS.get(args.target, {})
        if args.emit not in forms:
            shown = "; ".join(f"--target {target}: {', '.join(f)}" for target, f in EMITTERS.items())
            print(f"irdump: --emit needs --target cpu or cuda, each with its forms ({shown})", file=sys.stderr)
            return 2
        if not any(node.op == "fused" for node in graph.nodes):
            graph = PassManager(parse_pipeline("fuse")).run(graph)  # kernels are fused groups
        try:
            sys.stdout.write(emit(graph, args.emit, args.target, args.arch))
        except KilnError as error:  # NVRTC missing or rejecting a kernel, a kernel it cannot print
            print(f"irdump: {args.model}: {error}", file=sys.stderr)
            return 1
    elif not args.summary_only:
        sys.stdout.write(print_graph(graph, max_constant_elements=elide))
        print()
    for record in statistics.records:
        print(f"# {record}")
    print(f"# {summarize(graph)}")
    print(*report_lines(reports, args.calibration_sets), sep="\n", end="\n" if reports else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
