"""Iterative pruning with fine-tuning between the steps, and lottery-ticket rewinding.

Step ``k`` of ``K`` prunes to the policy's sparsities scaled by ``k/K``, ranking the current
(fine-tuned) weights by magnitude, then fine-tunes with :func:`amc.train.train`; the last
step reaches the policy exactly. Rewinding (Frankle et al. 2019) resets the kept weights to
an early checkpoint of the dense training before the final retraining.

Channel policies remove channels physically at every step; fine-grained and N:M policies zero
weights, which stay exactly zero while fine-tuning (their gradients are masked), so an N:M
model keeps its pattern.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from amc.data import Dataset
from amc.models import load_state
from amc.policy import Policy, apply_policy
from amc.pruning.channel import ChannelPruner
from amc.pruning.finegrained import MagnitudePruner, prunable_weights
from amc.train import TrainConfig, masked_gradients, train

log = logging.getLogger(__name__)


def split_epochs(epochs: int, steps: int) -> list[int]:
    """Fine-tune epochs per step, summing to ``epochs``; later steps get the remainder."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    base, extra = divmod(epochs, steps)
    return [base + (k >= steps - extra) for k in range(steps)]


def scaled_sparsities(sparsities: Mapping[str, float], steps: int) -> list[dict[str, float]]:
    """The per-step targets: step ``k`` (1-based) holds ``sparsities`` scaled by ``k/steps``."""
    steps_before = [{n: s * k / steps for n, s in sparsities.items()} for k in range(1, steps)]
    return [*steps_before, dict(sparsities)]  # the last step is the policy itself, exactly


@dataclass
class PruningSchedule:
    """What the steps pruned, to replay them on other weights (rewinding).

    Attributes:
        kept: Channel mode: kept channels per unit name after each step.
        removed: Channel mode: removed root indices per unit at each step (of that step's model).
        masks: Fine-grained mode: layer name -> keep-mask after the last step.
    """

    kept: list[dict[str, int]]
    removed: list[list[set[int]]]
    masks: dict[str, Tensor]


def frozen_zeros(model: nn.Module, masks: Mapping[str, Tensor]) -> contextlib.AbstractContextManager:
    """Mask the gradients of the pruned weights, so SGD (momentum, weight decay) keeps them at zero.

    :func:`amc.train.masked_gradients`; :func:`prune_iteratively` hands the masks to
    :func:`~amc.train.train` instead, which masks on every process of a ``torchrun`` job.
    """
    return masked_gradients(model, masks)


def _channel_targets(pruner: ChannelPruner, policy: Policy, steps: int) -> list[dict[str, int]]:
    """Kept channels per unit for each step; the last is what :func:`apply_policy` keeps."""
    final = pruner.kept_for(pruner.sparsities_by_name(policy.sparsities))
    final = [policy.kept.get(u.name, k) for u, k in zip(pruner.units, final, strict=True)]
    targets = []
    for step in scaled_sparsities(policy.sparsities, steps)[:-1]:
        kept = pruner.kept_for(pruner.sparsities_by_name(step))
        targets.append({u.name: max(k, f) for u, k, f in zip(pruner.units, kept, final, strict=True)})
    return [*targets, {u.name: k for u, k in zip(pruner.units, final, strict=True)}]


def _channel_step(
    model: nn.Module, kept: Mapping[str, int], policy: Policy, shape: tuple[int, ...], removed=None
) -> tuple[nn.Module, list[set[int]]]:
    """Prune ``model`` (maybe already pruned) to ``kept`` channels per unit, ranking its current weights."""
    pruner = ChannelPruner(model, shape, policy.criterion)
    names = [u.name for u in pruner.units]
    if set(names) != set(kept):
        raise ValueError(f"pruning changed the model's units ({sorted(set(names) ^ set(kept))[:3]})")
    counts = [kept[n] for n in names]
    removed = pruner.removed_channels(counts) if removed is None else removed
    return pruner.export(counts, removed), removed


