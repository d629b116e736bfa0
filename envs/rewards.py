"""Reward functions by name. Each maps (top-1 accuracy in %, cost ratios) to a scalar reward.

``acc`` is AMC's resource-constrained reward (``-error``, used with the action wall);
``acc_flops``/``acc_params``/``acc_latency`` are its accuracy-guaranteed rewards
``-error * log(cost)``, which trade accuracy against the resource without a hard budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

RewardFn = Callable[[float, Mapping[str, float]], float]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward function to :data:`REWARDS` under ``name``."""

    def add(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return add


def _error(accuracy: float) -> float:
    return 1.0 - accuracy / 100.0


@register_reward("acc")
def reward_acc(accuracy: float, costs: Mapping[str, float]) -> float:
    """``-error``: with the action wall enforcing the budget, only accuracy matters."""
    return -_error(accuracy)


def _log_cost(kind: str) -> RewardFn:
    def reward(accuracy: float, costs: Mapping[str, float]) -> float:
        return -_error(accuracy) * math.log(costs[f"{kind}_absolute"])

    reward.__doc__ = f"``-error * log({kind})``: accuracy-guaranteed reward on absolute {kind}."
    return reward


for _kind in ("flops", "params", "latency"):
    register_reward(f"acc_{_kind}")(_log_cost(_kind))


def get_reward(name: str) -> RewardFn:
    """Look a reward up by name, with an error that lists the known ones."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward '{name}'; known rewards: {', '.join(REWARDS)}")
    return REWARDS[name]
