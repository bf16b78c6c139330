"""The CUDA emulator's own pieces (runtime/cuda_emulator.py), on hand-written programs: no NVRTC,
no model, no GPU.

`KILN_CUDA_EMULATE` picks the driver; the host prelude's f16/bf16 conversions are bit-exact with
numpy and ml_dtypes over every 16-bit pattern (widening) and over values that hit every rounding
case (narrowing: exact values, ties, one f32 ulp either side); a machine without g++ gets an error
that says to install it.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import runtime.cuda
import runtime.cuda_emulator
from runtime import BufferSpec, Launch, Program
from runtime.cuda import EMULATE_VARIABLE, CudaExecutor, default_driver
from runtime.cuda_emulator import (
    EmulationModeError,
    EmulatorDriver,
    EmulatorUnavailableError,
    build,
    emulator_unavailable,
    host_compiler,
)

PRELUDE = Path(__file__).parents[2] / "backends" / "cuda" / "prelude.h"
requires_gxx = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")

# One warp strides over the elements: a launch of 32 OS threads, however many elements.
CONVERSIONS = """
#include "prelude.h"

extern "C" __global__ void __launch_bounds__(32, 1) k0_conversions(
    const uint16_t* __restrict__ bits, const float* __restrict__ wide, float* __restrict__ from_f16,
    float* __restrict__ from_bf16, __half* __restrict__ to_f16, __nv_bfloat16* __restrict__ to_bf16) {
  for (int64_t i = threadIdx.x; i < N_BITS; i += blockDim.x) {
    from_f16[i] = kiln_load(__ushort_as_half(bits[i]));
    from_bf16[i] = kiln_load(__ushort_as_bfloat16(bits[i]));
  }
  for (int64_t i = threadIdx.x; i < N_WIDE; i += blockDim.x) {
    to_f16[i] = kiln_store_f16(kiln_round_f16(wide[i]));
    to_bf16[i] = kiln_store_bf16(kiln_round_bf16(wide[i]));
  }
}
"""


def conversions_program(wide: int) -> Program:
    """The program that runs CONVERSIONS on every 16-bit pattern and on `wide` floats."""
    buffers = (
        BufferSpec("bits", "uint16", (65536,), "input"),
        BufferSpec("wide", "float32", (wide,), "input"),
        BufferSpec("from_f16", "float32", (65536,), "output"),
        BufferSpec("from_bf16", "float32", (65536,), "output"),
        BufferSpec("to_f16", "float16", (wide,), "output"),
        BufferSpec("to_bf16", "bfloat16", (wide,), "output"),
    )
    source = CONVERSIONS.replace("N_BITS", "65536").replace("N_WIDE", str(wide))
    return Program(
        name="conversions",
        buffers=buffers,
        inputs=(0, 1),
        outputs=(2, 3, 4, 5),
        constants={},
        launches=(Launch("k0_conversions", tuple(range(6)), writes=(2, 3, 4, 5), grid=(1, 1, 1), block=(32, 1, 1)),),
        arena_bytes=0,
        target="cuda",
        # The emulator ignores the cubin; the executor only picks it by architecture.
        code={"cuda_source": source, "prelude": PRELUDE.read_text(), "cubins": {"sm_80": ""}},
    )


# -- the driver KILN_CUDA_EMULATE chooses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode"), [("1", "plain"), ("plain", "plain"), ("race", "race"), (" Bounds ", "bounds")]
)
def test_kiln_cuda_emulate_chooses_the_emulator_in_its_mode(monkeypatch, value, mode):
    monkeypatch.setenv(EMULATE_VARIABLE, value)
    monkeypatch.setattr(runtime.cuda_emulator, "emulator_unavailable", lambda: None)
    driver = default_driver(conversions_program(8), 0)
    assert isinstance(driver, EmulatorDriver)
    assert driver.mode == mode


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_kiln_cuda_emulate_the_driver_is_pycuda_on_the_device(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(EMULATE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(EMULATE_VARIABLE, value)
    chosen = []
    monkeypatch.setattr(runtime.cuda, "PycudaDriver", lambda device: chosen.append(device) or "pycuda")
    assert default_driver(conversions_program(8), 3) == "pycuda"
    assert chosen == [3]


def test_an_unknown_emulation_mode_says_which_there_are(monkeypatch):
    monkeypatch.setenv(EMULATE_VARIABLE, "fast")
    monkeypatch.setattr(runtime.cuda_emulator, "emulator_unavailable", lambda: None)
    with pytest.raises(EmulationModeError, match=r"unknown CUDA emulation mode 'fast': set KILN_CUDA_EMULATE to 1"):
        default_driver(conversions_program(8), 0)


# -- no host compiler --------------------------------------------------------------------------------


@pytest.fixture
def no_gxx(monkeypatch, tmp_path):
    """A PATH with no g++ on it (and host_compiler's memo forgotten before and after)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KILN_HOST_CXX", raising=False)
    host_compiler.cache_clear()
    yield
    host_compiler.cache_clear()


def test_without_gxx_emulation_fails_saying_to_install_it(no_gxx, monkeypatch):
    assert "install g++" in emulator_unavailable()
    monkeypatch.setenv(EMULATE_VARIABLE, "1")
    with pytest.raises(
        EmulatorUnavailableError, match=r"KILN_CUDA_EMULATE=1: .*needs a host C\+\+ compiler: install g\+\+"
    ):
        default_driver(conversions_program(8), 0)
    with pytest.raises(EmulatorUnavailableError, match=r"install g\+\+"):
        build(CONVERSIONS, PRELUDE.read_text(), "plain", ["k0_conversions"])


# -- f16 and bf16 in the host prelude ---------------------------------------------------------------


def narrowing_cases() -> np.ndarray:
    """f32 values that reach every rounding case of f32 -> f16 and f32 -> bf16: every f16 value,
    the midpoint between it and the next (a tie: exact in f32) and one f32 ulp either side of it,
    and every bf16 value with its dropped half zero, just below the tie, at it, just above it,
    and all ones; infinities and NaNs of both signs among them."""
    every = np.arange(65536, dtype=np.uint32)
    halves = every.astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]
    low = finite.astype(np.float32)
    with np.errstate(over="ignore"):  # 65504's next is infinity
        high = np.nextafter(finite, np.float16(np.inf)).astype(np.float32)
    middle = ((low.astype(np.float64) + high) / 2).astype(np.float32)  # exact: 12 significant bits
    middle = middle[np.isfinite(middle)]
    ties = [middle, np.nextafter(middle, np.float32(-np.inf)), np.nextafter(middle, np.float32(np.inf))]
    brain = [((every << 16) | tail).view(np.float32) for tail in (0x0000, 0x7FFF, 0x8000, 0x8001, 0xFFFF)]
    return np.concatenate([halves.astype(np.float32), *ties, *brain]).astype(np.float32)


