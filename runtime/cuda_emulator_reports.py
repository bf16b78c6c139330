"""What a failed emulated launch reports (runtime/cuda_emulator.py): the errors, and the sanitizer
output of a race or bounds run turned into one that names the kernel, the source lines and, for an
out-of-bounds access, the buffer and element."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.cuda import CudaDriverError
from runtime.program import describe_array

if TYPE_CHECKING:
    from runtime.cuda_emulator import KernelSignature

MODULE_FILE = "kiln_module.cu"
"""The module's file name in a build (sanitizer reports name ./kiln_module.cu:LINE)."""


class EmulatedKernelError(CudaDriverError):
    """A kernel failed under emulation; the message names the kernel and what went wrong."""


class KernelRaceError(EmulatedKernelError):
    """A data race between threads of a block (race mode): the message quotes both source lines."""


class KernelBoundsError(EmulatedKernelError):
    """An access outside a parameter buffer (bounds mode): kernel, parameter, index and line."""


class KernelDeadlockError(EmulatedKernelError):
    """A barrier or warp shuffle not reached by every thread, or a launch that hung."""


_FRAME = re.compile(r"#\d+ (?:0x[0-9a-f]+ in )?(\S+) \S*?" + re.escape(MODULE_FILE) + r":(\d+)")


def classify(message: str) -> EmulatedKernelError:
    """The launcher's own failure (deadlock or timeout) as an error."""
    return (
        KernelDeadlockError(message)
        if "deadlock" in message or "waited at" in message
        else EmulatedKernelError(message)
    )


def report(signature: KernelSignature, code: int, stderr: str, executable: Path) -> EmulatedKernelError:
    found = re.search(r"kiln-emulator: (kernel .*)", stderr)
    if found:
        return classify(found[1])
    source = _module_lines(executable)
    lines = []
    for frame in _FRAME.finditer(stderr):
        number = int(frame[2])
        text = source[number - 1].strip() if 0 < number <= len(source) else "?"
        lines.append(f"{MODULE_FILE}:{number} `{text}`")
    report = stderr[stderr.find("=====") :][:3000]
    if "ThreadSanitizer: data race" in stderr:
        first, second = lines[0] if lines else "?", _second_access(stderr, source)
        return KernelRaceError(
            f"data race in kernel {signature.name}: two threads of a block access the same memory with no "
            f"__syncthreads between them, at {first} and at {second}; add the missing barrier\n{report}"
        )
    if "AddressSanitizer" in stderr:
        return KernelBoundsError(f"{_bounds_message(signature, stderr, lines)}\n{report}")
    return EmulatedKernelError(f"kernel {signature.name} failed under emulation (exit {code}):\n{stderr[-4000:]}")


def _second_access(stderr: str, source: list[str]) -> str:
    """The source line of TSan's 'Previous ...' access (the other side of the race)."""
    previous = stderr[stderr.find("Previous") :]
    frame = _FRAME.search(previous)
    if frame is None:
        return "?"
    number = int(frame[2])
    return f"{MODULE_FILE}:{number} `{source[number - 1].strip() if 0 < number <= len(source) else '?'}`"


def _bounds_message(signature: KernelSignature, stderr: str, lines: list[str]) -> str:
    access = re.search(r"(READ|WRITE) of size (\d+) at (0x[0-9a-f]+)", stderr)
    region = re.search(r"located \d+ bytes [\w ]+? (\d+)-byte region \[(0x[0-9a-f]+),", stderr)
    bases = {int(m[2], 16): int(m[1]) for m in re.finditer(r"kiln-emulator: param (\d+) at (0x[0-9a-f]+)", stderr)}
    shared = re.search(r"kiln-emulator: dynamic shared memory at (0x[0-9a-f]+)", stderr)
    where = lines[0] if lines else "an unknown line"
    what = access[1].lower() if access else "access"
    if access and region and shared and int(region[2], 16) == int(shared[1], 16):
        return (
            f"out-of-bounds {what} in kernel {signature.name}: dynamic shared memory ({region[1]} bytes) at byte "
            f"{int(access[3], 16) - int(region[2], 16)}, at {where}"
        )
    if access and region and int(region[2], 16) in bases:
        position = bases[int(region[2], 16)]
        buffer = signature.params[position].buffer
        index = (int(access[3], 16) - int(region[2], 16)) // buffer.numpy_dtype.itemsize
        return (
            f"out-of-bounds {what} in kernel {signature.name}: parameter {position} ({buffer.kind} {buffer.name}: "
            f"{describe_array(buffer.dtype, buffer.shape)}) at flat element {index} of {math.prod(buffer.shape)}, "
            f"at {where}"
        )
    return f"out-of-bounds {what} in kernel {signature.name}, at {where}"


def _module_lines(executable: Path) -> list[str]:
    """The module's source lines (kept next to the build for reports)."""
    sibling = executable.with_suffix(".cu")
    return sibling.read_text().splitlines() if sibling.exists() else []
