"""Baseline policies for a budget: uniform, sensitivity analysis and random search.

Each returns a :class:`~amc.policy.Policy` whose cost ratio (pruned / dense, in the chosen
metric) is at or below the target, using the same channel selection, reconstruction and
scoring as the search, so the comparison isolates the choice of per-unit sparsities.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from amc.budget import MAX_SPARSITY
from amc.policy import Policy
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer

log = logging.getLogger(__name__)
METRICS = ("flops", "params")
CostFn = Callable[[Sequence[int]], float]


class TargetError(ValueError):
    """A budget that cannot be met (or is not a budget at all)."""


def cost_ratio_fn(pruner: ChannelPruner, metric: str = "flops") -> CostFn:
    """A function: kept channels per unit -> pruned/dense ratio of MACs (``flops``) or ``params``."""
    if metric not in METRICS:
        raise TargetError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    index = METRICS.index(metric)
    dense = pruner.cost.cost()[index]
    return lambda kept: pruner.cost.cost(kept)[index] / dense


def _check_target(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise TargetError(f"target must be a ratio in (0, 1], e.g. flops=0.5; got {target}")


def _bisect(
    ratio_at: Callable[[float], float], target: float, lo: float, hi: float, steps: int = 40
) -> float:
    """Smallest x in [lo, hi] with ratio_at(x) <= target (ratio_at non-increasing)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ratio_at(mid) <= target else (mid, hi)
    return hi


def solve_uniform(
    pruner: ChannelPruner, target: float, cost: CostFn, max_sparsity: float = MAX_SPARSITY
) -> list[float]:
    """The single sparsity, applied to every unit, that meets ``target`` with the least pruning."""
    _check_target(target)
    n = len(pruner.units)
    floor = cost(pruner.kept_for([max_sparsity] * n))
    if floor > target:
        raise TargetError(
            f"target {target:.3f} is unreachable: pruning every unit to {max_sparsity:.0%} still "
            f"leaves {floor:.3f} of the cost; raise the target or the maximum sparsity"
        )
    s = _bisect(lambda v: cost(pruner.kept_for([v] * n)), target, 0.0, max_sparsity)
    return [s] * n


def _policy(
    pruner: ChannelPruner, sparsities: Sequence[float], scorer: Scorer | None, name: str, model: str
) -> Policy:
    kept = pruner.kept_for(list(sparsities))
    metrics = {"baseline": name}
    if scorer is not None:
        metrics["accuracy"] = scorer.evaluate(pruner.apply(kept))
        pruner.reset()
    return Policy.from_kept(pruner, kept, list(sparsities), model=model, metrics=metrics)


def uniform_policy(
    pruner: ChannelPruner, target: float, metric: str = "flops", scorer: Scorer | None = None, model: str = ""
) -> Policy:
    """Every unit pruned by the same fraction, the smallest that meets the target."""
    sparsities = solve_uniform(pruner, target, cost_ratio_fn(pruner, metric))
    return _policy(pruner, sparsities, scorer, "uniform", model)


SENSITIVITY_LEVELS: tuple[float, ...] = tuple(float(v) for v in np.round(np.arange(0.1, 1.0, 0.1), 2))
"""Sparsity levels at which sensitivity analysis prunes each unit alone."""


def sensitivity_drops(
    pruner: ChannelPruner, scorer: Scorer, levels: Sequence[float] = SENSITIVITY_LEVELS
) -> np.ndarray:
    """Accuracy drop (points) of pruning each unit alone at each level: units x levels.

    The expensive half of :func:`sensitivity_policy`; it does not depend on the budget, so
    one matrix serves every target.
    """
    n = len(pruner.units)
    base = scorer.evaluate(pruner.apply(pruner.kept_for([0.0] * n)))
    drops = np.zeros((n, len(levels)))
    for u in range(n):
        for j, level in enumerate(levels):
            sparsities = [0.0] * n
            sparsities[u] = level
            drops[u, j] = base - scorer.evaluate(pruner.apply(pruner.kept_for(sparsities)))
    pruner.reset()
    return drops


def sensitivity_policy(
    pruner: ChannelPruner,
    scorer: Scorer,
    target: float,
    metric: str = "flops",
    levels: Sequence[float] = SENSITIVITY_LEVELS,
    model: str = "",
    drops: np.ndarray | None = None,
) -> Policy:
    """Sensitivity analysis: prune each unit alone at each level, then threshold the accuracy drop.

    Each unit gets the largest level whose solo accuracy drop is at most a threshold; the
    threshold is the smallest that meets the target. ``drops`` reuses a
    :func:`sensitivity_drops` matrix measured with the same ``levels`` (e.g. for another target).
    """
    _check_target(target)
    cost = cost_ratio_fn(pruner, metric)
    n = len(pruner.units)
    if drops is None:
        drops = sensitivity_drops(pruner, scorer, levels)

    def sparsities_at(threshold: float) -> list[float]:
        return [
            max([0.0] + [lv for lv, d in zip(levels, drops[u], strict=True) if d <= threshold])
            for u in range(n)
        ]

    candidates = sorted(set(drops.flatten().tolist()))
    feasible = [t for t in candidates if cost(pruner.kept_for(sparsities_at(t))) <= target]
    if not feasible:
        raise TargetError(f"target {target:.3f} is unreachable with sparsity levels up to {max(levels)}")
    policy = _policy(pruner, sparsities_at(feasible[0]), scorer, "sensitivity", model)
    policy.metrics["threshold"] = float(feasible[0])
    return policy


def fit_to_target(
    pruner: ChannelPruner,
    raw: Sequence[float],
    target: float,
    cost: CostFn,
    max_sparsity: float = MAX_SPARSITY,
) -> list[float]:
    """Shift raw sparsities by one common offset (clipped to [0, max]) so the target is met."""
    raw_arr = np.asarray(raw, dtype=float)

    def at(offset: float) -> list[float]:
        return np.clip(raw_arr + offset, 0.0, max_sparsity).tolist()

    if cost(pruner.kept_for(at(1.0))) > target:
        raise TargetError(f"target {target:.3f} is unreachable at maximum sparsity {max_sparsity}")
    return at(_bisect(lambda o: cost(pruner.kept_for(at(o))), target, -1.0, 1.0))


def random_search_policy(
    pruner: ChannelPruner,
    scorer: Scorer,
    target: float,
    metric: str = "flops",
    trials: int = 50,
    max_sparsity: float = MAX_SPARSITY,
    seed: int = 0,
    model: str = "",
) -> Policy:
    """Random search: ``trials`` random policies fitted to the target; keep the most accurate."""
    _check_target(target)
    cost = cost_ratio_fn(pruner, metric)
    rng = np.random.default_rng(seed)
    best, best_acc = None, -1.0
    for _ in range(trials):
        sparsities = fit_to_target(
            pruner, rng.uniform(0, max_sparsity, len(pruner.units)), target, cost, max_sparsity
        )
        acc = scorer.evaluate(pruner.apply(pruner.kept_for(sparsities)))
        if acc > best_acc:
            best, best_acc = sparsities, acc
    pruner.reset()
    policy = _policy(pruner, best, scorer, "random", model)
    policy.metrics["trials"] = trials
    return policy
