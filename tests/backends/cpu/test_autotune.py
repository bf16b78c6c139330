"""The GEMM autotuner (`backends.cpu.autotune`): its disk cache round-trips and is keyed by the
host's features; a tuned choice reaches the kernel (a fake timer that prefers another candidate
changes the kernel's tiles) and a warm cache compiles without timing anything; every candidate
it may pick computes the same product (against the graph interpreter); the real timer works."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import compiler
import ir
from backends.cpu import autotune
from backends.cpu.autotune import Autotuner, candidates, load_tiles, store_tiles
from backends.lowering.templates_gemm import GemmShape, GemmTiles, choose_tiles, override_tiles
from ir import DType, GraphBuilder
from runtime.cpu import limit_isa
from runtime.disk_cache import cache_path, write_entry

_SHAPE = GemmShape(1, 96, 128, 80, DType.f32)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test tunes into an empty cache of its own, with the tuner off unless it asks."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(autotune.AUTOTUNE_ENVIRONMENT_VARIABLE, raising=False)


def _matmul(m: int, k: int, n: int, batch: int = 0) -> tuple[ir.Graph, list[np.ndarray]]:
    rng = np.random.default_rng(m * 1000 + n)
    lead = (batch,) if batch else ()
    builder = GraphBuilder("mm")
    a, b = builder.input("a", (*lead, m, k)), builder.input("b", (*lead, k, n))
    inputs = [rng.uniform(-1, 1, v.type.shape).astype(np.float32) for v in (a, b)]
    return builder.build(builder.matmul(a, b)), inputs


def _assert_matches_interpreter(got: np.ndarray, graph: ir.Graph, inputs: list[np.ndarray], depth: int) -> None:
    (expected,) = ir.run(graph, inputs, oracle=True)
    # |a|, |b| <= 1: a K-term f32 sum is within ~K units of roundoff of the exact one
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * (depth + 2) * 2.0**-24 * depth)


def _tile_sizes(compiled) -> set[int]:
    """The sizes of the kernel's local f32 buffers: the accumulator tile is MR x NR."""
    return {int(size) for text in compiled.kernels.values() for size in re.findall(r"local t\d+: f32\[(\d+)\]", text)}


# -- the cache ------------------------------------------------------------------------------------


def test_stored_tiles_load_back_and_only_for_their_shape_and_features():
    tiles = GemmTiles(mr=4, nr=32, block_tiles=8, pack_b=True)
    assert load_tiles(_SHAPE) is None
    store_tiles(_SHAPE, tiles, {tiles: 1e-3, choose_tiles(_SHAPE): 2e-3})
    assert load_tiles(_SHAPE) == tiles
    assert load_tiles(dataclasses.replace(_SHAPE, k=81)) is None
    with limit_isa("avx2"):  # code for other features is tuned apart
        assert load_tiles(_SHAPE) is None


def test_a_corrupt_or_unreadable_entry_reads_as_missing():
    name = autotune.cache_name(_SHAPE)
    write_entry(name, b'{"tiles": {"mr": 0}}')  # a valid checksum, tiles the template refuses
    assert load_tiles(_SHAPE) is None
    assert not cache_path(name).exists()
    store_tiles(_SHAPE, GemmTiles(mr=4), {})
    path = cache_path(name)
    path.write_bytes(path.read_bytes()[:-3])  # truncated: fails its checksum
    assert load_tiles(_SHAPE) is None


# -- the seam -------------------------------------------------------------------------------------


def _prefer(wanted: GemmTiles, timed: list):
    def timer(shape: GemmShape, tiles: GemmTiles) -> float:
        timed.append(tiles)
        return 1.0 if tiles == wanted else 2.0

    return timer


def test_the_tuned_tiles_reach_the_kernel_and_a_warm_cache_times_nothing(monkeypatch):
    graph, inputs = _matmul(96, 80, 128)
    default = compiler.compile(graph, target="cpu")
    assert 6 * 64 in _tile_sizes(default)  # the cost model's 6 x 64 tile
    wanted = next(c for c in candidates(_SHAPE) if c.mr * c.nr not in _tile_sizes(default))
    timed: list[GemmTiles] = []
    monkeypatch.setattr(autotune, "measure", _prefer(wanted, timed))
    tuned = compiler.compile(graph, target="cpu", autotune=True)
    assert timed == candidates(_SHAPE)
    assert wanted.mr * wanted.nr in _tile_sizes(tuned) and 6 * 64 not in _tile_sizes(tuned)
    _assert_matches_interpreter(tuned(*inputs), graph, inputs, 80)

    def no_timing(shape, tiles):
        raise AssertionError("a warm cache should answer without timing")

    monkeypatch.setattr(autotune, "measure", no_timing)
    monkeypatch.setenv(autotune.AUTOTUNE_ENVIRONMENT_VARIABLE, "1")  # on by the environment this time
    again = compiler.compile(graph, target="cpu")
    assert again.kernels == tuned.kernels
    assert compiler.compile(graph, target="cpu", autotune=False).kernels == default.kernels


def test_small_and_non_f32_contractions_keep_the_cost_model():
    tuner = Autotuner(timer=lambda shape, tiles: pytest.fail("nothing here is worth tuning"))
    small = GemmShape(1, 8, 8, 8, DType.f32)
    wide = dataclasses.replace(_SHAPE, dtype=DType.f64)
    assert tuner(small) == choose_tiles(small) and tuner(wide) == choose_tiles(wide)
    assert tuner.timing_runs == 0


# -- every candidate is a correct kernel ----------------------------------------------------------


@pytest.mark.parametrize("isa", ["native", "avx2"])
@pytest.mark.parametrize(("m", "k", "n", "batch"), [(100, 45, 75, 0), (50, 33, 70, 2)])
def test_every_candidate_computes_the_product(isa, m, k, n, batch):
    graph, inputs = _matmul(m, k, n, batch)
    shape = GemmShape(max(batch, 1), m, n, k, DType.f32)
    with limit_isa(isa):
        tried = candidates(shape)
        assert len(tried) >= 4
        for tiles in tried:
            with override_tiles(lambda _, tiles=tiles: tiles):
                compiled = compiler.compile(graph, target="cpu", threads=2)
            _assert_matches_interpreter(compiled(*inputs), graph, inputs, k)


def test_the_real_timer_picks_a_candidate_and_stores_it():
    tuner = Autotuner(min_flops=0)
    shape = GemmShape(1, 48, 64, 32, DType.f32)
    chosen = tuner(shape)
    assert chosen in candidates(shape) and tuner.timing_runs == len(candidates(shape))
    assert load_tiles(shape) == chosen
    assert Autotuner(timer=lambda *_: pytest.fail("cached"), min_flops=0)(shape) == chosen
