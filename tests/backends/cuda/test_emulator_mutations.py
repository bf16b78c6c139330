"""Mutation checks: a correct GEMM or attention kernel's CUDA C, broken on purpose, must be caught by
the emulator (runtime/cuda_emulator.py):

- every `__syncthreads` of the tensor-core and FMA GEMMs and of the attention kernel, dropped in
  turn: a data race (race mode), both source lines named; attention's second barrier too, whose
  two sides only lanes of one warp touch with the tile sum's shuffles between them (the
  emulator's shuffles order no memory for ThreadSanitizer, as the device's order none);
- a global index shifted by one: past the end, an out-of-bounds load or store (bounds mode, naming
  the parameter and the element); on a `cp.async` source, a misaligned copy (any mode), as the
  device faults;
- fragment registers swapped in a `kiln_mma_*` or `kiln_ldmatrix_*` call, or an ldmatrix row
  address moved: a wrong answer against the graph interpreter (plain mode).

The unbroken kernels pass the same checks (tests/backends/cuda/test_emulator_kernels.py), so each
failure is the mutation's. The edits find what they change by the prelude's calls and the printer's
parameter names (`in_x0`, `out00`), not by a template's internal variable names.
"""

from __future__ import annotations

import re

import pytest

import ir
from ir import DType, Graph
from passes import make_pass
from runtime.cuda_emulator import EmulatedKernelError, KernelBoundsError, KernelRaceError, emulator_unavailable
from tests.backends.attention_cases import attention_graph
from tests.backends.cuda.emulated import (
    emulation_program,
    gemm_graph,
    graph_inputs,
    mutated,
    run_emulated,
    small_gemm_tiles,
)
from tests.backends.lowering.lowered import assert_close

pytestmark = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")


def _program(*graphs: Graph, template: str):
    fused = [make_pass("fuse").run(graph) for graph in graphs]
    program = emulation_program(fused, small_gemm_tiles)
    assert set(program.code["templates"].values()) == {template}
    return program, fused, [graph_inputs(graph) for graph in graphs]


def in_kernel(source: str, kernel: str, edit) -> str:
    """`source` with `edit` applied to the code of `kernel` only: from its signature (not the
    kernel-IR comment above it, which reads alike) to the next kernel's comment."""
    start = source.index(f" {kernel}(\n")
    end = source.find("// Kiln kernel", start)
    end = len(source) if end < 0 else end
    return source[:start] + edit(source[start:end]) + source[end:]


def without_barrier(which: int):
    """An edit that drops the `which`-th `__syncthreads();` (0-based) of a kernel."""

    def edit(code: str) -> str:
        found = [m.start() for m in re.finditer(re.escape("__syncthreads();"), code)]
        assert len(found) > which, f"the kernel has {len(found)} barrier(s)"
        return code[: found[which]] + "/* barrier dropped */" + code[found[which] + len("__syncthreads();") :]

    return edit


def shift_index(array: str, by: int = 1, within: str = ""):
    """An edit that adds `by` to the index of every access `array[...]` in a kernel's code (on the
    lines that contain `within`)."""

    def edit(code: str) -> str:
        pieces, start = [], 0
        for access in re.finditer(rf"\b{re.escape(array)}\[", code):
            line = code[code.rfind("\n", 0, access.start()) + 1 : code.find("\n", access.end())]
            if within not in line:
                continue
            depth, end = 1, access.end()
            while depth:  # to the matching bracket
                depth += {"[": 1, "]": -1}.get(code[end], 0)
                end += 1
            pieces += [code[start : end - 1], f" + {by}"]
            start = end - 1
        assert pieces, f"no access to {array}"
        return "".join(pieces) + code[start:]

    return edit


def _arguments(text: str) -> list[str]:
    """A C call's argument list split at its top-level commas."""
    arguments, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            arguments.append(current.strip())
            current = ""
        else:
            current += char
    return [*arguments, current.strip()]


def swap_arguments(function: str, first: int, second: int):
    """An edit that swaps arguments `first` and `second` of every call of `function`."""

    def edit(code: str) -> str:
        def swap(call: re.Match) -> str:
            arguments = _arguments(call[1])
            arguments[first], arguments[second] = arguments[second], arguments[first]
            return f"{function}({', '.join(arguments)});"

        changed, count = re.subn(rf"\b{re.escape(function)}\(([^;]*)\);", swap, code)
        assert count, f"no call of {function}"
        return changed

    return edit


def _broken(program, edit):
    (kernel,) = program.code["templates"]
    return kernel, mutated(program, lambda source: in_kernel(source, kernel, edit))


# -- a dropped barrier: a race ---------------------------------------------------------------------

RACES = {
    "gemm.mma": (gemm_graph(40, 24, 20, DType.f16), 1),
    "gemm.fma": (gemm_graph(40, 24, 20, DType.f32), 1),
    # 40 keys are two key tiles: the next tile's loads overwrite what this one still reads.
    "attention.fma": (attention_graph(7, 40, 8, DType.f16, False, None), 3),
}
"""Template -> (graph, how many barriers its kernel has): the test below drops each in turn."""


@pytest.mark.parametrize(
    ("template", "barrier"),
    [("gemm.mma", 0), ("gemm.fma", 0), ("attention.fma", 0), ("attention.fma", 1), ("attention.fma", 2)],
)
def test_a_dropped_barrier_is_reported_as_a_race_naming_both_lines(template, barrier):
    program, fused, inputs = _program(RACES[template][0], template=template)
    kernel, broken = _broken(program, without_barrier(barrier))
    race = rf"data race in kernel {kernel}: .*kiln_module\.cu:\d+ `.*_tile0\["
    with pytest.raises(KernelRaceError, match=race) as error:
        run_emulated(broken, fused, inputs, "race")
    assert len(re.findall(r"kiln_module\.cu:\d+ `", str(error.value).splitlines()[0])) == 2


