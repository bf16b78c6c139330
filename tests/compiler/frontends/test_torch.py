"""The torch frontend: each ATen mapping imported through torch.export and run on the reference
target gives torch's own results; pytree inputs and outputs keep their structure; the torch.fx
fallback takes a module export refuses; unsupported ops and bad inputs get one clear error."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.nn import functional as F

import compiler
from compiler.errors import InputMismatchError, ModelFormatError, UnsupportedOperatorError
from compiler.frontends import import_model


class Fn(nn.Module):
    """A module whose forward is `fn`: one small model per mapping under test."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def assert_matches_torch(module: nn.Module, inputs: tuple, rtol: float = 1e-5, atol: float = 1e-6):
    compiled = compiler.compile(module, inputs, target="reference")
    got = compiled(*inputs)
    with torch.no_grad():
        expected = module(*inputs)
    got_leaves, got_spec = pytree.tree_flatten(got)
    expected_leaves, expected_spec = pytree.tree_flatten(expected)
    assert got_spec == expected_spec
    for g, e in zip(got_leaves, expected_leaves):
        assert isinstance(g, torch.Tensor)
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol, equal_nan=True)
    return compiled


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


X = randn(2, 3, 4)
Y = randn(2, 3, 4, seed=1)
POS = X.abs() + 0.5
INTS = torch.tensor([[-7, -2, 0, 3], [5, 8, -9, 1]])
IMG = randn(2, 4, 8, 8)
# weights made once, outside the traced functions, so export lifts them as constants
W54, B5, W4, B4, W34 = randn(5, 4, seed=3), randn(5, seed=4), randn(4, seed=5), randn(4, seed=6), randn(3, 4, seed=7)
VAR4 = randn(4, seed=8).abs() + 0.5
K4233 = randn(4, 2, 3, 3, seed=9)

