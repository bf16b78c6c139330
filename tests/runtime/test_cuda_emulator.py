"""The CUDA emulator's own pieces (runtime/cuda_emulator.py), on hand-written programs: no NVRTC,
no model, no GPU.

`KILN_CUDA_EMULATE` picks the driver; the host prelude's f16/bf16 conversions are bit-exact with
numpy and ml_dtypes over every 16-bit pattern (widening) and over values that hit every rounding
case (narrowing: exact values, ties, one f32 ulp either side); a machine without g++ gets an error
that says to install it. Atomics and dynamic shared memory are exact and race-free in every mode.
In race mode only barriers order memory, as on the device: a store that another lane reads with
only warp shuffles between them is a race (its own warp's lane or the other warp's), the shuffles'
own value exchange is none, and a shuffle one lane skips is still reported as a deadlock.
"""

from __future__ import annotations

import re
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
    KernelBoundsError,
    KernelDeadlockError,
    KernelRaceError,
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


# -- dynamic shared memory and atomics --------------------------------------------------------------

# A histogram: each block counts its values in dynamic shared memory (64 KiB: past the 48 KiB a
# block may declare statically) with shared-memory atomics, then adds its counts to the global
# ones with global atomics. Every thread of a block hits the same few bins, so the atomics matter.
HISTOGRAM = """
#include "prelude.h"

extern "C" __global__ void k0_histogram(const int32_t* __restrict__ values, int32_t* __restrict__ counts,
                                        float* __restrict__ total, int32_t* __restrict__ stats) {
  KILN_DYNAMIC_SHARED(kiln_shared);
  int32_t* bins = (int32_t*)kiln_shared;
  for (int b = threadIdx.x; b < BINS; b += blockDim.x) bins[b] = 0;
  __syncthreads();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&bins[values[i] % BINS], 1);
  atomicAdd(total, (float)values[i]);
  atomicMax(&stats[0], values[i]);
  atomicMin(&stats[1], values[i]);
  if (atomicCAS(&stats[3], 0, i + 1) == 0) atomicAdd(&stats[2], 1);  // exactly one thread wins
  __syncthreads();
  for (int b = threadIdx.x; b < BINS; b += blockDim.x)
    if (bins[b]) atomicAdd(&counts[b], bins[b]);
}
"""
BINS, BLOCKS, THREADS = 16384, 3, 64


def histogram_program(source: str = HISTOGRAM, shared_bytes: int = 4 * BINS) -> Program:
    buffers = (
        BufferSpec("values", "int32", (BLOCKS * THREADS,), "input"),
        BufferSpec("counts", "int32", (BINS,), "output"),
        BufferSpec("total", "float32", (1,), "output"),
        BufferSpec("stats", "int32", (4,), "output"),
    )
    launch = Launch("k0_histogram", (0, 1, 2, 3), writes=(1, 2, 3), grid=(BLOCKS, 1, 1), block=(THREADS, 1, 1),
                    shared_bytes=shared_bytes)  # fmt: skip
    return Program(
        name="histogram",
        buffers=buffers,
        inputs=(0,),
        outputs=(1, 2, 3),
        constants={},
        launches=(launch,),
        arena_bytes=0,
        target="cuda",
        code={
            "cuda_source": source.replace("BINS", str(BINS)),
            "prelude": PRELUDE.read_text(),
            "cubins": {"sm_80": ""},
        },
    )


def histogram_inputs() -> np.ndarray:
    # Few distinct values (many threads per bin), all below 2^24 so the f32 total is exact in any order.
    return np.random.default_rng(0).integers(0, 40, BLOCKS * THREADS).astype(np.int32) * 1000 + 7


@requires_gxx
@pytest.mark.parametrize("mode", ["plain", "race", "bounds"])
def test_atomics_and_dynamic_shared_memory_are_exact_and_race_free_in_every_mode(mode):
    values = histogram_inputs()
    program = histogram_program()
    counts, total, stats = CudaExecutor(program, driver=EmulatorDriver(program, mode)).run([values])
    np.testing.assert_array_equal(counts, np.bincount(values % BINS, minlength=BINS))
    assert total[0] == values.sum()
    # stats[3] is the CAS winner's id + 1; outputs start zeroed (the emulator's allocations).
    assert stats[0] == values.max() and stats[1] == min(values.min(), 0) and stats[2] == 1 and stats[3] >= 1


@requires_gxx
def test_a_plain_increment_in_place_of_a_shared_atomic_is_reported_as_a_race():
    program = histogram_program(
        HISTOGRAM.replace("atomicAdd(&bins[values[i] % BINS], 1);", "++bins[values[i] % BINS];")
    )
    with pytest.raises(KernelRaceError, match=r"data race in kernel k0_histogram.*kiln_module\.cu:\d+ `\+\+bins\["):
        CudaExecutor(program, driver=EmulatorDriver(program, "race")).run([histogram_inputs()])


@requires_gxx
def test_dynamic_shared_memory_past_the_launchs_size_is_reported_in_bounds_mode():
    program = histogram_program(shared_bytes=4 * BINS - 4)  # one bin short
    with pytest.raises(
        KernelBoundsError,
        match=rf"out-of-bounds write in kernel k0_histogram: dynamic shared memory \({4 * BINS - 4} bytes\) at byte "
        rf"{4 * BINS - 4}, at kiln_module\.cu:\d+ `for \(int b",
    ):
        CudaExecutor(program, driver=EmulatorDriver(program, "bounds")).run([histogram_inputs()])


# -- what orders memory under ThreadSanitizer: barriers, not shuffles --------------------------------

