"""Structured channel pruning: pseudo-pruning in place, and physical removal (per episode too).

:class:`ChannelPruner` analyses a model once (units, costs, channel importance, optional
reconstruction statistics) and then *pseudo-prunes* it in place as often as needed: removed
channels are silenced by zeroing their rows (see :func:`amc.pruning.units.zero_channels`)
and kept consumers are optionally refit by least squares. :meth:`ChannelPruner.reset`
restores the dense weights by copying a saved state (no deep copy of the module).
:meth:`ChannelPruner.export` physically removes the same channels with torch-pruning and
returns a smaller model whose output equals the pseudo-pruned one; it takes milliseconds,
so the search environment scores every episode on such a copy, at about its share of the
dense cost.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from amc.pruning.cost import CostModel
from amc.pruning.importance import channel_importance
from amc.pruning.reconstruct import Reconstructor
from amc.pruning.units import PruningGraph, PruningUnit, analyse, split_kept, zero_channels

log = logging.getLogger(__name__)


def kept_channels(channels: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept at ``sparsity``: the nearest multiple of ``round_to`` (or all channels).

    Never zero and never more than ``channels``; sparsity 0 keeps every channel, and a unit
    narrower than ``round_to`` keeps all. Ties go to the wider option.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    step = min(round_to, channels)
    wanted = channels * (1.0 - sparsity)
    lower = int(wanted // step) * step
    upper = min(channels, lower + step)
    kept = upper if upper - wanted <= wanted - lower else lower
    return max(step, kept)


class ChannelPruner:
    """Analyse a model once, then pseudo-prune, reset and export it many times.

    Args:
        model: The trained network (modified in place by :meth:`apply`; see :meth:`reset`).
        input_shape: Example input shape, e.g. ``(1, 3, 32, 32)``.
        criterion: Channel importance, ``l1`` (default) or ``l2`` norm of the unit's weights.
        round_to: Kept channels are a multiple of this (hardware-friendly widths).
        calibration: Images for least-squares reconstruction of consumer layers; ``None``
            disables reconstruction.
        positions: Sampled output positions per calibration image (reconstruction).
        strict: Refuse a model with a layer that cannot be pruned; by default such a layer
            is left dense, with a warning naming it (see :func:`~amc.pruning.units.analyse`).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
        criterion: str = "l1",
        round_to: int = 1,
        calibration: Tensor | None = None,
        positions: int = 10,
        strict: bool = False,
    ):
        self.model = model
        self.round_to = round_to
        self.criterion = criterion
        self.graph: PruningGraph = analyse(model, input_shape, strict)
        self.units: list[PruningUnit] = self.graph.units
        self.cost = CostModel(self.graph)
        self.importance = [channel_importance(model, u, criterion) for u in self.units]
        self.reconstructor = (
            Reconstructor(model, self.graph, calibration, positions) if calibration is not None else None
        )
        self._dense = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @property
    def unit_names(self) -> list[str]:
        """Unit names in execution order."""
        return [u.name for u in self.units]

    def kept_at(self, index: int, sparsity: float) -> int:
        """Kept channels of unit ``index`` at ``sparsity``.

        A multiple of ``round_to`` and of the unit's tie size (a grouped conv keeps the same
        channels in every group); a unit that joins several concatenated branches keeps at
        least one channel per branch.
        """
        u = self.units[index]
        return max(kept_channels(u.channels, sparsity, math.lcm(self.round_to, u.tie_size)), len(u.segments))

    def kept_for(self, sparsities: Sequence[float]) -> list[int]:
        """Kept channels per unit for per-unit sparsities (in unit order); see :meth:`kept_at`."""
        if len(sparsities) != len(self.units):
            raise ValueError(f"expected {len(self.units)} sparsities (one per unit), got {len(sparsities)}")
        return [self.kept_at(i, s) for i, s in enumerate(sparsities)]

    def removed_channels(self, kept: Sequence[int]) -> list[set[int]]:
        """Root indices of the removed channels per unit: the least important of each segment.

        Tied channels (see :attr:`~amc.pruning.units.PruningUnit.ties`) go together, ranked by
        their summed importance.

        Raises:
            ValueError: A unit's kept channels are not a multiple of its tie size.
        """
        out = []
        for unit, k, imp, sizes in zip(self.units, kept, self.importance, self.cost.sizes, strict=True):
            if k % unit.tie_size and k != unit.channels:
                raise ValueError(
                    f"unit '{unit.name}' ties its channels in sets of {unit.tie_size} (a grouped conv); "
                    f"cannot keep {k}"
                )
            removed: set[int] = set()
            for seg, keep in zip(unit.segments, split_kept(k, sizes), strict=True):
                classes = torch.tensor(unit.tie_classes(seg)) if unit.ties else torch.tensor(seg)[:, None]
                order = torch.argsort(imp[classes].sum(1), descending=True, stable=True)
                removed.update(classes[order[keep // classes.shape[1] :]].flatten().tolist())
            out.append(removed)
        return out

    def sparsities_by_name(self, policy: Mapping[str, float]) -> list[float]:
        """Order a ``{unit name: sparsity}`` mapping by unit; unknown names are an error."""
        unknown = set(policy) - set(self.unit_names)
        if unknown:
            raise KeyError(
                f"unknown unit(s) {sorted(unknown)}; this model's units: {', '.join(self.unit_names)}"
            )
        return [float(policy.get(n, 0.0)) for n in self.unit_names]

    def reset(self) -> None:
        """Restore the dense weights and BatchNorm statistics."""
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(self._dense[k])

    def _pseudo_prune(self, kept: Sequence[int], removed: list[set[int]] | None = None) -> list[set[int]]:
        """Pseudo-prune in place from the dense weights; returns the removed root indices per unit."""
        self.reset()
        removed = self.removed_channels(kept) if removed is None else removed
        if self.reconstructor is not None:
            self.reconstructor.refit(self.model, self.units, removed)
        for u, r in zip(self.units, removed, strict=True):
            if r:
                zero_channels(self.model, u, r)
        return removed

    def apply(self, kept: Sequence[int]) -> nn.Module:
        """Pseudo-prune the model in place to ``kept`` channels per unit (from the dense weights)."""
        self._pseudo_prune(kept)
        return self.model

    def export(self, kept: Sequence[int], removed: list[set[int]] | None = None) -> nn.Module:
        """A new, physically smaller model equal in output to ``apply(kept)``; the model is reset.

        Cheap enough to run per episode (a copy, a trace and index selections): scoring the
        smaller model costs about its share of the dense FLOPs, where a pseudo-pruned one
        costs as much as the dense network. ``removed`` (root indices per unit, as
        :meth:`removed_channels` gives them) replays an earlier choice instead of ranking.
        """
        removed = self._pseudo_prune(kept, removed)
        pruned = copy.deepcopy(self.model).eval()
        self.reset()
        example = torch.zeros(self.graph.input_shape, device=next(pruned.parameters()).device)
        with torch.enable_grad():  # torch-pruning traces through autograd
            graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
        modules = dict(pruned.named_modules())
        for unit, rem in zip(self.units, removed, strict=True):
            if not rem:
                continue
            # The producer that carries every channel of the unit: the first one in execution
            # order may hold only its slice of a concatenation.
            item = max(
                (
                    i
                    for i in unit.items
                    if i.is_output and isinstance(modules[i.module], (nn.Conv2d, nn.Linear))
                ),
                key=lambda i: len(set(i.root)),
            )
            root = modules[item.module]
            idxs = sorted({i for i, r in zip(item.idxs, item.root, strict=True) if r in rem})
            pruner = graph.get_pruner_of_module(root)
            group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs)
            group.prune()
        return pruned