OP_FAMILIES = {
    # arithmetic, with tensor and scalar operands and torch's promotion
    "arithmetic": [
        ("add", lambda a, b: a + b, (X, Y)),
        ("add_alpha_broadcast", lambda a, b: torch.add(a, b[0, 0], alpha=2.5), (X, Y)),
        ("sub_scalar", lambda a: a - 1.5, (X,)),
        ("rsub", lambda a: 2.0 - a, (X,)),
        ("mul_int_by_float", lambda a, b: a * b[:, :4].float().sum(), (INTS, X.reshape(2, 12))),
        ("int_plus_float", lambda a, b: a + b, (INTS, randn(2, 4))),
        ("div", lambda a, b: a / b, (X, POS)),
        ("div_ints_true", lambda a: a / 2, (INTS,)),
        ("div_trunc", lambda a, b: torch.div(a, b, rounding_mode="trunc"), (X * 4, POS)),
        ("div_floor", lambda a, b: torch.div(a, b, rounding_mode="floor"), (X * 4, POS)),
        ("div_int_floor", lambda a: torch.div(a, 3, rounding_mode="floor"), (INTS,)),
        ("div_int_trunc", lambda a: torch.div(a, 3, rounding_mode="trunc"), (INTS,)),
        ("remainder", lambda a: torch.remainder(a, 3), (INTS,)),
        ("fmod", lambda a: torch.fmod(a, 3), (INTS,)),
        ("pow", lambda a: a**3 + torch.pow(2.0, a), (X,)),
        ("maximum_minimum", lambda a, b: torch.maximum(a, b) - torch.minimum(a, b), (X, Y)),
    ],
    # unary math and activations
    "unary": [
        ("exp_log_sqrt", lambda a: torch.exp(a) + torch.log(a) + torch.sqrt(a) + torch.rsqrt(a), (POS,)),
        ("neg_abs_sign", lambda a: -a + a.abs() * torch.sign(a), (X,)),
        ("trig", lambda a: torch.sin(a) * torch.cos(a) + torch.tanh(a), (X,)),
        ("floor_ceil_round", lambda a: torch.floor(a * 3) + torch.ceil(a * 3) + torch.round(a * 3), (X,)),
        ("reciprocal_erf", lambda a: torch.reciprocal(a) + torch.erf(a), (POS,)),
        ("exp_of_int", lambda a: torch.exp(a.float() / 10) + torch.sigmoid(a / 4), (INTS,)),
        ("relu_sigmoid_silu", lambda a: F.relu(a) + torch.sigmoid(a) + F.silu(a), (X,)),
        ("gelu", lambda a: F.gelu(a), (X,)),
        ("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"), (X,)),
        ("clamp", lambda a: torch.clamp(a, -0.5, 0.7) + torch.clamp(a, min=0.1), (X,)),
        ("clamp_tensor", lambda a, b: torch.clamp(a, min=b, max=b + 1), (X, Y)),
        ("hardtanh_relu6", lambda a: F.hardtanh(a, -0.3, 0.4) + F.relu6(a * 8), (X,)),
        ("leaky_relu", lambda a: F.leaky_relu(a, 0.2), (X,)),
        ("hardswish_hardsigmoid", lambda a: F.hardswish(a * 4) + F.hardsigmoid(a * 4), (X,)),
    ],
    # comparisons, logic, where
    "logic": [
        ("comparisons", lambda a, b: (a > b) | (a <= 0.3) & ~(a == b) ^ (b != 0.1), (X, Y)),
        ("compare_int_float", lambda a: a >= 2.5, (INTS,)),
        ("logical", lambda a, b: torch.logical_and(a > 0, b) | torch.logical_not(b), (X, Y > 0)),
        ("where", lambda a, b: torch.where(a > 0, a, b), (X, Y)),
        ("where_scalar", lambda a: torch.where(a > 0, a, 0.0), (X,)),
        ("masked_fill", lambda a, b: a.masked_fill(b > 0, -1e9), (X, Y)),
        ("isnan", lambda a: torch.isnan(a.log()), (X,)),
    ],
    # reductions
    "reductions": [
        ("sum_mean", lambda a: a.sum(dim=1) + a.mean(dim=(0, 1), keepdim=True), (X,)),
        ("sum_all_int", lambda a: a.sum(), (INTS,)),
        ("mean_all", lambda a: a.mean(), (X,)),
        ("amax_amin", lambda a: a.amax(dim=-1) - a.amin(dim=2), (X,)),
        ("max_dim", lambda a: a.max(dim=1).values, (X,)),
        ("argmax_argmin", lambda a: a.argmax(dim=1) + a.argmin(dim=1, keepdim=True)[:, 0], (X,)),
        ("argmax_all", lambda a: a.argmax(), (X,)),
        ("prod", lambda a: a.prod(dim=2), (X,)),
        ("any_all", lambda a: a.gt(0).any(dim=1) ^ a.gt(-1).all(dim=1), (X,)),
        ("var_std", lambda a: a.var(dim=-1) + a.std(dim=-1, unbiased=False), (X,)),
        ("cumsum", lambda a: torch.cumsum(a, dim=1), (X,)),
        ("cumsum_int", lambda a: torch.cumsum(a, dim=-1), (INTS,)),
        ("softmax", lambda a: torch.softmax(a, dim=-1) + torch.log_softmax(a, dim=1), (X,)),
    ],
    # views and movement
    "movement": [
        ("view_permute", lambda a: a.view(6, 4).t().reshape(2, -1).permute(1, 0), (X,)),
        ("transpose_contiguous", lambda a: a.transpose(0, 2).contiguous() * 2, (X,)),
        ("expand", lambda a: a[:, :1].expand(2, 5, 4) + 1, (X,)),
        ("slice_steps", lambda a: a[:, 1:, ::2] + a[:, :-1, 1::2], (X,)),
        ("slice_negative_step_free", lambda a: a[..., -3:] * a[1:, :2, :3].sum(), (X,)),
        ("select", lambda a: a[1] + a[:, -1, :].sum(), (X,)),
        ("squeeze_unsqueeze", lambda a: a[:, :1].squeeze(1).unsqueeze(-1).squeeze(), (X,)),
        ("cat", lambda a, b: torch.cat([a, b * 2, a], dim=1), (X, Y)),
        ("cat_promotes", lambda a, b: torch.cat([a, b], dim=0), (INTS, randn(1, 4))),
        ("stack", lambda a, b: torch.stack([a, b], dim=-1), (X, Y)),
        ("split_chunk", lambda a: tuple(t * (i + 1) for i, t in enumerate(a.split([1, 2], dim=1))), (X,)),
        ("chunk", lambda a: torch.chunk(a, 2, dim=-1)[1], (X,)),
        ("unbind", lambda a: sum(a.unbind(1)), (X,)),
        ("flatten", lambda a: torch.flatten(a, 1), (X,)),
        ("index_select", lambda a, i: torch.index_select(a, 1, i), (X, torch.tensor([2, 0, 2]))),
        (
            "gather",
            lambda a, i: torch.gather(a, 2, i),
            (X, torch.randint(0, 4, (2, 3, 2), generator=torch.Generator())),
        ),
        ("index_tensor", lambda a, i: a[:, i], (X, torch.tensor([[0, 2], [1, 1]]))),
        ("pad", lambda a: F.pad(a, (1, 2, 0, 1), value=0.5), (X,)),
        ("repeat", lambda a: a.repeat(2, 1, 1, 2), (X,)),
        ("to_dtype", lambda a: a.to(torch.float64) * 2 + a.to(torch.int32), (X * 3,)),
        ("to_bf16", lambda a: a.to(torch.bfloat16).float(), (X,)),
    ],
    # creation
    "creation": [
        ("full_zeros_ones", lambda a: a + torch.full((3, 4), 2.5) + torch.zeros(4) - torch.ones_like(a), (X,)),
        ("arange", lambda a: a * torch.arange(4) + torch.arange(1, 7, 2).view(1, 3, 1), (X,)),
        (
            "tril_mask",
            lambda a: a.masked_fill(torch.ones(4, 4, dtype=torch.bool).tril().logical_not(), 0),
            (randn(2, 4, 4),),
        ),
        ("new_zeros", lambda a: a.new_zeros(2, 3) + a.new_full((3,), 7.0), (X[0],)),
    ],
    # contractions
    "contractions": [
        ("matmul", lambda a, b: a @ b.transpose(1, 2), (X, Y)),
        ("matmul_broadcast", lambda a, b: torch.matmul(a, b[0].t()), (X, Y)),
        ("mm_vector", lambda a, b: a[0] @ b[0, 0], (X, Y)),
        ("linear", lambda a: F.linear(a, W54, B5), (X,)),
        ("linear_no_bias", lambda a: F.linear(a, W54), (X,)),
        ("addmm_alpha_beta", lambda a, b: torch.addmm(b[0, 0, :3], a[0], b[0].t(), beta=0.5, alpha=2.0), (X, Y)),
        ("conv2d", lambda x: F.conv2d(x, W54.view(5, 4, 1, 1).expand(5, 4, 3, 3), B5, stride=2, padding=1), (IMG,)),
        ("conv2d_groups_dilation", lambda x: F.conv2d(x, K4233, groups=2, dilation=2), (IMG,)),
        ("conv1d", lambda x: F.conv1d(x, W54[:, :3].unsqueeze(-1).repeat(1, 1, 3), padding=2), (randn(2, 3, 10),)),
        (
            "conv_transpose2d",
            lambda x: F.conv_transpose2d(x, W34.t().reshape(4, 3, 1, 1).repeat(1, 1, 3, 3), stride=2, output_padding=1),
            (IMG,),
        ),
    ],
    # normalisation
    "normalisation": [
        ("batch_norm", lambda x: F.batch_norm(x, W4, VAR4, B4, W4 + 1), (IMG,)),
        ("batch_norm_no_affine", lambda x: F.batch_norm(x, W4, VAR4), (IMG,)),
        ("layer_norm", lambda x: F.layer_norm(x, (3, 4), W34, W34 * 2, eps=1e-3), (X,)),
        ("layer_norm_no_affine", lambda x: F.layer_norm(x, (4,)), (X,)),
        ("group_norm", lambda x: F.group_norm(x, 2, W4, B4), (IMG,)),
    ],
    # pooling
    "pooling": [
        ("max_pool", lambda x: F.max_pool2d(x, 3, stride=2, padding=1), (IMG,)),
        ("max_pool_ceil_dilation", lambda x: F.max_pool2d(x, 2, stride=3, dilation=2, ceil_mode=True), (IMG,)),
        ("avg_pool", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), (IMG,)),
        ("avg_pool_exclude_pad", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (IMG,)),
        ("adaptive_avg_pool_1", lambda x: F.adaptive_avg_pool2d(x, 1), (IMG,)),
        ("adaptive_avg_pool_2", lambda x: F.adaptive_avg_pool2d(x, (2, 4)), (IMG,)),
    ],
    # embedding and attention
    "embedding_attention": [
        ("embedding", lambda i: F.embedding(i, torch.cat([W54, W54 * 2])), (torch.tensor([[1, 9, 0], [3, 3, 2]]),)),
        (
            "sdpa",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
            (randn(2, 2, 5, 4), randn(2, 2, 6, 4), randn(2, 2, 6, 3)),
        ),
        (
            "sdpa_causal_scale",
            lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True, scale=0.3),
            (randn(2, 2, 5, 4),),
        ),
        (
            "sdpa_bool_mask",
            lambda q, m: F.scaled_dot_product_attention(q, q, q, attn_mask=m),
            (randn(1, 2, 4, 4), randn(4, 4) > -0.5),
        ),
        (
            "sdpa_float_mask",
            lambda q, m: F.scaled_dot_product_attention(q, q, q, attn_mask=m),
            (randn(1, 2, 4, 4), randn(4, 4)),
        ),
        (
            "sdpa_gqa",
            lambda q, kv: F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True),
            (randn(1, 4, 3, 4), randn(1, 2, 3, 4)),
        ),
    ],
}


