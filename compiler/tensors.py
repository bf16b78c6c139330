"""Arrays in and out of a compiled model: numpy arrays as they are, torch tensors converted
without copies where numpy can view them (bf16 through a 16-bit view, since numpy has no
bfloat16 of its own and torch does not know ml_dtypes').
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ir import DType


def is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value: Any) -> np.ndarray:
    """A numpy view (or copy, from a GPU) of a tensor; arrays and scalars pass through."""
    if not is_torch_tensor(value):
        return np.asarray(value)
    import torch

    tensor = value.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(DType.bf16.numpy)
    return tensor.numpy()


def to_torch(array: np.ndarray, like: Any = None) -> Any:
    """A torch tensor over `array`, on the device of `like` if given."""
    array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray makes 0-d arrays 1-d
    tensor = tensor_over(array)
    if like is not None and like.device.type != "cpu":
        tensor = tensor.to(like.device)
    return tensor


def tensor_over(array: np.ndarray) -> Any:
    """A CPU torch tensor over `array`'s memory (bf16 through its 16 bits), no copy."""
    import torch

    if array.dtype == _BF16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


_BF16 = DType.bf16.numpy  # looked up once: the enum's property costs ~0.2 µs a call
