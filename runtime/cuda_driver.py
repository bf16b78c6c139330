"""What the CUDA executor (`runtime.cuda`) asks of CUDA: the `CudaDriver` protocol, its errors, and
`RecordedGraphs`, the capture and replay of drivers that have no CUDA graphs of their own.

Three drivers implement the protocol: `runtime.cuda_pycuda.PycudaDriver` (a real GPU), the CPU
emulator (`runtime.cuda_emulator.EmulatorDriver`: the printed CUDA C run on the host) and the
tests' fake device, so the executor's logic is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from runtime.errors import ProgramRuntimeError

PYCUDA_HINT = "pip install 'kiln[cuda]' on a machine with a GPU (pycuda builds only where the CUDA driver is)"


class CudaUnavailableError(ProgramRuntimeError, ImportError):
    """CUDA programs cannot run here: pycuda is not installed, or the CUDA driver or a device is
    missing. The message says which, and what to do."""


class CudaDriverError(ProgramRuntimeError):
    """A CUDA driver call failed (allocation, copy, module load, launch); the message names it."""


Launches = Callable[[Any], None]
"""(stream) -> None: queues kernel launches, and nothing else, on the stream it is given."""


class CudaDriver(Protocol):
    """What the executor needs of CUDA. Pointers are device addresses as ints; `stream` is
    whatever `new_stream` returns, None for the legacy default stream."""

    def activate(self) -> Any: ...  # a context manager: the device's context is current inside
    def compute_capability(self) -> tuple[int, int]: ...
    def allocate(self, nbytes: int) -> int: ...
    def free(self, pointer: int) -> None: ...
    def upload(self, pointer: int, array: np.ndarray, stream: Any = None) -> None: ...
    def download(self, array: np.ndarray, pointer: int, stream: Any = None) -> None: ...
    def copy(self, destination: int, source: int, nbytes: int, stream: Any = None) -> None: ...
    def load_module(self, image: bytes) -> Any: ...
    def function(self, module: Any, name: str, n_params: int) -> Any: ...
    def launch(self, function: Any, grid: tuple, block: tuple, shared_bytes: int, pointers: Sequence[int],
               stream: Any = None) -> None: ...  # fmt: skip
    def new_stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def synchronize(self, stream: Any = None) -> None: ...
    # CUDA graphs: `capture` runs `launches` on a stream of the driver's own in capture mode and
    # returns the executable graph of what it queued (nothing runs); `replay` queues that graph
    # on `stream`, which runs every captured launch with the arguments it was captured with.
    def capture(self, launches: Launches) -> Any: ...
    def replay(self, graph: Any, stream: Any = None) -> None: ...
    def free_graph(self, graph: Any) -> None: ...


CAPTURE_STREAM = "capture"
"""The stream `RecordedGraphs.capture` hands its launches (a marker: nothing runs on it)."""

RecordedLaunch = tuple[Any, tuple, tuple, int, tuple[int, ...]]
"""(function, grid, block, shared bytes, pointers): one launch as `CudaDriver.launch` took it."""


class RecordedGraphs:
    """Capture and replay for a driver without CUDA graphs (the CPU emulator, the tests' fake
    device): while `capture` runs, the driver's `launch` hands each launch to `record`, which
    keeps it instead of running it; the graph is the tuple of them, and `replay` launches them in
    order. Anything but a launch during a capture (`refuse`) is an error, as it would be for CUDA
    where the executor's uploads and copies are on other streams than the one being captured."""

    def __init__(self, launch: Callable[..., None]) -> None:
        self._launch = launch
        self._recording: list[RecordedLaunch] | None = None

    @property
    def capturing(self) -> bool:
        return self._recording is not None

    def capture(self, launches: Launches) -> tuple[RecordedLaunch, ...]:
        if self._recording is not None:
            raise CudaDriverError("CUDA graph capture failed: a capture is already in progress")
        self._recording = []
        try:
            launches(CAPTURE_STREAM)
            return tuple(self._recording)
        finally:
            self._recording = None

    def record(self, function: Any, grid: tuple, block: tuple, shared_bytes: int, pointers: Sequence[int]) -> bool:
        """Whether the launch was recorded (a capture is in progress) rather than to be run."""
        if self._recording is None:
            return False
        self._recording.append((function, tuple(grid), tuple(block), int(shared_bytes), tuple(pointers)))
        return True

    def refuse(self, what: str) -> None:
        """Raise if a capture is in progress: only launches may be captured."""
        if self._recording is not None:
            raise CudaDriverError(f"CUDA graph capture failed: a {what} during the capture of launches")

    def replay(self, graph: tuple[RecordedLaunch, ...], stream: Any = None) -> None:
        self.refuse("graph launch")
        for function, grid, block, shared_bytes, pointers in graph:
            self._launch(function, grid, block, shared_bytes, pointers, stream)