class Cases(nn.Module):
    """Many small cases in one module: {case: inputs} in, {case: result} out. Each export and
    decomposition costs a fixed ~0.3 s, so a family of mappings is compiled once."""

    def __init__(self, cases: list) -> None:
        super().__init__()
        self.fns = {name: fn for name, fn, _ in cases}

    def forward(self, inputs: dict):
        return {name: fn(*inputs[name]) for name, fn in self.fns.items()}


@pytest.mark.parametrize("family", list(OP_FAMILIES))
def test_aten_mappings_match_torch(family):
    cases = OP_FAMILIES[family]
    module, inputs = Cases(cases), {name: args for name, _, args in cases}
    compiled = compiler.compile(module, (inputs,), target="reference")
    got = compiled(inputs)
    with torch.no_grad():
        expected = module(inputs)
    for name in expected:
        got_leaves, got_spec = pytree.tree_flatten(got[name])
        expected_leaves, expected_spec = pytree.tree_flatten(expected[name])
        assert got_spec == expected_spec, name
        for g, e in zip(got_leaves, expected_leaves):
            assert (g.dtype, g.shape) == (e.dtype, e.shape), name
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")


def test_module_with_parameters_and_buffers_matches_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    model[1].running_mean.uniform_(-1, 1)
    model.eval()
    assert_matches_torch(model, (IMG,), rtol=1e-4, atol=1e-5)
    assert {"conv", "batch_norm", "gemm"} <= {node.op for node in import_model(model, (IMG,)).graph.nodes}


