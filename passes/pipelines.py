"""The default pipeline per target and optimisation level, as pipeline text so that it reads
as a list of named steps and `irdump -O2` prints what it runs.

- O0: nothing; the graph as imported.
- O1: clean-ups that never change a value: exact simplifications, fold what is constant,
  merge duplicates, then drop what no output needs.
- O2: first, Q/DQ patterns of quantized models onto integer matmuls (`fuse_qdq`); then the same with
  every simplification, including the ones that round differently
  (batch-norm folded into conv/gemm, x + 0.0 -> x); then lower precision when asked (the only
  step that changes values on purpose); for the CPU, store constant GEMM weights the way its
  micro-kernel reads them (`layout`); then fuse nodes into kernels (last, so it groups the final
  graph).
"""

from __future__ import annotations

from passes.manager import Pass, parse_pipeline

# Each step, in order, and why it sits where it does.
_CLEANUP = [
    "fold_constants",  # evaluate constant subgraphs at compile time
    "cse",  # merge nodes that compute the same thing
    "prune_dead_nodes",  # drop what the steps above left unused
]
_PRECISION = {
    "fp32": None,
    "bf16": "lower_precision{dtype=bf16}",
    "fp16": "lower_precision{dtype=f16}",
    # int8 (passes.quantize): matmuls and linear layers on int8 weights; static takes `calibration`
    "int8-weight": "quantize{mode=weight}",
    "int8-dynamic": "quantize{mode=dynamic}",
    "int8-static": "quantize{mode=static}",
}


def default_pipeline(target: str = "reference", opt_level: int = 2, precision: str = "fp32") -> list[Pass]:
    """The passes `compile` runs for `target` at `opt_level` (0-3) and `precision`."""
    if opt_level not in (0, 1, 2, 3):
        raise ValueError(f"opt_level must be 0, 1, 2 or 3, got {opt_level!r}")
    if precision not in _PRECISION:
        raise ValueError(f"precision must be one of {', '.join(_PRECISION)}, got {precision!r}")
    if opt_level == 0:
        return []
    # Simplify first: it exposes constants and duplicates to the clean-up steps.
    steps = ["canonicalize{exact_only=true}" if opt_level == 1 else "canonicalize", *_CLEANUP]
    if opt_level >= 2:
        # Q/DQ models (ONNX Runtime's QDQ format) onto integer matmuls (passes.qdq); before folding, which
        # would turn a dequantized int8 weight into a float one. Reassociating, so not at O1.
        steps.insert(0, "fuse_qdq")
        if _PRECISION[precision]:
            # lowering leaves cast pairs, quantizing zero-point constants, to merge; no fold_constants after
            # quantize, which would turn a weight-only model's int8 weights back into f32 ones
            steps += [_PRECISION[precision], "cse", "prune_dead_nodes"]
        if target == "cpu":
            steps.append("layout")  # after lowering precision, so a weight's cast follows it
        steps.append("fuse")
    return parse_pipeline(",".join(steps))
