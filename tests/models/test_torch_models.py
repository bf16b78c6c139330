"""The reference models imported through torch.export match torch on the reference target.

Tolerance: f32, rtol 1e-4 and atol 1e-5. The interpreter computes each op in f32 like torch
but sums in a different order (numpy's matmul and reductions against torch's kernels), so
results differ in the last bits; measured differences are ~5e-7 at most on these models.
"""

from __future__ import annotations

import pytest
import torch

import compiler
from compiler.frontends import import_model
from tests.models.models import MODELS

EXPECTED_OPS = {
    # each model's defining ops must survive import as IR ops, not as a decomposition of them
    "mlp": {"gemm", "gelu", "relu"},
    "resnet_cnn": {"conv", "batch_norm", "max_pool", "add", "relu", "gemm"},
    "transformer_encoder_layer": {"scaled_dot_product_attention", "layer_norm", "relu"},
    "gpt_decoder_block": {"scaled_dot_product_attention", "layer_norm", "gelu"},
    "gpt_decoder_block_masked": {"softmax", "where", "layer_norm", "gelu"},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_imported_through_torch_export_matches_torch(name, caplog):
    module, inputs = MODELS[name]()
    with caplog.at_level("INFO", logger="kiln.frontends.torch"):
        compiled = compiler.compile(module, inputs, target="reference")
    assert "through torch.export" in caplog.text
    got = compiled(*inputs)
    with torch.no_grad():
        expected = module(*inputs)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the imported graph (before the target's passes): each model's defining ops, each node's source
    graph = import_model(module, inputs).graph
    assert EXPECTED_OPS[name] <= {node.op for node in graph.nodes}
    assert all(node.source for node in graph.nodes if node.op != "const")


def test_models_are_seeded():
    first, inputs = MODELS["gpt_decoder_block"]()
    second, again = MODELS["gpt_decoder_block"]()
    torch.testing.assert_close(first(*inputs), second(*again), rtol=0, atol=0)