@pytest.mark.parametrize("template", list(RACES))
def test_the_race_checks_drop_every_barrier_of_the_kernels(template):
    """A template that gains or loses a barrier must update RACES (and the drops above)."""
    graph, barriers = RACES[template]
    program, _, _ = _program(graph, template=template)
    assert program.code["cuda_source"].count("__syncthreads();") == barriers


# -- an index shifted by one: a bounds error, or a misaligned copy ---------------------------------


def test_a_gemm_load_shifted_past_the_end_is_reported_in_bounds_mode():
    """The FMA GEMM stages x [40, 20] with plain loads: one element on, the last reads x[800]."""
    program, fused, inputs = _program(gemm_graph(40, 24, 20, DType.f32), template="gemm.fma")
    kernel, broken = _broken(program, shift_index("in_x0"))
    with pytest.raises(
        KernelBoundsError,
        match=rf"out-of-bounds read in kernel {kernel}: parameter 0 \(input x: float32\[40,20\]\) at flat element "
        r"800 of 800, at kiln_module\.cu:\d+ `.*in_x0\[",
    ):
        run_emulated(broken, fused, inputs, "bounds")


@pytest.mark.parametrize(
    ("graph", "template", "shape"),
    [(gemm_graph(40, 24, 20, DType.f16), "gemm.mma", "float16[40,24]"),
     (attention_graph(33, 33, 16, DType.bf16, True, None), "attention.fma", "bfloat16[2,2,33,16]")],
    ids=["gemm.mma", "attention.fma"],
)  # fmt: skip
def test_a_store_shifted_past_the_end_is_reported_in_bounds_mode(graph, template, shape):
    program, fused, inputs = _program(graph, template=template)
    kernel, broken = _broken(program, shift_index("out00"))
    size = graph.outputs[0].type.numel
    with pytest.raises(
        KernelBoundsError,
        match=rf"out-of-bounds write in kernel {kernel}: parameter {len(graph.inputs)} \(output \w+_out0: "
        rf"{re.escape(shape)}\) at flat element {size} of {size}, at kiln_module\.cu:\d+ `out00\[",
    ):
        run_emulated(broken, fused, inputs, "bounds")


def test_a_cp_async_source_shifted_by_one_element_is_a_misaligned_copy():
    program, fused, inputs = _program(gemm_graph(40, 24, 20, DType.f16), template="gemm.mma")
    assert "kiln_cp_async<" in program.code["cuda_source"]
    kernel, broken = _broken(program, shift_index("in_x0"))
    with pytest.raises(EmulatedKernelError, match=rf"{kernel}.*cp\.async of \d+ bytes at a misaligned address"):
        run_emulated(broken, fused, inputs)


# -- a wrong fragment register or row: a wrong answer ----------------------------------------------


def swap_fragment_registers(operand: str, first: int, second: int):
    """An edit that swaps registers `first` and `second` of `operand` ("a", "b" or "c") in every
    `kiln_mma_m16n8k16_*_x4(d0..d3, A..., B..., c0..c3)` call, the PTX ISA's operand order. A and B
    come as 8 and 4 registers of one f16/bf16 each, or packed two to a register (4 and 2)."""

    def edit(code: str) -> str:
        def swap(call: re.Match) -> str:
            arguments = _arguments(call[2])
            a_registers = (len(arguments) - 8) * 2 // 3  # A has twice B's registers; D and C four each
            start = {"a": 4, "b": 4 + a_registers, "c": len(arguments) - 4}[operand]
            i, j = start + first, start + second
            arguments[i], arguments[j] = arguments[j], arguments[i]
            return f"{call[1]}({', '.join(arguments)});"

        changed, count = re.subn(r"\b(kiln_mma_m16n8k16_\w+_x4)\(([^;]*)\);", swap, code)
        assert count, "no tensor-core call"
        return changed

    return edit


MUTATIONS = {
    "mma: A's first two registers swapped": swap_fragment_registers("a", 0, 1),
    "mma: A's first and third registers swapped": swap_fragment_registers("a", 0, 2),
    "mma: B's first two registers swapped": swap_fragment_registers("b", 0, 1),
    "mma: two accumulators swapped": swap_fragment_registers("c", 0, 1),
    "ldmatrix: the first two registers of A swapped": swap_arguments("kiln_ldmatrix_x4", 0, 1),
    # (Not the copies into the tile: moved together with the reads, the padding would absorb them.)
    "ldmatrix: A's rows read one 16-byte chunk on": shift_index("a_tile0", 8, within="kiln_ldmatrix"),
}


def test_a_wrong_fragment_register_or_row_gives_a_wrong_answer():
    """One program: an untouched f16 GEMM, then a copy per mutation, each broken its own way."""
    graphs = [gemm_graph(40, 24, 20, DType.f16) for _ in range(1 + len(MUTATIONS))]
    program, fused, inputs = _program(*graphs, template="gemm.mma")
    kernels = list(program.code["templates"])
    source = program.code["cuda_source"]
    for kernel, edit in zip(kernels[1:], MUTATIONS.values(), strict=True):
        source = in_kernel(source, kernel, edit)
    broken = mutated(program, lambda _: source)
    results = run_emulated(broken, fused, inputs)
    (expected,) = ir.run(graphs[0], inputs[0])
    assert_close(results[0][0], expected, DType.f16, "the untouched GEMM")
    for what, (got,) in zip(MUTATIONS, results[1:], strict=True):
        with pytest.raises(AssertionError, match="differ beyond the tolerance"):
            assert_close(got, expected, DType.f16, what)
