"""Run a graph the way a backend would, but through the kernel-IR interpreter: fuse it, lower
every `fused` node to a kernel with `backends.lowering.group.lower_group`, and run the kernels
in order with `ir.loop.run_kernel` on numpy buffers. The tests of the lowering compare what this
gives with the graph interpreter (`ir.run`), and `assert_close` states how close is close.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from backends.lowering.group import lower_group
from ir import DType, Graph, Value, run_all
from ir.loop import Kernel, run_kernel
from passes import make_pass

_GARBAGE = 123
"""Output buffers start filled with this, so an element a kernel forgets to write shows up."""


def lower_graph(graph: Graph, *, fuse: bool = True) -> tuple[Graph, list[Kernel]]:
    """The fused graph and the kernel of each of its `fused` nodes, in launch order."""
    fused = make_pass("fuse").run(graph) if fuse else graph
    kernels = [lower_group(node, f"k{i}_{node.attrs['body'].name}") for i, node in enumerate(_fused_nodes(fused))]
    return fused, kernels


def run_lowered(graph: Graph, inputs: Sequence[np.ndarray], *, fuse: bool = True) -> list[np.ndarray]:
    """The outputs of `graph` computed by its lowered kernels."""
    fused, kernels = lower_graph(graph, fuse=fuse)
    env: dict[Value, np.ndarray] = {v: _contiguous(a) for v, a in zip(fused.inputs, inputs)}
    kernel_of = dict(zip(_fused_nodes(fused), kernels))
    for node in fused.nodes:
        if node.op == "const":
            env[node.outputs[0]] = _contiguous(fused.constants[node.attrs["name"]])
            continue
        if node.op != "fused":
            raise AssertionError(f"fuse left a {node.op} node outside every kernel")
        outputs = [_garbage(v) for v in node.outputs]
        run_kernel(kernel_of[node], [*(env[v] for v in node.inputs), *outputs])
        env.update(zip(node.outputs, outputs))
    return [env[v] for v in fused.outputs]


def _fused_nodes(graph: Graph) -> list:
    return [node for node in graph.nodes if node.op == "fused"]


def _garbage(value: Value) -> np.ndarray:
    return np.full(value.type.shape, _GARBAGE).astype(value.type.dtype.numpy)


_PRECISION = {DType.f16: 11, DType.bf16: 8}
"""Significant bits of the low-precision floats: one ulp of x is 2**(exponent(x) - bits)."""


def assert_close(
    actual: np.ndarray,
    expected: np.ndarray,
    dtype: DType,
    what: str = "",
    *,
    scale: float = 1,
) -> None:
    """`actual` matches `expected`: exactly for integers and bools; for floats nan matches nan,
    infinities match exactly, and finite values agree within
    - f32/f64: rtol 1e-5 and atol 1e-5 times the output's largest magnitude (the kernels sum in
      loop order, numpy pairwise or through BLAS; formulas like gelu and erf round differently);
    - f16/bf16: two units in the last place of the storage type at the expected value (an f32
      result that differs in its last bits may round either way, at each intermediate that is
      rounded to the storage type), plus the same magnitude-relative atol.
    `scale` widens every bound (ill-conditioned inputs: see `conditioning`)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    if not dtype.is_float:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: nan positions differ")
    finite = np.isfinite(e)
    np.testing.assert_array_equal(a[~finite & ~np.isnan(e)], e[~finite & ~np.isnan(e)], err_msg=f"{what}: infinities")
    magnitude = max(float(np.abs(e[finite]).max()) if finite.any() else 1.0, 1.0)
    if dtype in _PRECISION:  # (frexp's exponent of 0 is 0, which would make zero's ulp that of 0.5..1)
        relative = 2 * np.ldexp(1.0, np.frexp(e)[1] - _PRECISION[dtype]) * (e != 0)
    else:
        relative = 1e-5 * np.abs(e)
    bound = 1e-5 * magnitude + relative
    bound = np.where(finite, bound * scale, 0)
    with np.errstate(invalid="ignore"):  # inf - inf where e is not finite; those are masked
        bad = finite & ~(np.abs(a - e) <= bound)
    if bad.any():
        where = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {e.size} elements differ beyond the tolerance of {dtype}; first at "
            f"{where}: {a[where]!r} (lowered) vs {e[where]!r} (interpreter), bound {bound[where]:.3g}\n"
            f"lowered: {actual!r}\ninterpreter: {expected!r}"
        )