# Two warps: each thread stores to shared memory, its warp sums x with shuffles, then it reads
# another thread's store (READ: of a lane of its own warp, or of the other warp). On the device only
# the __syncthreads orders the store before the read; the shuffles between them order nothing.
SHUFFLES = """
#include "prelude.h"

extern "C" __global__ void k0_lanes(const float* __restrict__ x, float* __restrict__ y) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = 2.0f * x[t];
  float total = x[t];
  SKIP for (int m = 16; m > 0; m >>= 1) total += __shfl_xor_sync(0xffffffffu, total, m);
  __syncthreads();
  y[t] = READ + total;
}
"""
LANES = 64


def shuffles_program(read: str = "s[t ^ 1] + s[t ^ 32]", barrier: bool = True, skip: str = "") -> Program:
    source = SHUFFLES.replace("READ", read).replace("SKIP", skip)
    if not barrier:
        source = source.replace("__syncthreads();", "/* barrier dropped */")
    buffers = (BufferSpec("x", "float32", (LANES,), "input"), BufferSpec("y", "float32", (LANES,), "output"))
    return Program(
        name="shuffles",
        buffers=buffers,
        inputs=(0,),
        outputs=(1,),
        constants={},
        launches=(Launch("k0_lanes", (0, 1), writes=(1,), grid=(2, 1, 1), block=(LANES, 1, 1)),),
        arena_bytes=0,
        target="cuda",
        code={"cuda_source": source, "prelude": PRELUDE.read_text(), "cubins": {"sm_80": ""}},
    )


def _run_shuffles(program: Program, mode: str, timeout: float = 20.0) -> np.ndarray:
    x = np.arange(LANES, dtype=np.float32)
    return CudaExecutor(program, driver=EmulatorDriver(program, mode, timeout)).run([x])[0]


@requires_gxx
@pytest.mark.parametrize("mode", ["plain", "race"])
def test_shuffles_and_a_barrier_are_race_free_and_exact(mode):
    """The shuffles' own value exchange is no race, and the barrier orders the stores (also for
    the second block, which reuses the first one's shared memory)."""
    x = np.arange(LANES, dtype=np.float32)
    sums = np.repeat([x[:32].sum(), x[32:].sum()], 32)
    t = np.arange(LANES)
    np.testing.assert_array_equal(_run_shuffles(shuffles_program(), mode), 2 * x[t ^ 1] + 2 * x[t ^ 32] + sums)


@requires_gxx
@pytest.mark.parametrize("read", ["s[t ^ 1]", "s[t ^ 32]"], ids=["a lane of the same warp", "a lane of the other warp"])
def test_shuffles_do_not_order_memory_in_race_mode(read):
    """Without the barrier, a store read by another lane is a race though shuffles come between:
    the emulator's shuffles wait on the block's mutex, which ThreadSanitizer must not see."""
    with pytest.raises(KernelRaceError, match=r"data race in kernel k0_lanes: .*kiln_module\.cu:\d+ `.*s\[") as error:
        _run_shuffles(shuffles_program(read, barrier=False), "race")
    assert len(re.findall(r"kiln_module\.cu:\d+ `", str(error.value).splitlines()[0])) == 2


@requires_gxx
def test_a_shuffle_one_lane_skips_is_reported_as_a_deadlock_in_race_mode():
    program = shuffles_program(skip="if (t != 3)")
    with pytest.raises(
        KernelDeadlockError,
        match=r"kernel k0_lanes, block \(0,0,0\): deadlock: 33 thread\(s\) wait at __syncthreads, 31 at a warp "
        r"shuffle, and 0 finished",
    ):
        _run_shuffles(program, "race", timeout=5.0)


# -- warp votes ----------------------------------------------------------------------------------

# One block of 48 threads: a full warp and a partial one of 16 lanes. Each lane votes on its value.
VOTES = """
#include "prelude.h"

extern "C" __global__ void k0_votes(const int32_t* __restrict__ x, uint32_t* __restrict__ ballot,
                                    int32_t* __restrict__ any, int32_t* __restrict__ all) {
  const int t = threadIdx.x;
  const unsigned b = __ballot_sync(0xFFFFFFFFu, x[t] > 0);
  const int a = __any_sync(0xFFFFFFFFu, x[t] > 0), e = __all_sync(0xFFFFFFFFu, x[t] > 0);
  if (t % 32 == 0) { ballot[t / 32] = b; any[t / 32] = a; all[t / 32] = e; }
}
"""


def votes_program() -> Program:
    buffers = (
        BufferSpec("x", "int32", (48,), "input"),
        BufferSpec("ballot", "uint32", (2,), "output"),
        BufferSpec("any", "int32", (2,), "output"),
        BufferSpec("all", "int32", (2,), "output"),
    )
    launch = Launch("k0_votes", (0, 1, 2, 3), writes=(1, 2, 3), grid=(1, 1, 1), block=(48, 1, 1))
    code = {"cuda_source": VOTES, "prelude": PRELUDE.read_text(), "cubins": {"sm_80": ""}}
    return Program("votes", buffers, (0,), (1, 2, 3), {}, (launch,), 0, code, "cuda")


@requires_gxx
@pytest.mark.parametrize("mode", ["plain", "race"])
def test_warp_votes_count_the_lanes_of_full_and_partial_warps(mode):
    program = votes_program()
    x = np.zeros(48, np.int32)
    x[[0, 5, 31]] = 1  # the full warp: three lanes vote yes
    x[32:] = 1  # the partial warp (16 lanes): all do
    ballot, any_, all_ = CudaExecutor(program, driver=EmulatorDriver(program, mode)).run([x])
    assert ballot.tolist() == [(1 << 0) | (1 << 5) | (1 << 31), 0xFFFF]
    assert any_.tolist() == [1, 1] and all_.tolist() == [0, 1]
