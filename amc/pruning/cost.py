"""Closed-form FLOPs (MACs) and parameter counts of a network as a function of kept channels.

Every layer's cost at full width is ultralytics-thop's count; pruning scales it by the
fraction of its input and output features that remain. A unit's kept channels are spread
over its segments by :func:`~amc.pruning.units.split_kept`, exactly as the pruner removes
them. Dense and grouped convolutions and linear layers scale with both (``kept_in *
kept_out``; a grouped conv keeps the same channels in every group, so its groups stay
whole), everything else (BatchNorm, depthwise convs, pooling) with its channels. The
result equals thop's count on the physically pruned model.
"""

from __future__ import annotations

from collections.abc import Sequence

from amc.pruning.units import ModuleInfo, PruningGraph, split_kept


class CostModel:
    """Evaluate MACs and parameters for any vector of kept channels per unit, in microseconds.

    Args:
        graph: The analysed network (:func:`amc.pruning.units.analyse`).
    """

    def __init__(self, graph: PruningGraph):
        self.graph = graph
        self.full = [u.channels for u in graph.units]
        self.sizes = [[len(seg) for seg in u.segments] for u in graph.units]
        self.segment_sizes = [n for sizes in self.sizes for n in sizes]

    def removed(self, kept: Sequence[int]) -> list[int]:
        """Removed channels per segment (all units' segments in a row) for ``kept`` per unit."""
        return [
            n - k
            for sizes, unit_kept in zip(self.sizes, kept, strict=True)
            for n, k in zip(sizes, split_kept(unit_kept, sizes), strict=True)
        ]

    def _kept(self, total: int, attr: dict[int, int], removed: Sequence[int]) -> int:
        return total - sum(removed[s] * count // self.segment_sizes[s] for s, count in attr.items())

    def _scales(self, info: ModuleInfo, removed: Sequence[int]) -> tuple[int, int, int, int]:
        kin = self._kept(info.c_in, info.in_attr, removed)
        kout = self._kept(info.c_out, info.out_attr, removed)
        return info.c_in, kin, info.c_out, kout

    def module_cost(self, info: ModuleInfo, removed: Sequence[int]) -> tuple[int, int]:
        """MACs and parameters of one layer when ``removed[s]`` channels of segment ``s`` are gone."""
        cin, kin, cout, kout = self._scales(info, removed)
        if info.mixing:
            macs = info.macs * kin * kout // (cin * cout)
            params = sum(
                n * kin * kout // (cin * cout) if k == "weight" else n * kout // cout
                for k, n in info.params.items()
            )
        else:
            macs = info.macs * kout // cout
            params = sum(n * kout // cout for n in info.params.values())
        return macs, params

    def cost(self, kept: Sequence[int] | None = None) -> tuple[int, int]:
        """Total MACs and parameters with ``kept[u]`` channels in unit ``u`` (``None``: full width)."""
        return self._cost(self.removed(self.full if kept is None else kept))

    def _cost(self, removed: Sequence[int]) -> tuple[int, int]:
        macs = params = 0
        for info in self.graph.modules.values():
            m, p = self.module_cost(info, removed)
            macs += m
            params += p
        return macs, params

    def macs(self, kept: Sequence[int] | None = None) -> int:
        """Total MACs."""
        return self.cost(kept)[0]

    def params(self, kept: Sequence[int] | None = None) -> int:
        """Total parameters."""
        return self.cost(kept)[1]

    def layer_widths(self, kept: Sequence[int]) -> dict[str, tuple[int, int]]:
        """Kept (input, output) channels of every convolution and linear layer."""
        removed = self.removed(kept)
        out = {}
        for name, info in self.graph.modules.items():
            if info.type in ("Conv2d", "Linear"):
                _, kin, _, kout = self._scales(info, removed)
                out[name] = (kin, kout)
        return out

    def annotate_units(self) -> None:
        """Set each unit's ``flops``/``params``: the cost that disappears when it is fully removed."""
        total_macs, total_params = self.cost()
        owners = [index for index, _ in self.graph.segments()]
        for u in self.graph.units:
            removed = [
                n if owner == u.index else 0 for owner, n in zip(owners, self.segment_sizes, strict=True)
            ]
            macs, params = self._cost(removed)
            u.flops, u.params = total_macs - macs, total_params - params
