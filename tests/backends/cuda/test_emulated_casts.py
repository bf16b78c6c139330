"""Casts to bf16 in the printed CUDA C, run in the emulator, round once as ml_dtypes (>= 0.7) and
the CPU backend do: from f64 through a round-to-odd f32, from i64 through a round-to-odd double.
Rounding twice (through a nearest f32) gets values just above a bf16 tie wrong, so every case
below sits next to a tie."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ir import DType, GraphBuilder
from passes import make_pass
from runtime.cuda_emulator import emulator_unavailable
from tests.backends.cuda.emulated import emulation_program, run_emulated

pytestmark = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")

F64 = [1 + 2.0**-8 + 2.0**-40, 1 + 2.0**-8, -(1 + 2.0**-8 + 2.0**-40), 3 + 2.0**-7 + 2.0**-45, 1e300, -1e300,
       2.0**-130 + 2.0**-160, 0.1, np.inf, -np.inf, np.nan, 0.0, -0.0, 65519.9]  # fmt: skip
I64 = [2**60 + 2**52 + 1, -(2**60 + 2**52 + 1), 2**60 + 2**52, 2**53 + 2**45 + 1, 2**24 + 2**16 + 1, 2**62 + 2**54,
       -(2**63), 2**63 - 1, 0, 1, -1, 255]  # fmt: skip
I32 = [2**24 + 2**16 + 1, -(2**24 + 2**16 + 1), 2**31 - 1, -(2**31), 2**25 + 2**17 + 1, 7]


def cast_graph(name: str, dtype: DType, n: int):
    builder = GraphBuilder(name)
    x = builder.input("x", (n,), dtype)
    return builder.build(builder.cast(x, dtype=DType.bf16))


def test_casts_to_bf16_round_once_in_the_printed_cuda_c():
    cases = [(DType.f64, np.array(F64)), (DType.i64, np.array(I64, np.int64)), (DType.i32, np.array(I32, np.int32))]
    graphs = [make_pass("fuse").run(cast_graph(f"to_bf16_from_{dtype}", dtype, len(values))) for dtype, values in cases]
    results = run_emulated(emulation_program(graphs, name="casts"), graphs, [[values] for _, values in cases])
    for (dtype, values), (got,) in zip(cases, results, strict=True):
        with np.errstate(over="ignore"):
            wanted = values.astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(np.asarray(got).view(np.uint16), wanted.view(np.uint16), err_msg=f"{dtype}")
