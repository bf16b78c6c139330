"""CUDA C to cubin through NVRTC (NVIDIA's run-time compiler, bound by `cuda-bindings`), with the
resource report of ptxas and a cache on disk. Needs no GPU and no driver.

The printed kernels (`backends.cuda.codegen`) include `prelude.h`, which includes cuda_fp16.h and
cuda_bf16.h; NVRTC finds them in the include folders of the `nvidia-cuda-runtime` and
`nvidia-cuda-crt` wheels (`site-packages/nvidia/cu13/include`) and the prelude in this folder.
Options: `--gpu-architecture=sm_XX` (a cubin for that device, which the runtime loads without a
PTX JIT), `-std=c++17`, `--fmad=false` (the kernel IR rounds a*b and then +c; a fused
multiply-add would round once and differ from the interpreter), `--ptxas-options=-v` (registers,
shared memory, stack and spills per kernel, parsed into `KernelResources`).

Compiled cubins are cached by a hash of the source, the prelude, the options and NVRTC's
version, under `KILN_CACHE_DIR` like the CPU runtime's objects; a corrupt entry is ignored and
rebuilt. NVRTC is imported at the first compile, so `import backends.cuda` works without it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ir.errors import KilnError
from runtime.disk_cache import discard_entry, read_entry, write_entry

PRELUDE = Path(__file__).with_name("prelude.h")
INSTALL_HINT = (
    "pip install 'kiln[cuda]' (or the NVRTC wheels alone: nvidia-cuda-nvrtc~=13.0.88 nvidia-cuda-runtime~=13.0.96 "
    "nvidia-cuda-crt~=13.0.88 cuda-bindings~=13.0.0)"
)
_ARCH = re.compile(r"sm_\d+[a-z]?")


class CudaCompilationError(KilnError):
    """NVRTC rejected a kernel's source; the message holds NVRTC's log."""


class NvrtcMissingError(KilnError):
    """NVRTC, its Python binding or the CUDA headers are not installed; the message says what to install."""


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reported for one kernel (`--ptxas-options=-v`)."""

    name: str
    registers: int = 0
    """Per thread."""
    shared_bytes: int = 0
    """Static shared memory per block."""
    stack_bytes: int = 0
    """Per-thread stack frame: local arrays and spills."""
    spill_stores: int = 0
    spill_loads: int = 0
    barriers: int = 0


@dataclass(frozen=True)
class CudaBinary:
    """A compiled translation unit: the cubin for `arch`, NVRTC's log and its resource report."""

    name: str
    arch: str
    cubin: bytes = field(repr=False)
    log: str
    resources: dict[str, KernelResources]
    """By kernel name."""
    nvrtc_version: tuple[int, int]
    seconds: float
    """Time spent in NVRTC (0 when the cubin came from the cache)."""
    cached: bool


def compile_cuda(source: str, arch: str = "sm_90", name: str = "kiln_kernels") -> CudaBinary:
    """Compile `source` (CUDA C that may include "prelude.h") to a cubin for `arch` ("sm_80")."""
    if not _ARCH.fullmatch(arch):
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    nvrtc = _nvrtc()
    version = _version()
    options = [
        f"--gpu-architecture={arch}",
        "-std=c++17",
        "--fmad=false",
        "--ptxas-options=-v",
        *(f"--include-path={folder}" for folder in (str(PRELUDE.parent), *_include_folders())),
    ]
    key = _cache_key(source, arch, version, options)
    cached = _read_cache(key)
    if cached is not None:
        cubin, log = cached
        return CudaBinary(name, arch, cubin, log, parse_resources(log), version, 0.0, True)
    start = time.perf_counter()
    program = _check(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []), "create")[0]
    try:
        encoded = [option.encode() for option in options]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        log = _log(nvrtc, program)
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaCompilationError(f"NVRTC could not compile {name} for {arch}:\n{log}")
        size = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(program), "cubin size")[0]
        cubin = b"\0" * size
        _check(nvrtc, nvrtc.nvrtcGetCUBIN(program, cubin), "cubin")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    seconds = time.perf_counter() - start
    _write_cache(key, cubin, log)
    return CudaBinary(name, arch, cubin, log, parse_resources(log), version, seconds, False)


