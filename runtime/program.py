"""`Program`: a compiled model as plain data, and its one-file save format.

A program is what a backend hands the runtime: its buffers (inputs, outputs, constants and
intermediates, the last packed into one arena by `runtime.memory`), an ordered list of
launches (a kernel's name and the buffers it takes, in the kernel's parameter order) and the
generated code, keyed per target (`{"llvm_ir", "triple", "cpu", "features"}` for the CPU;
`{"cuda_source", "cubins", "resources", "nvrtc_version"}` for CUDA, whose launches also carry
their grid and block).
Nothing in it refers to the graph IR, so `save` and `load` need only numpy: a saved program
runs in a process that never imports `ir`, `passes`, `backends` or `compiler`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from runtime.errors import InputMismatchError, ProgramError, ProgramFormatError

BufferKind = Literal["input", "output", "constant", "intermediate"]
BUFFER_KINDS: tuple[str, ...] = ("input", "output", "constant", "intermediate")

FORMAT_NAME = "kiln-program"
FORMAT_VERSION = 1


@functools.cache
def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a buffer's dtype name (`"float32"`, `"bfloat16"`, `"bool"`, ...).
    bfloat16 and other types numpy lacks come from ml_dtypes, imported only when a program uses
    one, so a float32 program loads without it."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    import ml_dtypes  # lazy: only programs with bf16 (or f8) buffers need it

    try:
        return np.dtype(getattr(ml_dtypes, name))
    except AttributeError:
        raise ProgramError(f"unknown buffer dtype {name!r} (a numpy or ml_dtypes type name)") from None


def describe_array(dtype: str, shape: tuple[int, ...]) -> str:
    """`float32[2,3]`: how error messages show a buffer's or an array's type."""
    return f"{dtype}[{','.join(map(str, shape))}]"


@dataclass(frozen=True)
class BufferSpec:
    """One buffer of a program: a row-major array of `dtype` and `shape`."""

    name: str
    dtype: str
    """A numpy dtype name; bf16 is `"bfloat16"` (ml_dtypes), stored as its 16 bits."""
    shape: tuple[int, ...]
    kind: BufferKind
    offset: int | None = None
    """Byte offset in the arena, for intermediates; None for the other kinds."""

    @property
    def numpy_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.numpy_dtype.itemsize

    def __str__(self) -> str:
        where = f" @{self.offset}" if self.offset is not None else ""
        return f"{self.kind} {self.name}: {describe_array(self.dtype, self.shape)}{where}"


@dataclass(frozen=True)
class Launch:
    """One call of a kernel: `args[p]` is the index (into `Program.buffers`) of the buffer
    passed as the kernel's parameter p."""

    kernel: str
    args: tuple[int, ...]
    parallel: bool = True
    """False when the kernel's body is not one parallel loop, or is too little work to be worth
    spreading: the executor then calls it once, on worker 0 with one worker (the ABI runs the
    whole body then). True when its loop may be split over every worker."""
    writes: tuple[int, ...] | None = None
    """The buffers (indices into `Program.buffers`, among `args`) the kernel writes; None when
    not known, which counts every output and intermediate it takes as written. The executor
    places barriers between launches by it (`runtime.memory.barriers_before`)."""
    grid: tuple[int, int, int] | None = None
    """GPU programs: blocks per grid (x, y, z); None for the CPU."""
    block: tuple[int, int, int] | None = None
    """GPU programs: threads per block (x, y, z); None for the CPU."""
    shared_bytes: int = 0
    """GPU programs: dynamic shared memory per block (static shared memory is in the cubin)."""

    def header(self) -> dict[str, Any]:
        """The launch in a saved program's JSON header; the GPU fields only where set, so a CPU
        program's file is what it was before they existed."""
        entry: dict[str, Any] = {"kernel": self.kernel, "args": list(self.args), "parallel": self.parallel}
        if self.writes is not None:
            entry["writes"] = list(self.writes)
        if self.grid is not None:
            entry.update(grid=list(self.grid), block=list(self.block or (1, 1, 1)), shared_bytes=self.shared_bytes)
        return entry

    @staticmethod
    def from_header(entry: dict[str, Any]) -> Launch:
        writes, grid, block = entry.get("writes"), entry.get("grid"), entry.get("block")
        return Launch(
            entry["kernel"],
            tuple(entry["args"]),
            entry["parallel"],
            writes=None if writes is None else tuple(writes),
            grid=None if grid is None else tuple(grid),
            block=None if block is None else tuple(block),
            shared_bytes=entry.get("shared_bytes", 0),
        )


