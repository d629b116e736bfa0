"""The action wall: clamp each unit's sparsity so the budget stays reachable and is not overshot.

Before unit ``t`` acts, the lowest admissible sparsity is what it must remove if every
later unit were pruned to the maximum; the highest is the one that alone already meets the
target with the later units left dense. After the last unit the cost is at or below the
target on every episode (costs are evaluated with the real rounding, so exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

CostFn = Callable[[Sequence[float]], float]


def _smallest_meeting(
    cost_at: Callable[[float], float], target: float, high: float, steps: int = 14
) -> float:
    """Smallest s in [0, high] with cost_at(s) <= target, or ``high`` when none does."""
    if cost_at(0.0) <= target:
        return 0.0
    if cost_at(high) > target:
        return high
    lo, hi = 0.0, high
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cost_at(mid) <= target else (mid, hi)
    return hi


class ActionWall:
    """Two-sided bounds on each unit's sparsity for a cost-ratio budget.

    Args:
        cost: Function from all units' sparsities to the pruned/dense cost ratio.
        n_units: Number of units.
        target: Budget as a ratio (e.g. 0.5 of the FLOPs).
        max_sparsity: Largest sparsity any unit may get.
    """

    def __init__(self, cost: CostFn, n_units: int, target: float, max_sparsity: float):
        self.cost, self.n, self.target, self.max_sparsity = cost, n_units, target, max_sparsity

    def bounds(self, decided: Sequence[float]) -> tuple[float, float]:
        """(lowest, highest) admissible sparsity for the next unit after ``decided``."""
        later = self.n - len(decided) - 1
        decided = list(decided)

        def with_later(fill: float) -> Callable[[float], float]:
            return lambda s: self.cost([*decided, s, *([fill] * later)])

        low = _smallest_meeting(with_later(self.max_sparsity), self.target, self.max_sparsity)
        high = _smallest_meeting(with_later(0.0), self.target, self.max_sparsity)
        return low, max(low, high)

    def clamp(self, decided: Sequence[float], sparsity: float) -> float:
        """``sparsity`` clamped into :meth:`bounds`."""
        low, high = self.bounds(decided)
        return min(max(sparsity, low), high)