def _finegrained_step(
    model: nn.Module, sparsities: Mapping[str, float], nm: tuple[int, int] | None = None
) -> tuple[nn.Module, dict]:
    """Zero the smallest current weights of each layer (``nm``: in N:M groups); the model and masks."""
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.step(dict(sparsities), nm=nm)  # the weights of earlier steps are zero: they rank first
    masks = {name: mask.clone() for name, mask in pruner.masks.items() if name in sparsities}
    return pruner.squash(model), masks


def rewind(
    model: nn.Module, dense: nn.Module, state: dict, schedule: PruningSchedule, policy: Policy, shape
) -> nn.Module:
    """Reset ``model``'s kept weights to ``state`` (a checkpoint of ``dense``'s training), in place.

    Channel mode replays the recorded channel removals on ``dense`` loaded with ``state``;
    fine-grained mode loads ``state`` and zeros the pruned weights again.
    """
    early = copy.deepcopy(dense)
    load_state(early, state, "the rewind checkpoint")
    if policy.mode != "channel":
        layers = prunable_weights(early)
        with torch.no_grad():
            for name, mask in schedule.masks.items():
                layers[name].weight.mul_(mask)
    else:
        for kept, removed in zip(schedule.kept, schedule.removed, strict=True):
            early, _ = _channel_step(early, kept, policy, shape, removed)
    model.load_state_dict(early.state_dict())
    return model


def prune_iteratively(
    model: nn.Module,
    policy: Policy,
    input_shape: tuple[int, ...],
    dataset: Dataset,
    config: TrainConfig,
    out: str | Path,
    steps: int = 1,
    rewind_state: dict | None = None,
    device: str | torch.device = "cpu",
    **train_kwargs,
) -> nn.Module:
    """Reach ``policy`` in ``steps`` prune-then-fine-tune steps; ``model`` itself is not changed.

    Args:
        model: The dense, trained model.
        policy: The target (channel or fine-grained).
        input_shape: ``(1, C, H, W)`` of the inputs.
        dataset: Dataset with a ``train`` split (and ``test``, evaluated by :func:`train`).
        config: Fine-tuning settings; ``config.epochs`` is the total over all steps.
        out: Folder of the fine-tunes: ``finetune`` for one step, else ``finetune_step<k>``.
        steps: Prune-then-fine-tune steps.
        rewind_state: A state dict of ``model``'s early training: the kept weights are reset
            to it before the last step's fine-tune.
        device: Torch device (under ``torchrun``, every fine-tune runs on all processes).
        **train_kwargs: Passed on to :func:`train` (``manifest``, ``resume``, ``teacher``).

    Returns:
        The pruned, fine-tuned model.
    """
    if policy.mode == "nm" and steps > 1:
        raise ValueError("an N:M pattern has one sparsity and is reached in one step: use --steps 1")
    out = Path(out)
    epochs = split_epochs(config.epochs, steps)
    schedule = PruningSchedule([], [], {})
    current = copy.deepcopy(model).eval()
    if policy.mode == "channel":
        apply_policy(model, replace(policy, reconstruct=False), input_shape)  # the policy fits the model
        targets = _channel_targets(
            ChannelPruner(model, input_shape, policy.criterion, policy.round_to), policy, steps
        )
    else:
        targets = scaled_sparsities(policy.sparsities, steps)
    for k, (target, n_epochs) in enumerate(zip(targets, epochs, strict=True), start=1):
        if policy.mode == "channel":
            current, removed = _channel_step(current, target, policy, input_shape)
            schedule.kept.append(target)
            schedule.removed.append(removed)
        else:
            nm = tuple(policy.nm) if policy.mode == "nm" else None
            current, schedule.masks = _finegrained_step(current, target, nm)
        log.info(
            "step %d/%d: pruned to %d/%d of the policy; fine-tuning %d epochs", k, steps, k, steps, n_epochs
        )
        if k == steps and rewind_state is not None:
            rewind(current, model, rewind_state, schedule, policy, input_shape)
        if n_epochs:
            folder = out / ("finetune" if steps == 1 else f"finetune_step{k}")
            step_config = replace(config, epochs=n_epochs)
            train(current, dataset, step_config, folder, device, grad_masks=schedule.masks, **train_kwargs)
    return current.eval()
