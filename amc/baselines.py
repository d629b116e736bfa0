"""Baseline policies for a budget: uniform, sensitivity analysis and random search.

Each returns a :class:`~amc.policy.Policy` whose cost ratio (pruned / dense, in the chosen
metric) is at or below the target, using the same channel selection, reconstruction and
scoring as the search, so the comparison isolates the choice of per-unit sparsities.

They work through a :class:`~amc.backends.ChannelBackend`, the search's own: its
:meth:`~amc.backends.ChannelBackend.costs` gives the cost ratio of per-unit sparsities, its
:meth:`~amc.backends.ChannelBackend.score` their accuracy and its
:meth:`~amc.backends.ChannelBackend.policy` the policy. A bare
:class:`~amc.pruning.channel.ChannelPruner` is accepted too (wrapped with the scorer and model name given).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from amc.backends import ChannelBackend
from amc.budget import MAX_SPARSITY
from amc.policy import Policy
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer

log = logging.getLogger(__name__)
METRICS = ("flops", "params")
Source = ChannelBackend | ChannelPruner
"""What the baselines prune: a channel backend, or a pruner to wrap in one."""


class TargetError(ValueError):
    """A budget that cannot be met (or is not a budget at all)."""


def channel_backend(source: Source, scorer: Scorer | None = None, model: str = "") -> ChannelBackend:
    """The backend the baselines work through.

    A pruner is wrapped with ``scorer`` and ``model``. A backend is used as it is, unless a
    ``scorer`` or ``model`` other than its own is given: then a backend over the same pruner
    with those (and its latency predictor) is.
    """
    if isinstance(source, ChannelPruner):
        return ChannelBackend(source, scorer, model_name=model)
    if (scorer is None or scorer is source.scorer) and (not model or model == source.model_name):
        return source
    backend = ChannelBackend(
        source.pruner,
        source.scorer if scorer is None else scorer,
        source.latency,
        model or source.model_name,
        source.latency_shape,
    )
    backend.physical = source.physical
    return backend


def cost_ratio(backend: ChannelBackend, sparsities: Sequence[float], metric: str = "flops") -> float:
    """Pruned/dense ``metric`` (``flops``: MACs, or ``params``) of per-unit ``sparsities``."""
    _check_metric(metric)
    return backend.costs(sparsities)[metric]


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise TargetError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")


def _check_target(target: float, metric: str = "flops") -> None:
    if not 0.0 < target <= 1.0:
        raise TargetError(f"target must be a ratio in (0, 1], e.g. flops=0.5; got {target}")
    _check_metric(metric)


def _bisect(
    ratio_at: Callable[[float], float], target: float, lo: float, hi: float, steps: int = 40
) -> float:
    """Smallest x in [lo, hi] with ratio_at(x) <= target (ratio_at non-increasing)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ratio_at(mid) <= target else (mid, hi)
    return hi


def solve_uniform(
    backend: Source, target: float, metric: str = "flops", max_sparsity: float = MAX_SPARSITY
) -> list[float]:
    """The single sparsity, applied to every unit, that meets ``target`` with the least pruning."""
    _check_target(target, metric)
    backend = channel_backend(backend)
    n = len(backend.units)
    floor = cost_ratio(backend, [max_sparsity] * n, metric)
    if floor > target:
        raise TargetError(
            f"target {target:.3f} is unreachable: pruning every unit to {max_sparsity:.0%} still "
            f"leaves {floor:.3f} of the cost; raise the target or the maximum sparsity"
        )
    s = _bisect(lambda v: cost_ratio(backend, [v] * n, metric), target, 0.0, max_sparsity)
    return [s] * n


def _labelled(backend: ChannelBackend, sparsities: Sequence[float], name: str, scored: bool) -> Policy:
    """The backend's policy for ``sparsities``, labelled ``name`` (scored: with its accuracy)."""
    metrics: dict[str, float | str] = {"baseline": name}
    if scored:
        metrics["accuracy"] = backend.score(sparsities)
        backend.pruner.reset()
    return backend.policy(sparsities, **metrics)


def _scoring(source: Source, scorer: Scorer | None, model: str) -> ChannelBackend:
    """The backend for a baseline that scores: ``scorer`` or the backend's own."""
    backend = channel_backend(source, scorer, model)
    if backend.scorer is None:
        raise ValueError("this baseline scores policies: give a scorer (or a backend with one)")
    return backend


