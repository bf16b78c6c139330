"""The four reference models of the frontend tests, shared by the torch and ONNX model tests.

Each function returns `(module, example_inputs)`: a small but real model in eval mode with
seeded weights (so every run and every frontend sees the same numbers) and a tuple of inputs
of the shapes it is compiled for. Batch-norm running statistics are randomised, since the
defaults (mean 0, var 1) would hide a frontend that dropped them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _inputs(*shapes: tuple[int, ...], seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


class MLP(nn.Module):
    """Three linear layers with GELU and ReLU between them."""

    def __init__(self, features: int = 32, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.gelu(self.fc1(x)))))


def mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return MLP().eval(), _inputs((4, 32))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, and a residual that takes a
    strided 1x1 convolution when the block changes resolution or width."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet: a conv stem with max pooling, two residual stages, global average pooling
    and a linear classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.stage1 = BasicBlock(8, 8, stride=1)
        self.stage2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def randomize_batch_norms(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            with torch.no_grad():
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)


def resnet_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = ResNetCNN()
    randomize_batch_norms(model)
    return model.eval(), _inputs((2, 3, 16, 16))


def transformer_encoder_layer() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """torch's own encoder layer (post-norm, ReLU feed-forward), batch first, without dropout."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
    return layer.eval(), _inputs((2, 8, 32))


class CausalSelfAttention(nn.Module):
    """GPT-2's attention: one projection to queries, keys and values, causal scaled dot-product
    attention over the heads, an output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        # (batch, length, width) -> (batch, heads, length, head width)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class GPTBlock(nn.Module):
    """GPT-2's decoder block: pre-norm causal attention and a GELU (tanh) MLP, each residual."""

    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class MaskedAttentionGPTBlock(GPTBlock):
    """The same block with attention written out: a causal mask filled with -inf before a
    softmax, the way GPT-2's original code (and many exported models) spell it."""

    def __init__(self, width: int = 32, heads: int = 4, context: int = 8) -> None:
        super().__init__(width, heads)
        self.register_buffer("causal", torch.tril(torch.ones(context, context, dtype=torch.bool)))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        batch, length, width = x.shape
        q, k, v = attn.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, attn.heads, width // attn.heads).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(width // attn.heads)
        scores = scores.masked_fill(~self.causal[:length, :length], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return attn.proj(y.transpose(1, 2).reshape(batch, length, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


def gpt_decoder_block() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return GPTBlock().eval(), _inputs((2, 8, 32))


def gpt_decoder_block_masked() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return MaskedAttentionGPTBlock().eval(), _inputs((2, 8, 32))


MODELS = {
    "mlp": mlp,
    "resnet_cnn": resnet_cnn,
    "transformer_encoder_layer": transformer_encoder_layer,
    "gpt_decoder_block": gpt_decoder_block,
    "gpt_decoder_block_masked": gpt_decoder_block_masked,
}
"""Name -> factory, for tests that run every model."""
