"""`PycudaDriver`: the `CudaDriver` of a real GPU, through pycuda on the primary context of the
device (the context the CUDA runtime and torch use, so memory is shared with torch; never
pycuda.autoinit's own context). pycuda is imported when a driver is made, not here, so `import
runtime` works on a machine without a GPU.

CUDA graphs go through NVIDIA's `cuda-bindings` (`cuda.bindings.driver`, the NVRTC binding's
package, also in the `cuda` extra): pycuda 2026.1 has no stream capture. Both call the same
libcuda in this process, so the driver API sees the context pycuda made current.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from runtime.cuda_driver import PYCUDA_HINT, CudaDriverError, CudaUnavailableError, Launches

STATIC_SHARED_BYTES = 48 * 1024
"""Shared memory per block a launch gets without the opt-in (`backends.cuda.codegen`'s static limit)."""
NON_BLOCKING = 1
"""CU_STREAM_NON_BLOCKING: a stream the legacy default stream does not synchronise with."""


def _import_pycuda() -> Any:
    """pycuda.driver, initialised, or `CudaUnavailableError` saying what is missing."""
    if importlib.util.find_spec("pycuda") is None:
        raise CudaUnavailableError(f"running a CUDA program needs pycuda, which is not installed: {PYCUDA_HINT}")
    try:
        import pycuda.driver as cuda
    except ImportError as error:  # pycuda is there; libcuda.so.1 (the driver) is not
        raise CudaUnavailableError(
            f"pycuda is installed but the CUDA driver could not be loaded ({error}): this machine needs an NVIDIA "
            "GPU and its driver to run CUDA programs"
        ) from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as error:
        raise CudaUnavailableError(f"the CUDA driver found no usable GPU ({error})") from None
    if count == 0:
        raise CudaUnavailableError("the CUDA driver is installed but sees no GPU (check CUDA_VISIBLE_DEVICES)")
    return cuda


def cuda_unavailable() -> str | None:
    """Why CUDA programs cannot run here (what is missing), or None when they can."""
    try:
        _import_pycuda()
    except CudaUnavailableError as error:
        return str(error)
    return None


class PycudaDriver:
    """`CudaDriver` through pycuda, on the primary context of device `device` (default 0)."""

    def __init__(self, device: int | None = None) -> None:
        cuda = self._cuda = _import_pycuda()
        index = device or 0
        if not 0 <= index < cuda.Device.count():
            raise CudaUnavailableError(f"there is no CUDA device {index}; this machine has {cuda.Device.count()}")
        self._device = cuda.Device(index)
        self._context = self._device.retain_primary_context()
        self._allocations: dict[int, Any] = {}
        self._opted_in: dict[Any, int] = {}
        """The dynamic shared memory each function was allowed past 48 KiB."""
        self._capture_stream: Any = None

    @contextmanager
    def activate(self) -> Iterator[None]:
        self._context.push()  # the primary context torch uses: pushing it again is cheap and nests
        try:
            yield
        finally:
            self._cuda.Context.pop()

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._cuda.Error as error:
            raise CudaDriverError(f"CUDA {what} failed: {error}") from error

    def compute_capability(self) -> tuple[int, int]:
        return tuple(self._device.compute_capability())

    def allocate(self, nbytes: int) -> int:
        with self._calling(f"allocation of {nbytes} bytes"):
            allocation = self._cuda.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        self._allocations.pop(pointer).free()

    def upload(self, pointer: int, array: np.ndarray, stream: Any = None) -> None:
        with self._calling("copy to the device"):
            if stream is None:
                self._cuda.memcpy_htod(pointer, array)
            else:
                self._cuda.memcpy_htod_async(pointer, array, stream)

    def download(self, array: np.ndarray, pointer: int, stream: Any = None) -> None:
        with self._calling("copy from the device"):
            if stream is None:
                self._cuda.memcpy_dtoh(array, pointer)
            else:
                self._cuda.memcpy_dtoh_async(array, pointer, stream)

    def copy(self, destination: int, source: int, nbytes: int, stream: Any = None) -> None:
        with self._calling("copy on the device"):
            self._cuda.memcpy_dtod_async(destination, source, nbytes, stream)

    def load_module(self, image: bytes) -> Any:
        with self._calling("module load"):
            return self._cuda.module_from_buffer(image)

    def function(self, module: Any, name: str, n_params: int) -> Any:
        with self._calling(f"lookup of kernel {name}"):
            function = module.get_function(name)
        return function.prepare("P" * n_params)  # every parameter is a pointer

    def launch(self, function: Any, grid: tuple, block: tuple, shared_bytes: int, pointers: Sequence[int],
               stream: Any = None) -> None:  # fmt: skip
        if shared_bytes > STATIC_SHARED_BYTES and self._opted_in.get(function) != shared_bytes:
            # Past 48 KiB a kernel must opt in (cuFuncSetAttribute), once per function and size.
            with self._calling(f"opt-in to {shared_bytes} bytes of dynamic shared memory"):
                function.set_attribute(self._cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, shared_bytes)
            self._opted_in[function] = shared_bytes
        with self._calling("kernel launch"):
            function.prepared_async_call(grid, block, stream, *pointers, shared_size=shared_bytes)

    def new_stream(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return 0 if stream is None else stream.handle

    def synchronize(self, stream: Any = None) -> None:
        with self._calling("synchronisation (a kernel may have failed)"):
            if stream is None:
                self._cuda.Context.synchronize()
            else:
                stream.synchronize()

    # -- CUDA graphs (cuda.bindings.driver) --------------------------------------------------------

    def capture(self, launches: Launches) -> Any:
        driver = _graph_api()
        if self._capture_stream is None:
            # Non-blocking: a capture on a stream that the legacy default stream synchronises with
            # is invalidated by any legacy-stream work, torch's included.
            with self._calling("creation of the capture stream"):
                self._capture_stream = self._cuda.Stream(NON_BLOCKING)
        stream = driver.CUstream(self._capture_stream.handle)
        # Thread-local mode: other threads (torch's allocator) may go on calling CUDA meanwhile.
        mode = driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        _checked(driver, driver.cuStreamBeginCapture(stream, mode), "stream capture")
        try:
            launches(self._capture_stream)
        except BaseException:
            result, graph = driver.cuStreamEndCapture(stream)  # leave the stream usable, then re-raise
            if result == driver.CUresult.CUDA_SUCCESS and graph:
                driver.cuGraphDestroy(graph)
            raise
        (graph,) = _checked(driver, driver.cuStreamEndCapture(stream), "end of the stream capture")
        try:
            (executable,) = _checked(driver, driver.cuGraphInstantiate(graph, 0), "graph instantiation")
        finally:
            driver.cuGraphDestroy(graph)
        return executable

    def replay(self, graph: Any, stream: Any = None) -> None:
        driver = _graph_api()
        _checked(driver, driver.cuGraphLaunch(graph, driver.CUstream(self.stream_handle(stream))), "graph launch")

    def free_graph(self, graph: Any) -> None:
        driver = _graph_api()
        _checked(driver, driver.cuGraphExecDestroy(graph), "graph destruction")


def _graph_api() -> Any:
    """cuda.bindings.driver, or `CudaUnavailableError` naming the package."""
    try:
        from cuda.bindings import driver
    except ImportError:
        raise CudaUnavailableError(
            f"CUDA graphs need NVIDIA's cuda-bindings (cuda.bindings.driver), which is not installed: {PYCUDA_HINT}"
        ) from None
    return driver


def _checked(driver: Any, returned: tuple, what: str) -> tuple:
    """The values after a cuda.bindings call's CUresult, or `CudaDriverError` with its name."""
    result, *values = returned
    if result != driver.CUresult.CUDA_SUCCESS:
        raise CudaDriverError(f"CUDA {what} failed: {getattr(result, 'name', result)}")
    return tuple(values)