@dataclass(frozen=True, eq=False)
class Program:
    """A compiled model: what `runtime.cpu.CpuExecutor` (or a later executor) runs.

    eq=False: constants are arrays, which do not compare to a bool; programs compare by identity.
    """

    name: str
    buffers: tuple[BufferSpec, ...]
    inputs: tuple[int, ...]
    """Indices of the input buffers, in the order `run` takes them."""
    outputs: tuple[int, ...]
    """Indices of the buffers `run` returns, in order. An output may be an input, a constant or
    an intermediate (the executor returns a copy) and may repeat (each occurrence is its own array)."""
    constants: dict[int, np.ndarray]
    """The contents of each constant buffer, by buffer index; kernels only read them."""
    launches: tuple[Launch, ...]
    arena_bytes: int
    code: dict[str, Any] = field(default_factory=dict)
    """The generated code per target; for the CPU: llvm_ir (text), triple, cpu, features (the
    machine it was generated for: the executor recompiles the IR for the host it runs on); for
    CUDA: cuda_source, cubins (base64 per "sm_XX"), resources (ptxas -v per arch and kernel)."""
    target: str = "cpu"

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ProgramError(f"program {self.name!r} is malformed:\n  " + "\n  ".join(problems))

    def _problems(self):
        n = len(self.buffers)
        for i, spec in enumerate(self.buffers):
            if spec.kind not in BUFFER_KINDS:
                yield f"buffer {i} ({spec.name}) has kind {spec.kind!r}, not one of {BUFFER_KINDS}"
            try:
                numpy_dtype(spec.dtype)
            except ProgramError as error:
                yield f"buffer {i} ({spec.name}): {error}"
                return  # the checks below need every buffer's size
            if spec.kind == "intermediate" and (
                spec.offset is None or spec.offset < 0 or spec.offset + spec.nbytes > self.arena_bytes
            ):
                yield f"intermediate {spec.name} at offset {spec.offset} does not fit the {self.arena_bytes}-byte arena"
        for what, indices in (("input", self.inputs), ("output", self.outputs)):
            for i in indices:
                if not 0 <= i < n:
                    yield f"{what} index {i} is out of range ({n} buffers)"
        kind_of = [spec.kind for spec in self.buffers]
        declared_inputs = [i for i, kind in enumerate(kind_of) if kind == "input"]
        if sorted(self.inputs) != declared_inputs:
            yield f"inputs {self.inputs} are not the input buffers {tuple(declared_inputs)}, each once"
        missing = [self.buffers[i].name for i, kind in enumerate(kind_of) if kind == "output" and i not in self.outputs]
        if missing:
            yield f"output buffers {missing} are not among the outputs"
        declared_constants = {i for i, kind in enumerate(kind_of) if kind == "constant"}
        if set(self.constants) != declared_constants:
            yield f"constants are given for buffers {sorted(self.constants)}, declared {sorted(declared_constants)}"
        for i, array in self.constants.items():
            spec = self.buffers[i] if 0 <= i < n else None
            if spec is not None and (array.shape != tuple(spec.shape) or array.dtype != spec.numpy_dtype):
                got = describe_array(str(array.dtype), array.shape)
                yield f"constant {spec.name} is {got}, declared {describe_array(spec.dtype, spec.shape)}"
        for k, launch in enumerate(self.launches):
            if any(not 0 <= i < n for i in launch.args):
                yield f"launch {k} ({launch.kernel}) takes buffer indices {launch.args}, out of range ({n} buffers)"
            elif launch.writes is not None and not set(launch.writes) <= set(launch.args):
                yield f"launch {k} ({launch.kernel}) writes buffers {launch.writes} that it does not take"
            dims = (launch.grid, launch.block)
            if self.target == "cuda" and any(d is None or len(d) != 3 or min(d) < 1 for d in dims):
                yield f"launch {k} ({launch.kernel}) of a CUDA program needs a grid and a block of 3 positive sizes"

    def checked_inputs(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        """`inputs` as C-contiguous numpy arrays of the declared shapes and dtypes (bf16 as
        ml_dtypes.bfloat16), or `InputMismatchError` naming the first that does not fit: what
        every executor checks before anything runs."""
        specs = self.input_specs
        if len(inputs) != len(specs):
            names = ", ".join(spec.name for spec in specs)
            raise InputMismatchError(f"program {self.name!r} takes {len(specs)} input(s) ({names}), got {len(inputs)}")
        checked = []
        for spec, value in zip(specs, inputs, strict=True):
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if array.shape != tuple(spec.shape) or array.dtype != spec.numpy_dtype:
                raise InputMismatchError(
                    f"input {spec.name!r} of program {self.name!r}: expected "
                    f"{describe_array(spec.dtype, spec.shape)}, got {describe_array(str(array.dtype), array.shape)}"
                )
            checked.append(array if array.flags.c_contiguous else array.copy(order="C"))
        return checked

    @property
    def input_specs(self) -> tuple[BufferSpec, ...]:
        return tuple(self.buffers[i] for i in self.inputs)

    @property
    def output_specs(self) -> tuple[BufferSpec, ...]:
        return tuple(self.buffers[i] for i in self.outputs)

    def describe(self) -> str:
        """A readable listing: signature, buffers, launches (for logs and irdump)."""
        lines = [f"program {self.name} (target {self.target}, arena {self.arena_bytes} bytes)"]
        lines += [f"  %{i} = {spec}" for i, spec in enumerate(self.buffers)]
        lines += [
            f"  launch {launch.kernel}({', '.join(f'%{i}' for i in launch.args)})"
            + ("" if launch.parallel else "  serial")
            + ("" if launch.grid is None else f"  grid {launch.grid} block {launch.block}")
            for launch in self.launches
        ]
        lines.append(f"  return {', '.join(f'%{i}' for i in self.outputs)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Program {self.name}: {len(self.buffers)} buffers, {len(self.launches)} launches, {self.target}>"

    def save(self, path: str | os.PathLike) -> None:
        """Write the program to one file (an .npz archive: a JSON header, which holds the code,
        and each constant's bytes), readable by `runtime.load` with numpy alone."""
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "target": self.target,
            "buffers": [
                {"name": b.name, "dtype": b.dtype, "shape": list(b.shape), "kind": b.kind, "offset": b.offset}
                for b in self.buffers
            ],
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "launches": [launch.header() for launch in self.launches],
            "arena_bytes": self.arena_bytes,
            "code": self.code,
        }
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        # Constants travel as raw bytes: .npy cannot describe ml_dtypes' bfloat16, and the
        # header already holds every buffer's dtype and shape.
        for i, array in self.constants.items():
            arrays[f"constant_{i}"] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        with open(path, "wb") as file:  # a file object, so numpy does not append ".npz"
            np.savez(file, **arrays)


def load(path: str | os.PathLike) -> Program:
    """Read a program written by `Program.save`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(archive["header"].tobytes().decode())
            if header.get("format") != FORMAT_NAME:
                raise ProgramFormatError(f"{path} is not a saved Kiln program")
            if header["version"] > FORMAT_VERSION:
                raise ProgramFormatError(
                    f"{path} is a Kiln program of format {header['version']}; this runtime reads up to "
                    f"{FORMAT_VERSION}: upgrade Kiln"
                )
            buffers = tuple(
                BufferSpec(b["name"], b["dtype"], tuple(b["shape"]), b["kind"], b["offset"]) for b in header["buffers"]
            )
            constants = {
                i: archive[f"constant_{i}"].view(spec.numpy_dtype).reshape(spec.shape)
                for i, spec in enumerate(buffers)
                if spec.kind == "constant"
            }
            launches = tuple(Launch.from_header(entry) for entry in header["launches"])
            return Program(
                name=header["name"],
                buffers=buffers,
                inputs=tuple(header["inputs"]),
                outputs=tuple(header["outputs"]),
                constants=constants,
                launches=launches,
                arena_bytes=header["arena_bytes"],
                code=header["code"],
                target=header["target"],
            )
    except ProgramFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, KeyError, TypeError, ValueError) as error:
        # ValueError covers ProgramError (contents that contradict each other) and bad JSON.
        raise ProgramFormatError(f"{path} is not a readable Kiln program ({type(error).__name__}: {error})") from error