def _contiguous(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, order="C")  # not ascontiguousarray, which makes 0-d arrays 1-d


def conditioning(graph: Graph, inputs: Sequence[np.ndarray]) -> float:
    """How much `graph`'s float results may legitimately differ beyond `assert_close`'s bounds,
    as a factor: layer_norm and group_norm of nearly constant data divide a difference of the
    summation order (n * f32 rounding * |x| in the centred values) by sqrt(variance + epsilon),
    which is as small as sqrt(epsilon) when the data is constant; the weight scales it again."""
    env = run_all(graph, inputs)
    factor = 1.0
    for node in graph.nodes:
        if node.op not in ("layer_norm", "group_norm"):
            continue
        x = env[node.inputs[0]].astype(np.float64)
        if node.op == "layer_norm":
            sets = x.reshape(math.prod(x.shape[: node.attrs["axis"] % x.ndim]), -1)
        else:
            sets = x.reshape(x.shape[0] * node.attrs["num_groups"], -1)
        weight = np.abs(env[node.inputs[1]].astype(np.float64)).max() if len(node.inputs) > 1 else 1.0
        with np.errstate(invalid="ignore", over="ignore"):  # inf or nan data: nothing to compare there anyway
            peak, variance = np.abs(sets).max(axis=1), sets.var(axis=1)
            spread = np.nan_to_num(sets.shape[1] * 2.0**-24 * peak / np.sqrt(variance + node.attrs["epsilon"]))
        factor *= max(1.0, float(spread.max()) * max(float(weight), 1.0) / 1e-5)
    for node in graph.nodes:
        factor *= _condition_number(node, env)
    return factor


def _condition_number(node, env) -> float:
    """How much a unary float op amplifies a relative change of its input, measured on the data
    (tan near a pole, log near 1, ...): a different summation order upstream (a conv, a sum)
    changes its input by a few ulps, which such an op may turn into a visible difference."""
    from ir import OpKind, get_op

    definition = get_op(node.op)
    if definition.kind is not OpKind.ELEMENTWISE or len(node.inputs) != 1 or node.op == "cast":
        return 1.0
    if not (node.inputs[0].type.dtype.is_float and node.outputs[0].type.dtype.is_float):
        return 1.0
    x = env[node.inputs[0]].astype(np.float64)
    step = 1e-6
    with np.errstate(all="ignore"):
        (y,) = definition.run_reference([x], node.attrs)
        (moved,) = definition.run_reference([x * (1 + step)], node.attrs)
        change = np.abs(np.asarray(moved, np.float64) - np.asarray(y, np.float64))
        peak = np.nanmax(np.abs(np.where(np.isfinite(y), y, np.nan))) if np.isfinite(y).any() else 0.0
    change = change[np.isfinite(change)]
    if change.size == 0 or peak == 0:
        return 1.0
    return max(1.0, float(change.max()) / (step * peak))


def has_undefined_cast(graph: Graph, inputs: Sequence[np.ndarray]) -> bool:
    """Whether `graph` casts a float that no integer holds (nan, inf, out of range) to an
    integer type: C leaves that undefined, numpy gives what the CPU gives, and the kernel
    interpreter refuses it, so such inputs say nothing about the lowering."""
    env = run_all(graph, inputs)
    for node in graph.nodes:
        if node.op != "cast" or not node.outputs[0].type.dtype.is_integer:
            continue
        if not node.inputs[0].type.dtype.is_float:
            continue
        x = np.trunc(env[node.inputs[0]].astype(np.float64))
        info = np.iinfo(node.outputs[0].type.dtype.numpy)
        if not (np.isfinite(x) & (x >= info.min) & (x <= info.max)).all():
            return True
    return False
