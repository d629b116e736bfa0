"""MAC and parameter counts: thop's, and an analytic per-layer count that agrees with it.

:func:`layer_costs` follows the rules of ultralytics-thop 2.x exactly, so that
``total_macs(layer_costs(model)) == count_thop(model)[0]`` on every zoo model. Counts are
multiply-accumulates (MACs) for the whole batch of ``input_size``; for each module type:

=====================================  =======================================================
Module                                 MACs
=====================================  =======================================================
``Conv2d``                             ``N * C_out * H_out * W_out * (C_in / groups) * kh * kw``
``Linear``                             ``in_features * output.numel()`` (``N * out`` for 2-D)
``BatchNorm*d`` (any ``_NormBase``)    ``2 * input.numel()``, doubled when ``affine``: ``4 * N*C*H*W``
``AdaptiveAvgPool2d``                  one add per pooled input, one divide per output;
                                       global pooling is ``N*C*H*W + N*C``
``AvgPool2d``                          one add per input in each window, one divide per output
``ReLU``, ``ReLU6``, ``MaxPool2d``,    zero
``Identity``, ``Flatten``, dropout,
containers
anything that is not a module          zero: the residual ``x + out``, ``Tensor.flatten``
=====================================  =======================================================

Biases are never counted. Parameters are ``sum(p.numel() for p in model.parameters())``
(BatchNorm contributes ``2 * C``; its running statistics are buffers, not parameters).

Two thop behaviours have no analytic counterpart here, and neither occurs in the zoo: thop
also counts functional products outside any counted module (``torch.matmul``, ``F.linear``,
``einsum``, scaled dot-product attention), and it has rules for module types not listed
above (``LayerNorm``, ``Softmax``, ``Upsample``, RNNs, ...). A leaf module of an unknown type
is logged once and counted as zero.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import thop
import torch
from torch import Tensor, nn

from amc.cost._common import InputSize, eval_mode, example_input, model_device, model_dtype, on_device

log = logging.getLogger(__name__)

__all__ = ["LayerCost", "count_thop", "layer_costs", "total_macs", "total_params"]

# Leaf modules thop charges nothing for (activations that only compare, selections, views).
ZERO_COST_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
)


@dataclass
class LayerCost:
    """The cost of one call of one layer, as recorded by :func:`layer_costs`.

    Attributes:
        name: Qualified module name (``layer1.0.conv1``).
        type: Module class name (``Conv2d``, ``Linear``, ``BatchNorm2d``, ``AdaptiveAvgPool2d``).
        in_channels: Input channels (``in_features`` for a linear layer).
        out_channels: Output channels (``out_features`` for a linear layer).
        kernel: Kernel size of a convolution or average pool; ``(1, 1)`` otherwise.
        stride: Stride of a convolution or average pool; ``(1, 1)`` otherwise.
        groups: Convolution groups; 1 otherwise.
        in_hw: Input height and width; ``(1, 1)`` for inputs without spatial axes.
        out_hw: Output height and width; ``(1, 1)`` for outputs without spatial axes.
        macs: Multiply-accumulates of this call for the whole batch, as thop counts them.
        params: Parameters the module owns directly.
    """

    name: str
    type: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int
    params: int


def count_thop(
    model: nn.Module, input_size: InputSize = (1, 3, 32, 32), device: str | torch.device = "cpu"
) -> tuple[int, int]:
    """MACs and parameters of ``model`` according to ``thop.profile``.

    thop runs on a deep copy, so whatever it attaches (``total_ops``/``total_params``
    buffers in some 2.x releases) never reaches the caller's model or its state dict.

    Args:
        model: The network.
        input_size: Shape of the input batch, ``(N, C, H, W)``.
        device: Device to profile on.

    Returns:
        ``(macs, params)`` as integers.
    """
    probe = copy.deepcopy(model).to(torch.device(device))
    x = example_input(input_size, torch.device(device), model_dtype(probe))
    macs, params = thop.profile(probe, inputs=(x,), verbose=False)
    return round(float(macs)), round(float(params))


def total_macs(costs: Iterable[LayerCost]) -> int:
    """Sum of the MACs of ``costs``."""
    return sum(c.macs for c in costs)


def total_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (shared tensors once), which is what thop reports."""
    return sum(p.numel() for p in model.parameters())


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[-1])