@pytest.fixture(scope="module")
def converted():
    """(inputs, outputs) of the conversions program run in the emulator."""
    if emulator_unavailable() is not None:
        pytest.skip(emulator_unavailable())
    wide = narrowing_cases()
    program = conversions_program(len(wide))
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    outputs = CudaExecutor(program, driver=EmulatorDriver(program)).run([bits, wide])
    return (bits, wide), outputs


@requires_gxx
def test_widening_f16_and_bf16_is_exact_for_every_bit_pattern(converted):
    (bits, _), (from_f16, from_bf16, _, _) = converted
    for got, wanted in [(from_f16, bits.view(np.float16).astype(np.float32)),
                        (from_bf16, bits.view(ml_dtypes.bfloat16).astype(np.float32))]:  # fmt: skip
        # Bit for bit, NaN payloads included (a NaN keeps its payload, as cvt.f32.f16 does).
        np.testing.assert_array_equal(got.view(np.uint32), wanted.view(np.uint32))


@requires_gxx
def test_narrowing_to_f16_and_bf16_rounds_to_nearest_even_as_numpy_and_ml_dtypes(converted):
    (_, wide), (_, _, to_f16, to_bf16) = converted
    numbers = ~np.isnan(wide)
    assert numbers.sum() > 500_000 and (~numbers).sum() > 1000  # every case above, NaNs of both signs too
    with np.errstate(over="ignore", invalid="ignore"):  # infinities and NaNs are among the cases
        wanted_f16, wanted_bf16 = wide.astype(np.float16), wide.astype(ml_dtypes.bfloat16)
    got_f16, wanted_f16 = to_f16.view(np.uint16), wanted_f16.view(np.uint16)
    np.testing.assert_array_equal(got_f16[numbers], wanted_f16[numbers])
    # A NaN becomes the device's canonical f16 NaN (cvt.rn.f16.f32), whatever its sign and payload.
    assert np.all(got_f16[~numbers] == 0x7FFF)
    # bf16: ml_dtypes' rule for NaNs too (the quiet NaN of its sign; the CPU backend's twin does the same).
    np.testing.assert_array_equal(to_bf16.view(np.uint16), wanted_bf16.view(np.uint16))
