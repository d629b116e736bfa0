"""Side-by-side comparison of policies on held-out images: accuracy, MACs and parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from amc.backends import ChannelBackend
from amc.data import Dataset
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer
from amc.train import evaluate, recalibrate_bn_on


@dataclass
class Row:
    """One line of a comparison: a named network and its measurements."""

    name: str
    top1: float
    macs: int
    params: int
    flops_ratio: float
    params_ratio: float


def pruned_model(pruner: ChannelPruner, kept: Sequence[int], scorer: Scorer | None = None) -> nn.Module:
    """Physically pruned copy for ``kept`` (BatchNorm recalibrated when the scorer does it)."""
    model = pruner.export(list(kept))
    if scorer is not None and scorer.recalibration is not None:
        recalibrate_bn_on(model, scorer.recalibration, 256)
    return model


def compare(
    pruner: ChannelPruner,
    dataset: Dataset,
    policies: Mapping[str, Sequence[int]],
    scorer: Scorer | None = None,
    split: str = "test",
    device: str = "cpu",
) -> list[Row]:
    """Evaluate the dense model and each ``{name: kept channels}`` on ``split`` (held-out images)."""
    backend = ChannelBackend(pruner)  # the costs, as the search computes them
    pruner.reset()
    dense = evaluate(pruner.model, dataset, split, device=device)["top1"]
    rows = [_row("dense", dense, backend.kept_costs([u.channels for u in pruner.units]))]
    for name, kept in policies.items():
        model = pruned_model(pruner, kept, scorer)
        top1 = evaluate(model, dataset, split, device=device)["top1"]
        rows.append(_row(name, top1, backend.kept_costs(list(kept))))
    return rows


def _row(name: str, top1: float, costs: dict[str, float]) -> Row:
    """A row from :meth:`ChannelBackend.kept_costs`."""
    macs, params = int(costs["flops_absolute"]), int(costs["params_absolute"])
    return Row(name, top1, macs, params, costs["flops"], costs["params"])


def format_table(rows: Sequence[Row], title: str = "") -> str:
    """A fixed-width text table of :class:`Row` objects."""
    lines = [title] if title else []
    lines.append(f"{'policy':<12} {'top-1 %':>8} {'MMACs':>9} {'FLOPs':>7} {'params K':>9} {'params':>7}")
    for r in rows:
        lines.append(
            f"{r.name:<12} {r.top1:>8.2f} {r.macs / 1e6:>9.2f} {r.flops_ratio:>7.3f} "
            f"{r.params / 1e3:>9.1f} {r.params_ratio:>7.3f}"
        )
    return "\n".join(lines)
