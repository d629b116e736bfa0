"""The budget of a search: which resource, and what ratio of the dense model's it may keep."""

from __future__ import annotations

from dataclasses import dataclass

METRICS = ("flops", "params", "latency")
"""Budgeted resources: MACs, parameters, measured latency."""
MAX_SPARSITY = 0.8
"""Largest fraction of a unit's channels any policy removes (search, baselines, compare)."""


class BudgetError(ValueError):
    """A budget that is not one: an unknown metric or a ratio outside (0, 1]."""


@dataclass(frozen=True)
class Budget:
    """A resource budget as a ratio of the dense model.

    Attributes:
        metric: ``flops``, ``params`` or ``latency``.
        ratio: Share of the dense model's cost that may remain, in (0, 1]; ``None``: no
            budget (an unconstrained search, e.g. with an accuracy-guaranteed reward).
    """

    metric: str = "flops"
    ratio: float | None = 0.5

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise BudgetError(f"unknown budget metric '{self.metric}'; use one of {', '.join(METRICS)}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise BudgetError(f"budget ratio must be in (0, 1], got {self.ratio}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``flops=0.5``, ``params=0.3``, ``latency=0.6`` or ``none``.

        Raises:
            BudgetError: Naming the text and the accepted forms.
        """
        if text.strip().lower() == "none":
            return cls("flops", None)
        metric, sep, value = text.partition("=")
        try:
            return cls(metric.strip(), float(value)) if sep else cls("", None)
        except (ValueError, BudgetError):
            forms = "flops=0.5, params=0.3, latency=0.6 or none"
            raise BudgetError(f"bad target '{text}': use {forms}") from None
