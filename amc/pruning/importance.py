"""Channel importance criteria: small callables scoring each channel of a unit."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amc.pruning.units import PruningUnit

CRITERIA = ("l1", "l2")


def channel_importance(model: nn.Module, unit: PruningUnit, criterion: str = "l1") -> Tensor:
    """Score every channel of ``unit``: the norm of its weights summed over the unit's layers.

    Each conv/linear producer contributes the L1 (or L2) norm of the channel's filter,
    normalised by the layer's mean so that wide and narrow layers weigh alike.

    Args:
        model: The network (dense weights).
        unit: The unit to score.
        criterion: ``l1`` or ``l2``.

    Returns:
        A tensor of ``unit.channels`` scores indexed by root channel; higher is kept first.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion '{criterion}'; use one of {', '.join(CRITERIA)}")
    p = 1 if criterion == "l1" else 2
    modules = dict(model.named_modules())
    score = torch.zeros(unit.channels)
    with torch.no_grad():
        for item in unit.items:
            m = modules[item.module]
            if not item.is_output or not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            norms = m.weight.detach().flatten(1).norm(p=p, dim=1).float().cpu()
            norms = norms / norms.mean().clamp_min(1e-12)
            score.index_add_(0, torch.tensor(item.root), norms[item.idxs])
    return score
