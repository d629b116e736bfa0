"""The state embedding: AMC's per-unit features, normalised to [0, 1], plus unit-type flags.

Static columns (index, channels n, input channels c, input height h and width w, stride,
kernel size, FLOPs) are min-max normalised across the units; the dynamic ones are fractions
of the dense network's FLOPs: ``reduced`` (already removed by the decided units) and
``rest`` (controlled by the units after this one), and the previous action.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amc.backends import UNIT_KINDS, UnitFeatures

FEATURES = (
    "index",
    "channels",
    "in_channels",
    "in_h",
    "in_w",
    "stride",
    "kernel",
    "flops",
    "reduced",
    "rest",
    "prev_action",
    *(f"is_{k}" for k in UNIT_KINDS),
)


def static_table(units: Sequence[UnitFeatures]) -> np.ndarray:
    """Min-max normalised static features, one row per unit (8 columns)."""
    raw = np.array(
        [
            [i, u.channels, u.in_channels, u.in_hw[0], u.in_hw[1], u.stride, u.kernel, u.flops]
            for i, u in enumerate(units)
        ],
        dtype=np.float64,
    )
    low, span = raw.min(0), np.ptp(raw, 0)
    return np.where(span > 0, (raw - low) / np.where(span > 0, span, 1), 0.0)


def kind_flags(units: Sequence[UnitFeatures]) -> np.ndarray:
    """One-hot unit type per unit (conv, depthwise, residual, linear)."""
    return np.array([[float(u.kind == k) for k in UNIT_KINDS] for u in units])


def rest_fractions(units: Sequence[UnitFeatures], total_flops: float) -> np.ndarray:
    """FLOPs fraction controlled by the units after each unit."""
    flops = np.array([u.flops for u in units], dtype=np.float64)
    after = np.concatenate([np.cumsum(flops[::-1])[::-1][1:], [0.0]])
    return np.clip(after / max(total_flops, 1.0), 0.0, 1.0)


def observation(
    static: np.ndarray, flags: np.ndarray, rest: np.ndarray, t: int, reduced: float, prev_action: float
) -> np.ndarray:
    """The observation of unit ``t`` as a float32 vector in [0, 1]."""
    dynamic = [np.clip(reduced, 0.0, 1.0), rest[t], np.clip(prev_action, 0.0, 1.0)]
    return np.concatenate([static[t], dynamic, flags[t]]).astype(np.float32)
