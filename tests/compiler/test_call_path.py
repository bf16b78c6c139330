"""The call path of a model compiled for the CPU (`compiler.calls`): calls that fit take the short
path and give what the general path gives; outputs are fresh each call, torch tensors go in and
come out without copies; every call that does not fit (strided or wrong-typed tensors, keyword
arguments, nested arguments) takes the general path, which converts or raises as it always did."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

import compiler
import ir
from compiler.calls import CpuCall, positional_inputs
from compiler.errors import InputMismatchError
from ir import DType, GraphBuilder


class TwoHeads(nn.Module):
    """Two inputs, two outputs: (relu(x @ W + b) + y, sum over rows of x)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(x)) + y, x.sum(dim=0)


@pytest.fixture(scope="module")
def two_heads():
    torch.manual_seed(0)
    module = TwoHeads().eval()
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    return module, (x, y), compiler.compile(module, (x, y), target="cpu")


class Counting:
    """Wraps an executor method to count the calls that reach it."""

    def __init__(self, monkeypatch, executor, name: str) -> None:
        self.calls = 0
        method = getattr(executor, name)

        def counted(*args):
            self.calls += 1
            return method(*args)

        monkeypatch.setattr(executor, name, counted)


def _expected(module, x, y):
    with torch.no_grad():
        return module(x, y)


def _add_graph(dtype: DType) -> ir.Graph:
    b = GraphBuilder("add")
    x = b.input("x", (3, 5), dtype)
    y = b.input("y", (3, 5), dtype)
    return b.build(b.add(x, y))


def test_tensors_take_the_short_path_and_match_eager(two_heads, monkeypatch):
    module, (x, y), fast = two_heads
    run_at = Counting(monkeypatch, fast.executor, "run_at")
    for _ in range(3):
        out, total = fast(x, y)
        expected_out, expected_total = _expected(module, x, y)
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(total, expected_total, rtol=1e-5, atol=1e-6)
    assert run_at.calls == 3 and isinstance(fast._short_call, CpuCall)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (4, 8)


def test_arrays_take_the_short_path_and_give_what_tensors_give(two_heads, monkeypatch):
    _, (x, y), fast = two_heads
    run = Counting(monkeypatch, fast.executor, "run_checked")  # every run goes through it
    out, total = fast(x.numpy(), y.numpy())
    assert run.calls == 1 and isinstance(out, np.ndarray) and isinstance(total, np.ndarray)
    tensor_out, tensor_total = fast(x, y)
    np.testing.assert_array_equal(out, tensor_out.numpy())
    np.testing.assert_array_equal(total, tensor_total.numpy())


def test_outputs_are_fresh_each_call_and_own_their_memory(two_heads):
    _, (x, y), fast = two_heads
    first, first_total = fast(x, y)
    kept = first.clone()
    second, _ = fast(x + 1, y)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # the second call wrote elsewhere
    pointers = {first.data_ptr(), first_total.data_ptr(), second.data_ptr(), x.data_ptr(), y.data_ptr()}
    assert len(pointers) == 5
    first.add_(1)  # the caller may write its outputs: nothing of the executor's is behind them
    torch.testing.assert_close(fast(x, y)[0], kept, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda x, y: (x.t().contiguous().t(), y),  # strided (a transposed view): copied by the general path
        lambda x, y: (x.requires_grad_(True), y),  # detached by the general path
        lambda x, y: (torch.stack([x, x])[1], y),  # a view at an offset into a larger tensor
        lambda x, y: (x, y.numpy()),  # a tensor and an array: outputs are tensors
        lambda x, y: (nn.Parameter(x.clone()), y),  # a Tensor subclass
    ],
    ids=["strided", "requires_grad", "offset_view", "mixed", "parameter"],
)
def test_calls_that_do_not_fit_exactly_still_give_the_right_answer(two_heads, make):
    module, (x, y), fast = two_heads
    x, y = x.clone(), y.clone()
    expected_out, expected_total = _expected(module, x, y)
    out, total = fast(*make(x, y))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, expected_total, rtol=1e-5, atol=1e-6)


def test_keyword_arguments_take_the_general_path(monkeypatch):
    graph = _add_graph(DType.f32)
    fast = compiler.compile(graph, target="cpu")
    x, y = np.arange(15, dtype=np.float32).reshape(3, 5), np.ones((3, 5), np.float32)
    run = Counting(monkeypatch, fast.executor, "run")
    np.testing.assert_array_equal(fast(x, y=y), x + y)
    assert run.calls == 1  # the general path's executor.run, after the frontend matched names
    np.testing.assert_array_equal(fast(y=y, x=x), x + y)


BAD_CALLS = [
    (lambda x, y: (x.double(), y), "input 0 (%x) expects f32[4,8], got f64[4,8]: convert it with .astype('float32')"),
    (lambda x, y: (x, y[:3]), "input 1 (%y) expects f32[4,8], got f32[3,8]: the shapes were fixed"),
    (lambda x, y: (x.numpy().astype(np.float16), y.numpy()), "input 0 (%x) expects f32[4,8], got f16[4,8]"),
    (lambda x, y: (x.numpy()[:, :4], y.numpy()), "input 0 (%x) expects f32[4,8], got f32[4,4]"),
    (lambda x, y: (x,), "structured as (('*', '*'), {}) (* = a leaf), got (('*',), {})"),
]


@pytest.mark.parametrize(("make", "message"), BAD_CALLS)
def test_wrong_inputs_raise_what_the_general_path_raises(two_heads, make, message):
    _, (x, y), fast = two_heads
    with pytest.raises(InputMismatchError) as error:
        fast(*make(x, y))
    assert message in str(error.value)


def test_bf16_moves_as_its_bits_both_ways():
    graph = _add_graph(DType.bf16)
    fast = compiler.compile(graph, target="cpu")
    x = np.linspace(-2, 2, 15).astype(ml_dtypes.bfloat16).reshape(3, 5)
    y = np.full((3, 5), 0.5, dtype=ml_dtypes.bfloat16)
    (expected,) = ir.run(graph, [x, y])
    out = fast(x, y)
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))
    tensors = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) for a in (x, y)]
    result = fast(*tensors)
    assert result.dtype == torch.bfloat16
    np.testing.assert_array_equal(result.view(torch.int16).numpy().view(np.uint16), expected.view(np.uint16))


def test_a_loaded_model_takes_the_short_path(two_heads, tmp_path, monkeypatch):
    _, (x, y), fast = two_heads
    fast.save(str(tmp_path / "two_heads.kiln"))
    loaded = compiler.load(str(tmp_path / "two_heads.kiln"))
    run_at = Counting(monkeypatch, loaded.executor, "run_at")
    for got, want in zip(loaded(x, y), fast(x, y), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert run_at.calls == 1


class Nested(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor], scale: int) -> torch.Tensor:
        return pair[0] * scale + pair[1]


def test_nested_or_compiled_in_arguments_take_the_general_path():
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    fast = compiler.compile(Nested(), ((x, y), 3), target="cpu")
    assert not positional_inputs(fast.imported.flatten_inputs, len(fast.graph.inputs))
    torch.testing.assert_close(fast((x, y), 3), x * 3 + y)
    assert fast._short_call is False
    with pytest.raises(InputMismatchError, match="non-tensor inputs are compiled in"):
        fast((x, y), 4)