def test_layer_norm_statistics_are_imported_when_used():
    def stats(x):
        return torch.ops.aten.native_layer_norm(x, [4], None, None, 1e-5)

    assert_matches_torch(Fn(stats), (X,), atol=1e-5)


# --- pytree inputs and outputs, torch and numpy in and out ------------------------------------------------------


class DictInTupleOut(nn.Module):
    def forward(self, batch: dict, scale: torch.Tensor):
        total = batch["a"] * scale + batch["b"].sum()
        return total, {"max": total.amax(dim=-1), "pair": (batch["a"], scale + 1)}


def test_pytree_inputs_and_outputs_keep_their_structure():
    inputs = ({"a": X, "b": Y}, randn(4, seed=5))
    compiled = assert_matches_torch(DictInTupleOut(), inputs)
    total, extra = compiled({"b": Y, "a": X}, inputs[1])  # dict order does not matter
    assert isinstance(total, torch.Tensor) and set(extra) == {"max", "pair"}


def test_call_with_another_structure_is_refused():
    compiled = compiler.compile(DictInTupleOut(), ({"a": X, "b": Y}, randn(4)))
    with pytest.raises(InputMismatchError, match="structured as"):
        compiled({"a": X}, randn(4))


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    compiled = compiler.compile(Fn(lambda a: a * 2), (X,))
    from_numpy = compiled(X.numpy())
    assert isinstance(from_numpy, np.ndarray)
    np.testing.assert_array_equal(from_numpy, X.numpy() * 2)
    from_torch = compiled(X)
    assert isinstance(from_torch, torch.Tensor)
    torch.testing.assert_close(from_torch, X * 2)


def test_graph_nodes_carry_the_model_source_line():
    graph = import_model(Fn(lambda a: torch.tanh(a) + 1), (X,)).graph
    sources = {node.source for node in graph.nodes if node.op in ("tanh", "add")}
    assert all(source and source.startswith("tests/compiler/frontends/test_torch.py:") for source in sources)


# --- the torch.fx fallback ---------------------------------------------------------------------------------------


