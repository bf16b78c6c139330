"""THE ATen -> IR table of the torch frontend: one entry per ATen overload Kiln imports.

Keys are the overloads as fx prints them (`aten.add.Tensor`); values are small functions in
`torch_ops_math` (elementwise, logic, reductions), `torch_ops_tensor` (views, indexing,
creation) and `torch_ops_nn` (contractions, norms, pooling, attention) that take an `Emitter`
and the node's arguments and return the IR value(s). Both import paths (torch.export and the
torch.fx fallback) produce the core ATen op set, so this one table serves both. An overload
that is not here is reported by `UnsupportedOperatorError`; adding one is one line here plus,
at most, one small function.
"""

from __future__ import annotations

from collections.abc import Callable

from compiler.frontends import torch_ops_math as math
from compiler.frontends import torch_ops_nn as nn
from compiler.frontends import torch_ops_tensor as tensor

IGNORED = frozenset(
    {
        # runtime checks export leaves in the graph; shapes are static here, so they hold
        "aten._assert_tensor_metadata.default",
        "aten._assert_scalar.default",
        "aten.sym_constrain_range_for_size.default",
        "aten._assert_async.msg",
    }
)
"""Overloads with no result that the IR needs."""


def _overloads(packet: str, names: tuple[str, ...], function: Callable) -> dict[str, Callable]:
    return {f"aten.{packet}.{name}": function for name in names}


