"""The memory plan: buffers alive at the same launch never share bytes, offsets are aligned,
everything fits the arena, and liveness lets the arena be smaller than the buffers' sum."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runtime import BufferSpec, Launch, lifetimes_from_launches, plan_arena, plan_memory


@st.composite
def buffers_and_lifetimes(draw):
    n_launches = draw(st.integers(1, 12))
    count = draw(st.integers(0, 25))
    sizes = draw(st.lists(st.integers(0, 5000), min_size=count, max_size=count))
    lifetimes = []
    for _ in range(count):
        if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
            lifetimes.append(None)  # a buffer no launch uses
        else:
            first = draw(st.integers(0, n_launches - 1))
            lifetimes.append((first, draw(st.integers(first, n_launches - 1))))
    return sizes, lifetimes


@given(buffers_and_lifetimes(), st.sampled_from([1, 16, 64]))
def test_live_buffers_never_overlap(case, alignment):
    sizes, lifetimes = case
    offsets, arena = plan_memory(sizes, lifetimes, alignment)
    assert len(offsets) == len(sizes)
    for i, (offset, size) in enumerate(zip(offsets, sizes)):
        assert offset % alignment == 0
        assert offset + size <= arena
        for j in range(i):
            if lifetimes[i] and lifetimes[j] and sizes[i] and sizes[j]:
                live_together = lifetimes[i][0] <= lifetimes[j][1] and lifetimes[j][0] <= lifetimes[i][1]
                apart = offset + size <= offsets[j] or offsets[j] + sizes[j] <= offset
                assert apart or not live_together, (i, j)
    rounded = [-(-size // alignment) * alignment for size in sizes]
    assert arena <= sum(rounded)


def test_a_chain_reuses_memory():
    """Ten buffers, each live for two consecutive launches: two slots are enough."""
    sizes = [1000] * 10
    lifetimes = [(k, k + 1) for k in range(10)]
    offsets, arena = plan_memory(sizes, lifetimes)
    assert arena == 2 * 1024  # 1000 rounded up to 64
    assert sum(sizes) > arena
    assert len(set(offsets)) == 2


def test_best_fit_takes_the_smallest_gap_that_fits():
    """Long-lived A, C, E with the slots of B (512 bytes) and D (192) free after launch 0: a
    128-byte buffer born at launch 3 goes into D's slot, the smaller gap, and adds nothing."""
    sizes = [1024, 512, 256, 192, 128, 128]
    lifetimes = [(0, 5), (0, 0), (0, 5), (0, 0), (0, 5), (3, 5)]
    offsets, arena = plan_memory(sizes, lifetimes)
    assert offsets[:5] == [0, 1024, 1536, 1792, 1984]
    assert offsets[5] == offsets[3]
    assert arena == 2112


def test_lifetimes_span_first_to_last_use():
    launches = [Launch("k", (0, 1)), Launch("k", (1, 2)), Launch("k", (2, 0))]
    assert lifetimes_from_launches(launches, 4) == [(0, 2), (0, 1), (1, 2), None]


def test_plan_arena_keeps_intermediate_outputs_alive_to_the_end():
    f32 = "float32"
    buffers = (
        BufferSpec("x", f32, (16,), "input"),
        BufferSpec("a", f32, (16,), "intermediate"),  # also an output: must survive launch 2
        BufferSpec("b", f32, (16,), "intermediate"),
        BufferSpec("c", f32, (16,), "intermediate"),
    )
    launches = (Launch("k", (0, 1)), Launch("k", (1, 2)), Launch("k", (2, 3)))
    planned, arena = plan_arena(buffers, launches, outputs=(1, 3))
    a, b, c = planned[1:]
    assert planned[0].offset is None
    assert len({a.offset, b.offset, c.offset}) == 3 and arena == 3 * 64
    planned, arena = plan_arena(buffers, launches, outputs=(3,))
    assert planned[1].offset == planned[3].offset and arena == 2 * 64
