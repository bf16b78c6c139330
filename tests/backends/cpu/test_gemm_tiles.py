"""The CPU GEMM's cost model (`templates_gemm.choose_tiles`) packs B's panel whenever two row tiles
share one larger than L1, however few rows there are (an MLP's 32 x 3072 @ 3072 x 3072 re-read
its panel from memory row tile by row tile), and not for small panels or a single row tile; up to
32 row tiles share one packed panel."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import ir
from backends.lowering.templates_gemm import GemmShape, GemmTiles, choose_tiles
from ir import DType, GraphBuilder


@pytest.mark.parametrize(
    ("m", "n", "k", "packed"),
    [
        (32, 3072, 3072, True),  # 6 row tiles share a 768 KiB panel
        (32, 3072, 768, True),
        (12, 1000, 3072, True),  # two row tiles suffice
        (6, 3072, 3072, False),  # one row tile: each panel element is read once anyway
        (32, 64, 64, False),  # a 16 KiB panel stays in L1
        (128, 768, 768, True),  # enough rows: packed as before
    ],
)
def test_small_m_packs_large_panels(m, n, k, packed):
    tiles = choose_tiles(GemmShape(1, m, n, k, DType.f32), 512)
    assert tiles.pack_b is packed
    if packed:
        assert tiles.block_tiles * tiles.mr >= min(m, 96)  # all row tiles (up to 16) share one copy


def test_a_packed_small_m_gemm_matches_the_interpreter():
    rng = np.random.default_rng(0)
    b = GraphBuilder("small_m")
    x = b.input("x", (20, 256), DType.f32)
    weight = b.constant(rng.standard_normal((80, 256)).astype(np.float32) / 16, "w")
    graph = b.build(b.gemm(x, weight, trans_b=True))
    assert choose_tiles(GemmShape(1, 20, 80, 256, DType.f32), 512) == GemmTiles(6, 64, 16, pack_b=True)
    fast = compiler.compile(graph, target="cpu")
    value = rng.standard_normal((20, 256), dtype=np.float32)
    (expected,) = ir.run(graph, [value])
    np.testing.assert_allclose(fast(value), expected, rtol=1e-5, atol=1e-5)


def test_up_to_32_row_tiles_share_a_panel_when_there_are_panels_for_the_threads():
    assert choose_tiles(GemmShape(1, 128, 3072, 768, DType.f32), 512).block_tiles == 22  # 48 panels
    assert choose_tiles(GemmShape(1, 128, 256, 768, DType.f32), 512).block_tiles == 16  # 4: keep 8 blocks
    assert choose_tiles(GemmShape(1, 1024, 1024, 1024, DType.f32), 512).block_tiles == 16  # 171 tiles
