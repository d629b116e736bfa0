"""Helpers shared by the cost models: device placement, example inputs and eval mode."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

InputSize = Sequence[int]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model without tensors)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 when it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, treating ``cuda`` and ``cuda:<current>`` as one."""
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when every tensor already lives on ``device``, else a deep copy moved there.

    The caller's model is never moved: a measurement on another device works on a copy.
    """
    tensors = (*model.parameters(), *model.buffers())
    if all(same_device(t.device, device) for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


def example_input(
    input_size: InputSize, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0
) -> Tensor:
    """A reproducible standard-normal batch of shape ``input_size`` on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(input_size), generator=generator).to(device=device, dtype=dtype)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's own mode after it."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
