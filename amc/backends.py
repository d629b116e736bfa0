"""What the environment prunes: a backend turns per-unit sparsities into costs and accuracy.

:class:`ChannelBackend` removes channels (units = channel groups, kept counts rounded);
:class:`FineGrainedBackend` zeroes weights (units = weight tensors). Both expose the same
small interface, so the environment, the action wall and the agents do not care which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from amc.cost import measured_pair
from amc.policy import Policy
from amc.pruning.channel import ChannelPruner
from amc.pruning.finegrained import FineGrainedConfig, MagnitudePruner
from amc.scoring import Race, Scorer

log = logging.getLogger(__name__)
UNIT_KINDS = ("conv", "depthwise", "residual", "linear")


@dataclass
class UnitFeatures:
    """Static description of a unit for the state embedding (AMC's per-layer features)."""

    name: str
    channels: int
    in_channels: int
    in_hw: tuple[int, int]
    stride: int
    kernel: int
    flops: float
    kind: str


class ChannelBackend:
    """Structured pruning: per-unit sparsity -> kept channels -> physically pruned copy.

    Args:
        pruner: The analysed model.
        scorer: Scores the pruned model on the search split (``None``: a backend that only
            computes costs and policies).
        latency: Optional function from kept channels to predicted latency (ms).
        model_name: Recorded in policies.
        latency_shape: Input shape latency is measured at (default: the example input's).

    Attributes:
        physical: Score physically pruned copies (:meth:`ChannelPruner.export`); turned off,
            with a warning, the first time cutting a model fails.
    """

    mode = "channel"

    def __init__(
        self,
        pruner: ChannelPruner,
        scorer: Scorer | None = None,
        latency: Callable[[Sequence[int]], float] | None = None,
        model_name: str = "",
        latency_shape: tuple[int, ...] | None = None,
    ):
        self.pruner, self.scorer, self.latency, self.model_name = pruner, scorer, latency, model_name
        self.latency_shape = latency_shape or pruner.graph.input_shape
        self.units = [
            UnitFeatures(u.name, u.channels, u.in_channels, u.in_hw, u.stride, u.kernel, u.flops, u.kind)
            for u in pruner.units
        ]
        self.dense = self._absolute([u.channels for u in pruner.units])
        self.physical = True

    def _absolute(self, kept: Sequence[int]) -> dict[str, float]:
        macs, params = self.pruner.cost.cost(kept)
        out = {"flops": float(macs), "params": float(params)}
        if self.latency is not None:
            out["latency"] = float(self.latency(kept))
        return out

    def quantize(self, index: int, sparsity: float) -> float:
        """The sparsity that unit ``index`` really gets after rounding its kept channels."""
        return 1.0 - self.pruner.kept_at(index, sparsity) / self.pruner.units[index].channels

    def costs(self, sparsities: Sequence[float]) -> dict[str, float]:
        """Pruned/dense ratios (``flops``, ``params``, ``latency``) and absolute values (``*_absolute``)."""
        return self.kept_costs(self.pruner.kept_for(list(sparsities)))

    def kept_costs(self, kept: Sequence[int]) -> dict[str, float]:
        """:meth:`costs` of kept channels per unit (e.g. a policy's own counts)."""
        absolute = self._absolute(kept)
        out = {k: v / self.dense[k] for k, v in absolute.items()}
        out.update({f"{k}_absolute": v for k, v in absolute.items()})
        return out

    def score(self, sparsities: Sequence[float], on: str = "search", race: Race | None = None) -> float:
        """Top-1 accuracy (%) of the network pruned to ``sparsities`` on the scorer's ``on`` images.

        ``race``: stop scoring once the network cannot reach its bar (:class:`~amc.scoring.Race`).

        The network is scored physically pruned (:meth:`ChannelPruner.export`): its output
        equals the pseudo-pruned network's, at about the pruned share of the dense cost. If a
        model cannot be cut that way (e.g. its forward hard-codes a channel count), the
        warning says so and scoring falls back to pseudo-pruning in place.
        """
        kept = self.pruner.kept_for(list(sparsities))
        model = self._cut(kept) if self.physical else None
        return self.scorer.evaluate(model if model is not None else self.pruner.apply(kept), on, race)

    def _cut(self, kept: Sequence[int]) -> nn.Module | None:
        """The physically pruned network, or ``None`` from now on if cutting fails."""
        try:
            model = self.pruner.export(kept)
            with torch.no_grad():  # one example: a forward that breaks on narrower layers fails here
                model(torch.zeros(self.pruner.graph.input_shape, device=next(model.parameters()).device))
            return model
        except Exception as err:
            log.warning("scoring pseudo-pruned networks: cutting the channels failed (%s)", err)
            self.pruner.reset()
            self.physical = False
            return None

    def measured_latency(self, sparsities: Sequence[float]) -> float:
        """Measured latency of the physically pruned network over the dense one's.

        Both are timed whole, in alternating blocks, at :attr:`latency_shape` and the
        current thread setting: the figure a user deploying the model sees, where
        ``costs()["latency"]`` is the latency table's prediction.
        """
        pruned = self.pruner.export(self.pruner.kept_for(list(sparsities)))
        device = next(pruned.parameters()).device
        dense_ms, pruned_ms = measured_pair(self.pruner.model, pruned, self.latency_shape, device)
        return pruned_ms / dense_ms

    def policy(self, sparsities: Sequence[float], **metrics: float | str) -> Policy:
        """The :class:`Policy` for ``sparsities`` (``metrics``: recorded in it)."""
        kept = self.pruner.kept_for(list(sparsities))
        return Policy.from_kept(
            self.pruner, kept, list(sparsities), model=self.model_name, metrics=dict(metrics)
        )


class FineGrainedBackend:
    """Fine-grained pruning: per-layer fraction of zeroed weights (magnitude), masks reset per episode.

    FLOPs of a sparse layer count only its nonzero weights; parameters count nonzero weights.

    Args:
        model: The dense network (prepared with weight masks in place).
        scorer: Scores the masked model on the search split.
        input_shape: Example input shape.
        model_name: Recorded in policies.
    """

    mode = "finegrained"

    def __init__(
        self,
        model: nn.Module,
        scorer: Scorer,
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
        model_name: str = "",
    ):
        from amc.cost import layer_costs

        self.model, self.scorer, self.model_name = model, scorer, model_name
        costs = {c.name: c for c in layer_costs(model, input_shape)}
        self.masker = MagnitudePruner(FineGrainedConfig())
        self.masker.prepare(model)
        self.layers = self.masker.layers
        modules = dict(model.named_modules())
        self.weights = np.array([float(modules[n].weight.numel()) for n in self.layers])
        self.layer_macs = np.array([float(costs[n].macs) for n in self.layers])
        self.total_params = float(sum(p.numel() for p in model.parameters()))
        self.total_macs = float(sum(c.macs for c in costs.values()))
        self.units = [
            UnitFeatures(
                n,
                c.out_channels,
                c.in_channels,
                c.in_hw,
                c.stride[0],
                c.kernel[0],
                c.macs,
                "linear" if c.type == "Linear" else ("depthwise" if c.groups > 1 else "conv"),
            )
            for n in self.layers
            for c in [costs[n]]
        ]
        self.dense = {"flops": self.total_macs, "params": self.total_params}

    def quantize(self, index: int, sparsity: float) -> float:
        """The fraction of weights that really gets zeroed (whole weights)."""
        return round(sparsity * self.weights[index]) / self.weights[index]

    def costs(self, sparsities: Sequence[float]) -> dict[str, float]:
        """Ratios and absolute values of nonzero-weight MACs and parameters."""
        s = np.asarray(sparsities)
        flops = self.total_macs - float((self.layer_macs * s).sum())
        params = self.total_params - float((self.weights * s).sum())
        return {
            "flops": flops / self.total_macs,
            "params": params / self.total_params,
            "flops_absolute": flops,
            "params_absolute": params,
        }

    def score(self, sparsities: Sequence[float], on: str = "search", race: Race | None = None) -> float:
        """Top-1 accuracy (%) with the masks for ``sparsities`` on the scorer's ``on`` images."""
        self.masker.step(dict(zip(self.layers, map(float, sparsities), strict=True)))
        with torch.no_grad():
            return self.scorer.evaluate(self.model, on, race)

    def policy(self, sparsities: Sequence[float], **metrics: float) -> Policy:
        """The fine-grained :class:`Policy` for ``sparsities``."""
        costs = self.costs(sparsities)
        return Policy(
            sparsities={n: float(s) for n, s in zip(self.layers, sparsities, strict=True)},
            mode="finegrained",
            model=self.model_name,
            cost_before={"macs": int(self.total_macs), "params": int(self.total_params)},
            cost_after={"macs": int(costs["flops_absolute"]), "params": int(costs["params_absolute"])},
            metrics=dict(metrics),
        )


class NMBackend(FineGrainedBackend):
    """N:M semi-structured pruning: per layer, apply the N:M pattern (sparsity ``1 - N/M``) or not.

    A layer can take the pattern when its rows (``in/groups * kh * kw`` weights) split into
    groups of M; other layers always stay dense. A unit's sparsity is a decision: any value
    above 0 applies the pattern (:meth:`quantize` snaps it to ``1 - N/M``). Costs count only
    nonzero weights, as :class:`FineGrainedBackend` does.

    Args:
        model: The dense network (prepared with weight masks in place).
        scorer: Scores the masked model on the search split.
        nm: The ``(N, M)`` pattern.
        input_shape: Example input shape.
        model_name: Recorded in policies.
    """

    mode = "nm"

    def __init__(
        self,
        model: nn.Module,
        scorer: Scorer,
        nm: tuple[int, int] = (2, 4),
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
        model_name: str = "",
    ):
        from amc.pruning.finegrained import nm_prunable, parse_nm

        super().__init__(model, scorer, input_shape, model_name)
        self.nm = parse_nm(nm)
        self.nm_sparsity = 1.0 - self.nm[0] / self.nm[1]
        modules = dict(model.named_modules())
        self.prunable = np.array([nm_prunable(modules[n].weight, self.nm[1]) for n in self.layers])
        log.debug("%d of %d layers can take %d:%d", self.prunable.sum(), len(self.layers), *self.nm)

    def quantize(self, index: int, sparsity: float) -> float:
        """``1 - N/M`` if ``sparsity`` > 0 chooses the pattern for a layer that can take it, else 0."""
        return self.nm_sparsity if sparsity > 0 and self.prunable[index] else 0.0

    def _effective(self, sparsities: Sequence[float]) -> np.ndarray:
        chosen = (np.asarray(sparsities, dtype=np.float64) > 0) & self.prunable
        return chosen * self.nm_sparsity

    def costs(self, sparsities: Sequence[float]) -> dict[str, float]:
        """Ratios and absolute values of nonzero-weight MACs and parameters for the chosen layers."""
        return super().costs(self._effective(sparsities))

    def score(self, sparsities: Sequence[float], on: str = "search", race: Race | None = None) -> float:
        """Top-1 accuracy (%) with the N:M masks of the chosen layers on the scorer's ``on`` images."""
        chosen = dict(zip(self.layers, map(float, self._effective(sparsities)), strict=True))
        self.masker.step(chosen, nm=self.nm)
        with torch.no_grad():
            return self.scorer.evaluate(self.model, on, race)

    def policy(self, sparsities: Sequence[float], **metrics: float) -> Policy:
        """The N:M :class:`Policy`: the pattern, and ``1 - N/M`` for the chosen layers (0 for the rest)."""
        effective = self._effective(sparsities)
        return replace(super().policy(effective, **metrics), mode="nm", nm=list(self.nm))