def _hw(t: Tensor) -> tuple[int, int]:
    return (int(t.shape[-2]), int(t.shape[-1])) if t.dim() >= 3 else (1, 1)


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def _adaptive_pool_macs(x: Tensor, y: Tensor) -> int:
    """Thop's adaptive average pool rule: an add per pooled input, a divide per output."""
    added = 1
    for i, o in zip(x.shape, y.shape, strict=True):
        # output j of an axis pools [floor(j*i/o), ceil((j+1)*i/o)); an unpooled axis contributes its length
        added *= o if i == o else sum(-(-(j + 1) * i // o) - j * i // o for j in range(o))
    return added + y.numel()


def _avg_pool_macs(m: nn.AvgPool2d, x: Tensor, y: Tensor) -> int:
    """Thop's average pool rule: an add per input element of each clipped window, a divide per output."""
    windows = 1
    for size, out, k, s, p in zip(
        x.shape[-2:], y.shape[-2:], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding), strict=True
    ):
        lower, upper = (-p, size + p) if m.count_include_pad else (0, size)
        windows *= sum(max(min(i * s - p + k, upper) - max(i * s - p, lower), 0) for i in range(out))
    leading = x.numel() // (x.shape[-2] * x.shape[-1])
    return leading * windows + y.numel()


def _layer_cost(name: str, m: nn.Module, x: Tensor, y: Tensor) -> LayerCost | None:
    """The cost of one call of ``m``, or ``None`` for a module type without an analytic rule."""
    common = {"name": name, "type": type(m).__name__, "in_hw": _hw(x), "out_hw": _hw(y)}
    common |= {"kernel": (1, 1), "stride": (1, 1), "groups": 1, "params": _own_params(m)}
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        macs = y.numel() * (m.in_channels // m.groups) * kh * kw
        common |= {"kernel": (kh, kw), "stride": _pair(m.stride), "groups": m.groups}
        return LayerCost(in_channels=m.in_channels, out_channels=m.out_channels, macs=macs, **common)
    if isinstance(m, nn.Linear):
        macs = m.in_features * y.numel()
        return LayerCost(in_channels=m.in_features, out_channels=m.out_features, macs=macs, **common)
    channels = int(x.shape[1]) if x.dim() > 1 else int(x.shape[0])
    if isinstance(m, nn.modules.batchnorm._NormBase):
        macs = 2 * x.numel() * (2 if m.affine else 1)
        return LayerCost(in_channels=channels, out_channels=channels, macs=macs, **common)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        macs = _adaptive_pool_macs(x, y)
        return LayerCost(in_channels=channels, out_channels=channels, macs=macs, **common)
    if isinstance(m, nn.AvgPool2d):
        common |= {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride)}
        return LayerCost(in_channels=channels, out_channels=channels, macs=_avg_pool_macs(m, x, y), **common)
    return None


def _warn_unknown(m: nn.Module, warned: set[type]) -> None:
    kind = type(m)
    if kind in warned or isinstance(m, ZERO_COST_TYPES) or next(m.children(), None) is not None:
        return
    warned.add(kind)
    log.warning("no analytic MAC rule for %s; counted as 0 MACs (thop may count it)", kind.__name__)


def layer_costs(
    model: nn.Module,
    input_size: InputSize = (1, 3, 32, 32),
    device: str | torch.device | None = None,
) -> list[LayerCost]:
    """Analytic per-layer MACs and parameters, recorded in execution order by forward hooks.

    One forward pass (eval mode, no gradients) on a random batch records the input and output
    shape of every call of a Conv2d, Linear, BatchNorm, AdaptiveAvgPool2d and AvgPool2d; the
    counts follow thop's rules (see the module docstring), so their sum equals
    :func:`count_thop`'s MACs. A module called twice appears twice. The model's train/eval
    modes are restored afterwards.

    Args:
        model: The network.
        input_size: Shape of the input batch, ``(N, C, H, W)``.
        device: Device to run the pass on; ``None`` uses the model's own device. Another
            device than the model's runs on a copy, so the model itself never moves.

    Returns:
        One :class:`LayerCost` per counted layer call.
    """
    target = model if device is None else on_device(model, torch.device(device))
    names = {m: name for name, m in target.named_modules()}
    costs: list[LayerCost] = []
    warned: set[type] = set()

    def hook(m: nn.Module, args: tuple, kwargs: dict, y: Tensor) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        cost = _layer_cost(names[m], m, x, y)
        if cost is None:
            _warn_unknown(m, warned)
        else:
            costs.append(cost)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in target.modules()]
    x = example_input(input_size, model_device(target), model_dtype(target))
    try:
        with eval_mode(target), torch.no_grad():
            target(x)
    finally:
        for handle in handles:
            handle.remove()
    return costs