class Scaling:
    """A plain configuration object: torch.export refuses it as an input ("Unsupported input
    type ... Export only supports pytree containers of basic types"), since it is no pytree of
    tensors and constants. fx traces the module with it fixed as a concrete argument."""

    def __init__(self, factor: float, activation: str) -> None:
        self.factor = factor
        self.activation = activation


class ConfiguredBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, config: Scaling) -> torch.Tensor:
        y = self.linear(x) * config.factor
        return torch.tanh(y) if config.activation == "tanh" else F.relu(y)


def test_module_export_refuses_is_imported_through_fx(caplog):
    config = Scaling(2.5, "tanh")
    with pytest.raises(Exception, match="Unsupported input type"):
        torch.export.export(ConfiguredBlock(), (X, config))
    with caplog.at_level(logging.INFO, logger="kiln.frontends.torch"):
        compiled = assert_matches_torch(ConfiguredBlock(), (X, config))
    assert "through torch.fx (fallback path)" in caplog.text
    assert "tanh" in {node.op for node in import_model(ConfiguredBlock(), (X, config)).graph.nodes}
    with pytest.raises(InputMismatchError, match="recompile"):
        compiled(X, Scaling(2.5, "relu"))


def test_module_neither_path_can_trace_gets_one_clear_error():
    def data_dependent(x):  # Python control flow on a tensor value: export and fx both refuse
        return x * 2 if x.sum() > 0 else x.numpy()

    with pytest.raises(ModelFormatError, match=r"(?s)torch.export failed .* torch.fx could not trace it"):
        compiler.compile(Fn(data_dependent), (X,))


# --- unsupported ops and bad inputs -------------------------------------------------------------------------------


class UsesUnsupportedOps(nn.Module):
    def forward(self, x):
        top = torch.topk(x, 2).values  # aten.topk
        ordered = torch.sort(x, dim=-1).values  # aten.sort
        return top.sum() + ordered.sum() + torch.topk(x * 2, 3).values.sum() + x.flip(0).sum()


def test_unsupported_ops_are_all_listed_with_counts_nodes_and_lines():
    with pytest.raises(UnsupportedOperatorError) as caught:
        compiler.compile(UsesUnsupportedOps(), (X,))
    message = str(caught.value)
    assert "3 op(s)" in message
    assert "aten.topk.default x2" in message
    assert "aten.sort.default x1" in message
    assert "aten.flip.default x1" in message
    line = UsesUnsupportedOps.forward.__code__.co_firstlineno
    assert f"test_torch.py:{line + 1}" in message  # topk
    assert f"test_torch.py:{line + 2}" in message  # sort
    assert {u.op for u in caught.value.unsupported} == {"aten.topk.default", "aten.sort.default", "aten.flip.default"}


def _training_batch_norm():
    return nn.BatchNorm2d(4).train(), (IMG,)


BAD_MODELS = [
    ("int16 input", Fn(lambda a: a + 1), (INTS.to(torch.int16),), UnsupportedOperatorError, "dtype torch.int16"),
    ("integer pow", Fn(lambda a: a**2), (INTS,), UnsupportedOperatorError, "integer power"),
    ("bool mask index", Fn(lambda a: a[a > 0].sum()), (X,), UnsupportedOperatorError, "bool mask|aten.index"),
    ("training batch norm", *_training_batch_norm(), ModelFormatError, "mutates running_mean.*module.eval()"),
    (
        "attention dropout",
        Fn(lambda q: F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)),
        (randn(1, 1, 2, 2),),
        UnsupportedOperatorError,
        "attention dropout",
    ),
    ("missing inputs", Fn(lambda a: a), None, TypeError, "needs example_inputs"),
]


@pytest.mark.parametrize(
    ("module", "inputs", "error", "text"), [pytest.param(*case[1:], id=case[0]) for case in BAD_MODELS]
)
def test_bad_models_get_a_clear_error(module, inputs, error, text):
    with pytest.raises(error, match=text):
        compiler.compile(module, inputs)


BAD_CALLS = [
    ("wrong shape", (randn(3, 3, 4),), "expects f32\\[2,3,4\\], got f32\\[3,3,4\\]"),
    ("wrong dtype", (X.double(),), "convert it"),
    ("too many inputs", (X, X), "structured as"),
]


@pytest.mark.parametrize(("args", "text"), [pytest.param(args, text, id=name) for name, args, text in BAD_CALLS])
def test_bad_calls_get_a_clear_error(args, text):
    compiled = compiler.compile(Fn(lambda a: a + 1), (X,))
    with pytest.raises(InputMismatchError, match=text):
        compiled(*args)