ATEN_OPS: dict[str, Callable] = {
    # arithmetic: Tensor and Scalar overloads alike, a Python scalar becoming a constant
    **_overloads("add", ("Tensor", "Scalar"), math.binary("add")),
    **_overloads("sub", ("Tensor", "Scalar"), math.binary("sub")),
    **_overloads("rsub", ("Tensor", "Scalar"), math.reverse_sub),
    **_overloads("mul", ("Tensor", "Scalar"), math.binary("mul")),
    **_overloads("div", ("Tensor", "Scalar", "Tensor_mode", "Scalar_mode"), math.div),
    **_overloads("pow", ("Tensor_Tensor", "Tensor_Scalar", "Scalar"), math.power),
    **_overloads("remainder", ("Tensor", "Scalar"), math.remainder(fmod=False)),
    **_overloads("fmod", ("Tensor", "Scalar"), math.remainder(fmod=True)),
    "aten.maximum.default": math.binary("maximum"),
    "aten.minimum.default": math.binary("minimum"),
    # unary math and activations
    **{
        f"aten.{aten}.default": math.unary(ir)
        for aten, ir in {
            "neg": "neg",
            "abs": "abs",
            "exp": "exp",
            "log": "log",
            "sqrt": "sqrt",
            "rsqrt": "rsqrt",
            "reciprocal": "reciprocal",
            "sin": "sin",
            "cos": "cos",
            "tanh": "tanh",
            "sigmoid": "sigmoid",
            "erf": "erf",
            "floor": "floor",
            "ceil": "ceil",
            "round": "round",
            "sign": "sign",
            "relu": "relu",
            "silu": "silu",
        }.items()
    },
    "aten.gelu.default": math.gelu,
    **_overloads("clamp", ("default", "Tensor"), math.clamp),
    "aten.hardtanh.default": math.hardtanh,
    "aten.leaky_relu.default": math.leaky_relu,
    "aten.hardsigmoid.default": math.hardsigmoid,
    "aten.hardswish.default": math.hardswish,
    "aten.isnan.default": math.isnan,
    # comparisons and logic
    **_overloads("eq", ("Tensor", "Scalar"), math.compare("equal")),
    **_overloads("ne", ("Tensor", "Scalar"), math.compare("not_equal")),
    **_overloads("lt", ("Tensor", "Scalar"), math.compare("less")),
    **_overloads("le", ("Tensor", "Scalar"), math.compare("less_equal")),
    **_overloads("gt", ("Tensor", "Scalar"), math.compare("greater")),
    **_overloads("ge", ("Tensor", "Scalar"), math.compare("greater_equal")),
    "aten.logical_not.default": math.logical("not"),
    "aten.logical_and.default": math.logical("and"),
    "aten.logical_or.default": math.logical("or"),
    "aten.logical_xor.default": math.logical("xor"),
    "aten.bitwise_not.default": math.bitwise("not"),
    **_overloads("bitwise_and", ("Tensor", "Scalar"), math.bitwise("and")),
    **_overloads("bitwise_or", ("Tensor", "Scalar"), math.bitwise("or")),
    **_overloads("bitwise_xor", ("Tensor", "Scalar"), math.bitwise("xor")),
    **_overloads("where", ("self", "ScalarSelf", "ScalarOther", "Scalar"), math.where),
    **_overloads("masked_fill", ("Scalar", "Tensor"), math.masked_fill),
    # reductions and softmax
    **_overloads("sum", ("dim_IntList", "default"), math.reduce("sum")),
    **_overloads("mean", ("dim", "default"), math.reduce("mean")),
    **_overloads("prod", ("dim_int", "default"), math.reduce("prod")),
    "aten.amax.default": math.reduce("max"),
    "aten.amin.default": math.reduce("min"),
    **_overloads("any", ("dim", "dims", "default"), math.any_or_all("max")),
    **_overloads("all", ("dim", "dims", "default"), math.any_or_all("min")),
    "aten.max.dim": math.extreme_with_index("max", "argmax"),
    "aten.min.dim": math.extreme_with_index("min", "argmin"),
    "aten.argmax.default": math.arg_extreme("argmax"),
    "aten.argmin.default": math.arg_extreme("argmin"),
    "aten.var.correction": math.variance,
    "aten.cumsum.default": math.cumsum,
    "aten._softmax.default": math.softmax("softmax"),
    "aten._log_softmax.default": math.softmax("log_softmax"),
    "aten.softmax.int": math.softmax("softmax"),
    "aten.log_softmax.int": math.softmax("log_softmax"),
    # views and movement
    **{f"aten.{name}.default": tensor.identity for name in ("clone", "alias", "detach", "lift_fresh_copy")},
    "aten.contiguous.default": tensor.identity,
    **{f"aten.{name}.default": tensor.reshape for name in ("view", "_unsafe_view", "reshape")},
    "aten.flatten.using_ints": tensor.reshape,
    "aten.permute.default": tensor.permute,
    "aten.t.default": tensor.transpose,
    "aten.transpose.int": tensor.transpose,
    "aten.expand.default": tensor.expand,
    "aten.slice.Tensor": tensor.slice_,
    "aten.select.int": tensor.select,
    **_overloads("squeeze", ("default", "dim", "dims"), tensor.squeeze),
    "aten.unsqueeze.default": tensor.unsqueeze,
    "aten.cat.default": tensor.cat,
    "aten.split_with_sizes.default": tensor.split_with_sizes,
    "aten.split.Tensor": tensor.split,
    "aten.unbind.int": tensor.unbind,
    "aten.index_select.default": tensor.index_select,
    "aten.gather.default": tensor.gather,
    "aten.index.Tensor": tensor.index,
    "aten.embedding.default": tensor.embedding,
    "aten.constant_pad_nd.default": tensor.constant_pad,
    "aten.repeat.default": tensor.repeat,
    "aten._to_copy.default": tensor.cast,
    "aten.to.dtype": tensor.cast,
    # creation: the node's shape and dtype, filled
    "aten.full.default": tensor.fill(1),
    "aten.full_like.default": tensor.fill(1),
    "aten.new_full.default": tensor.fill(2),
    "aten.scalar_tensor.default": tensor.fill(0),
    **{f"aten.{name}.default": tensor.fill(None, 0.0) for name in ("zeros", "zeros_like", "new_zeros")},
    **{f"aten.{name}.default": tensor.fill(None, 1.0) for name in ("ones", "ones_like", "new_ones")},
    # empty tensors are filled with zeros: any value is right, and zeros make runs reproducible
    "aten.empty.memory_format": tensor.fill(None, 0.0),
    "aten.empty_like.default": tensor.fill(None, 0.0),
    **_overloads("arange", ("default", "start", "start_step"), tensor.arange),
    # contractions
    "aten.addmm.default": nn.addmm,
    **{f"aten.{name}.default": nn.matmul for name in ("mm", "bmm", "matmul")},
    "aten.linear.default": nn.linear,
    "aten.convolution.default": nn.convolution,
    # normalisation
    "aten._native_batch_norm_legit_no_training.default": nn.batch_norm_inference,
    "aten._native_batch_norm_legit.default": nn.batch_norm,
    "aten.native_batch_norm.default": nn.batch_norm,
    "aten.native_layer_norm.default": nn.layer_norm,
    "aten.native_group_norm.default": nn.group_norm,
    # pooling
    **{f"aten.max_pool{n}d_with_indices.default": nn.max_pool for n in (2, 3)},
    **{f"aten.max_pool{n}d.default": nn.max_pool_single for n in (1, 2, 3)},
    **{f"aten.avg_pool{n}d.default": nn.avg_pool for n in (1, 2, 3)},
    **{f"aten.{p}adaptive_avg_pool{n}d.default": nn.adaptive_avg_pool for p in ("", "_") for n in (1, 2, 3)},
    # attention, kept whole through decomposition
    "aten.scaled_dot_product_attention.default": nn.sdpa,
    "aten._scaled_dot_product_flash_attention_for_cpu.default": nn.sdpa_cpu,
    "aten._scaled_dot_product_efficient_attention.default": nn.sdpa_efficient,
    "aten._scaled_dot_product_flash_attention.default": nn.sdpa_flash,
}
"""ATen overload -> the function that emits its IR."""