def missing_nvrtc() -> str | None:
    """Why NVRTC cannot compile here (what to install), or None when it can."""
    try:
        _nvrtc()
        _version()
        _include_folders()
    except NvrtcMissingError as error:
        return str(error)
    return None


# -- the ptxas report --------------------------------------------------------------------------

_FUNCTION = re.compile(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_][A-Za-z0-9_]*)'?")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SHARED = re.compile(r"(\d+) bytes smem")


def parse_resources(log: str) -> dict[str, KernelResources]:
    """The per-kernel resource report in NVRTC's log (ptxas -v lines), by kernel name."""
    report: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if found := _FUNCTION.search(line):
            current = found.group(1)
            report.setdefault(current, {})
        if current is None:
            continue
        entry = report[current]
        if found := _FRAME.search(line):
            entry.update(stack_bytes=int(found[1]), spill_stores=int(found[2]), spill_loads=int(found[3]))
        if found := _USAGE.search(line):
            entry["registers"] = int(found[1])
            if barriers := _BARRIERS.search(line):
                entry["barriers"] = int(barriers[1])
            if shared := _SHARED.search(line):
                entry["shared_bytes"] = int(shared[1])
    return {name: KernelResources(name, **values) for name, values in report.items()}


# -- NVRTC and the headers ---------------------------------------------------------------------


def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError as error:
        raise NvrtcMissingError(f"NVRTC's Python binding is not installed ({error}); {INSTALL_HINT}") from None
    return nvrtc


@functools.cache
def _version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    try:
        major, minor = _check(nvrtc, nvrtc.nvrtcVersion(), "version")
    except (OSError, RuntimeError) as error:  # the binding is there, libnvrtc is not
        raise NvrtcMissingError(f"libnvrtc could not be loaded ({error}); {INSTALL_HINT}") from None
    return int(major), int(minor)


@functools.cache
def _include_folders() -> tuple[str, ...]:
    """The include folders of the installed nvidia-* wheels that hold cuda_fp16.h and crt/."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    folders = sorted({str(path.parent) for root in roots for path in Path(root).glob("*/include/cuda_fp16.h")})
    if not folders:
        raise NvrtcMissingError(f"the CUDA headers (cuda_fp16.h) are not installed; {INSTALL_HINT}")
    return tuple(folders)


def _check(nvrtc: Any, returned: tuple, what: str) -> tuple:
    result, *values = returned
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, text = nvrtc.nvrtcGetErrorString(result)
        raise CudaCompilationError(f"NVRTC {what} failed: {text.decode() if isinstance(text, bytes) else text}")
    return tuple(values)


def _log(nvrtc: Any, program: Any) -> str:
    (size,) = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program), "log size")
    log = b"\0" * size
    _check(nvrtc, nvrtc.nvrtcGetProgramLog(program, log), "log")
    return log.rstrip(b"\0").decode(errors="replace")


# -- the cache on disk -------------------------------------------------------------------------


def _cache_key(source: str, arch: str, version: tuple[int, int], options: list[str]) -> str:
    digest = hashlib.sha256()
    # Include folders hold machine paths: the headers' versions follow NVRTC's, so they are left out.
    portable = [option for option in options if not option.startswith("--include-path")]
    for part in (source, PRELUDE.read_text(), arch, repr(version), repr(portable)):
        digest.update(part.encode())
        digest.update(b"\0")
    return "cuda-" + digest.hexdigest()


def _read_cache(key: str) -> tuple[bytes, str] | None:
    """The cubin and log for `key`; an entry whose header does not parse is deleted."""
    data = read_entry(f"{key}.cubin")
    if data is None:
        return None
    header, _, cubin = data.partition(b"\n")
    try:
        return cubin, json.loads(header)["log"]
    except (ValueError, KeyError, TypeError):
        discard_entry(f"{key}.cubin")
        return None


def _write_cache(key: str, cubin: bytes, log: str) -> None:
    write_entry(f"{key}.cubin", json.dumps({"log": log}).encode() + b"\n" + cubin)
