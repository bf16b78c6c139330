"""The CUDA executor's fixed plan (`runtime.cuda`): which cubin a device loads, how constants are
packed into one allocation, and the launch table, every kernel's argument pointers known once the
program is loaded but for the inputs' and outputs' slots, patched per run."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runtime.errors import ProgramError
from runtime.program import Program

ALIGNMENT = 256
"""Bytes: what cudaMalloc guarantees, so every constant starts as aligned as its own allocation would."""

_ARCH = re.compile(r"sm_(\d+)(\d)([a-z]?)")


def select_architecture(available: Iterable[str], capability: tuple[int, int]) -> str | None:
    """The cubin architecture to load on a device of compute `capability`: its own, else the
    newest of the same major and an older minor (cubins run there; "sm_90a" only on sm_90);
    None when none fits."""
    major, minor = capability
    best: tuple[tuple[int, int], str] | None = None
    for arch in available:
        found = _ARCH.fullmatch(arch)
        if found is None or int(found[1]) != major:
            continue
        arch_minor, specific = int(found[2]), bool(found[3])
        if arch_minor == minor or (arch_minor < minor and not specific):
            rank = (arch_minor, 0 if specific else 1)  # the plain cubin over an "a" one: same code, portable
            if best is None or rank > best[0]:
                best = (rank, arch)
    return None if best is None else best[1]


def pack(sizes: Sequence[int], alignment: int = ALIGNMENT) -> tuple[list[int], int]:
    """Offsets that place `sizes` one after another, each on an `alignment` boundary, and the total."""
    offsets, top = [], 0
    for size in sizes:
        offsets.append(top)
        top += -(-size // alignment) * alignment
    return offsets, top


@dataclass(frozen=True)
class LaunchEntry:
    """One launch, ready but for the per-run pointers: `pointers` holds the fixed ones (constants,
    intermediates) and 0 where `patches` (position, slot) put a run's input or output."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    pointers: tuple[int, ...]
    patches: tuple[tuple[int, int], ...]

    def arguments(self, slots: Sequence[int]) -> list[int]:
        pointers = list(self.pointers)
        for position, slot in self.patches:
            pointers[position] = slots[slot]
        return pointers


def slot_buffers(program: Program) -> tuple[int, ...]:
    """The buffers whose addresses change per run, in slot order: the inputs, then each buffer of
    kind output once (an output listed twice is written once and copied)."""
    fresh = dict.fromkeys(i for i in program.outputs if program.buffers[i].kind == "output")
    return (*program.inputs, *fresh)


def launch_table(program: Program, fixed: dict[int, int]) -> list[LaunchEntry]:
    """Every launch of `program` with its argument pointers: `fixed` gives the address of each
    constant and intermediate buffer; inputs and outputs become patches of their slot."""
    slot_of = {buffer: slot for slot, buffer in enumerate(slot_buffers(program))}
    table = []
    for launch in program.launches:
        if launch.grid is None or launch.block is None:
            raise ProgramError(f"launch of {launch.kernel!r} has no grid and block: not a CUDA program")
        pointers = tuple(fixed.get(i, 0) for i in launch.args)
        patches = tuple((p, slot_of[i]) for p, i in enumerate(launch.args) if i in slot_of)
        table.append(LaunchEntry(launch.kernel, launch.grid, launch.block, launch.shared_bytes, pointers, patches))
    return table