def uniform_policy(
    backend: Source, target: float, metric: str = "flops", scorer: Scorer | None = None, model: str = ""
) -> Policy:
    """Every unit pruned by the same fraction, the smallest that meets the target.

    Args:
        backend: A channel backend, or a pruner (wrapped with ``scorer`` and ``model``).
        target: Budget, a ratio of the dense ``metric``.
        metric: ``flops`` or ``params``.
        scorer: Scores the policy (recorded as its ``accuracy``); without one, none is recorded.
        model: Model name recorded in the policy (default: the backend's).
    """
    backend = channel_backend(backend, scorer, model)
    sparsities = solve_uniform(backend, target, metric)
    return _labelled(backend, sparsities, "uniform", scored=scorer is not None)


SENSITIVITY_LEVELS: tuple[float, ...] = tuple(float(v) for v in np.round(np.arange(0.1, 1.0, 0.1), 2))
"""Sparsity levels at which sensitivity analysis prunes each unit alone."""


def sensitivity_drops(
    backend: Source, scorer: Scorer | None = None, levels: Sequence[float] = SENSITIVITY_LEVELS
) -> np.ndarray:
    """Accuracy drop (points) of pruning each unit alone at each level: units x levels.

    The expensive half of :func:`sensitivity_policy`; it does not depend on the budget, so
    one matrix serves every target. ``scorer``: the backend's when not given.
    """
    backend = _scoring(backend, scorer, "")
    n = len(backend.units)
    base = backend.score([0.0] * n)
    drops = np.zeros((n, len(levels)))
    for u in range(n):
        for j, level in enumerate(levels):
            sparsities = [0.0] * n
            sparsities[u] = level
            drops[u, j] = base - backend.score(sparsities)
    backend.pruner.reset()
    return drops


def sensitivity_policy(
    backend: Source,
    scorer: Scorer | None,
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
    ``backend``, ``scorer`` and ``model`` as for :func:`uniform_policy`, except that the
    policy is always scored (``scorer``: the backend's when not given).
    """
    _check_target(target, metric)
    backend = _scoring(backend, scorer, model)
    n = len(backend.units)
    if drops is None:
        drops = sensitivity_drops(backend, levels=levels)

    def sparsities_at(threshold: float) -> list[float]:
        return [
            max([0.0] + [lv for lv, d in zip(levels, drops[u], strict=True) if d <= threshold])
            for u in range(n)
        ]

    candidates = sorted(set(drops.flatten().tolist()))
    feasible = [t for t in candidates if cost_ratio(backend, sparsities_at(t), metric) <= target]
    if not feasible:
        raise TargetError(f"target {target:.3f} is unreachable with sparsity levels up to {max(levels)}")
    policy = _labelled(backend, sparsities_at(feasible[0]), "sensitivity", scored=True)
    policy.metrics["threshold"] = float(feasible[0])
    return policy


def fit_to_target(
    backend: Source,
    raw: Sequence[float],
    target: float,
    metric: str = "flops",
    max_sparsity: float = MAX_SPARSITY,
) -> list[float]:
    """Shift raw sparsities by one common offset (clipped to [0, max]) so the target is met."""
    _check_metric(metric)
    backend = channel_backend(backend)
    raw_arr = np.asarray(raw, dtype=float)

    def at(offset: float) -> list[float]:
        return np.clip(raw_arr + offset, 0.0, max_sparsity).tolist()

    if cost_ratio(backend, at(1.0), metric) > target:
        raise TargetError(f"target {target:.3f} is unreachable at maximum sparsity {max_sparsity}")
    return at(_bisect(lambda o: cost_ratio(backend, at(o), metric), target, -1.0, 1.0))


def random_search_policy(
    backend: Source,
    scorer: Scorer | None,
    target: float,
    metric: str = "flops",
    trials: int = 50,
    max_sparsity: float = MAX_SPARSITY,
    seed: int = 0,
    model: str = "",
) -> Policy:
    """Random search: ``trials`` random policies fitted to the target; keep the most accurate.

    ``backend``, ``scorer`` and ``model`` as for :func:`sensitivity_policy`.
    """
    _check_target(target, metric)
    backend = _scoring(backend, scorer, model)
    rng = np.random.default_rng(seed)
    best, best_acc = None, -1.0
    for _ in range(trials):
        raw = rng.uniform(0, max_sparsity, len(backend.units))
        sparsities = fit_to_target(backend, raw, target, metric, max_sparsity)
        acc = backend.score(sparsities)
        if acc > best_acc:
            best, best_acc = sparsities, acc
    backend.pruner.reset()
    policy = _labelled(backend, best, "random", scored=True)
    policy.metrics["trials"] = trials
    return policy
