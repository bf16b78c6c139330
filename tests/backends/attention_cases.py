"""Attention cases the CPU and GPU attention-template tests share: the graph of one
scaled_dot_product_attention and inputs for it (bool masks mostly allowing, one query row that
may attend nothing; float masks shutting some keys out with -inf)."""

from __future__ import annotations

import numpy as np

from ir import DType, Graph, GraphBuilder

SDPA = "scaled_dot_product_attention"
BATCH, HEADS = 2, 2


def attention_graph(length: int, source: int, features: int, dtype: DType, causal: bool, mask: str | None,
                    scale: float | None = None, value_features: int | None = None) -> Graph:  # fmt: skip
    """q [2,2,L,E], k [2,2,S,E], v [2,2,S,Ev]; a bool mask [2,1,L,S] (broadcast over heads) or a
    float mask [L,S]."""
    builder = GraphBuilder("attention")
    q = builder.input("q", (BATCH, HEADS, length, features), dtype)
    k = builder.input("k", (BATCH, HEADS, source, features), dtype)
    v = builder.input("v", (BATCH, HEADS, source, value_features or features), dtype)
    masks = {"bool": ((BATCH, 1, length, source), DType.bool), "float": ((length, source), dtype)}
    extra = [builder.input("mask", *masks[mask])] if mask else []
    return builder.build(builder.op(SDPA, q, k, v, *extra, causal=causal, scale=scale))


def attention_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        shape, dtype = value.type.shape, value.type.dtype
        if dtype == DType.bool:  # mostly allowed; the last query row of batch 0 may attend nothing
            allowed = rng.random(shape) < 0.7
            allowed[0, :, -1, :] = False
            arrays.append(allowed)
        elif value.name == "mask":  # additive: some keys shut out with -inf, the rest shifted
            arrays.append(np.where(rng.random(shape) < 0.2, -np.inf, rng.uniform(-1, 1, shape)).astype(dtype.numpy))
        else:
            arrays.append(rng.uniform(-2, 2, shape).astype(dtype.numpy))
    return arrays
