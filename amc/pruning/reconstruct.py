"""Least-squares reconstruction of consumer layers after channel selection (He et al., 2017).

When a unit loses channels, every dense consumer of those channels is refit so that its
outputs on sampled positions of a calibration batch match the unpruned outputs:
``W_K = argmin ||X_K W_K^T - X W^T||``. Because the targets are the unpruned layer's own
outputs, ``X^T Y = G W^T`` with ``G = X^T X``; so one calibration pass stores ``G`` per
consumer and each episode only solves ``G_KK W_K^T = G_K: W^T`` on the kept rows.
Depthwise convolutions are carried along by their unit, not refit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.pruning.units import PruningGraph, PruningUnit


def _patches(module: nn.Module, x: Tensor, positions: int, gen: torch.Generator) -> Tensor:
    """Rows of the layer's input as its weight sees them, at ``positions`` random places per image."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # N, D, L
    n, d, length = cols.shape
    pick = torch.randint(0, length, (n, min(positions, length)), generator=gen).to(x.device)
    return cols.gather(2, pick[:, None, :].expand(n, d, pick.shape[1])).permute(0, 2, 1).reshape(-1, d)


class Reconstructor:
    """Gram matrices of every dense consumer from one calibration pass, and the per-episode refit.

    Args:
        model: The dense network.
        graph: Its analysed units.
        calibration: A batch of (normalised) calibration images.
        positions: Sampled output positions per image for convolutions.
        ridge: Relative Tikhonov regularisation added to ``G_KK``'s diagonal.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: PruningGraph,
        calibration: Tensor,
        positions: int = 10,
        ridge: float = 1e-4,
    ):
        self.ridge = ridge
        modules = dict(model.named_modules())
        names = {i.module for u in graph.units for i in u.items if not i.is_output}
        self.consumers = {
            n: modules[n]
            for n in names
            if isinstance(modules[n], nn.Linear)
            or (isinstance(modules[n], nn.Conv2d) and modules[n].groups == 1)
        }
        self.gram: dict[str, Tensor] = {}
        self._rhs_cache: dict[str, tuple[Tensor, Tensor]] = {}
        gen = torch.Generator().manual_seed(0)

        def hook(name: str):
            def record(mod: nn.Module, inp: tuple, out: Tensor) -> None:
                rows = _patches(mod, inp[0].detach(), positions, gen).double()
                self.gram[name] = self.gram.get(name, 0) + rows.T @ rows

            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in self.consumers.items()]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in calibration.split(256):
                    model(batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)

    def removed_inputs(
        self, units: Sequence[PruningUnit], removed: Sequence[set[int]]
    ) -> dict[str, set[int]]:
        """Input features (per consumer) that belong to removed channels."""
        out: dict[str, set[int]] = {}
        for unit, rem in zip(units, removed, strict=True):
            if not rem:
                continue
            for item in unit.items:
                if not item.is_output and item.module in self.consumers:
                    gone = {i for i, r in zip(item.idxs, item.root, strict=True) if r in rem}
                    out.setdefault(item.module, set()).update(gone)
        return out

    def _rhs(self, name: str, weight: Tensor) -> Tensor:
        """``G W^T`` (D x out) of a consumer with (dense) ``weight``: computed once, then reused.

        Each refit needs the rows of the kept inputs; selecting them from this product gives
        the same numbers as multiplying the selected rows of ``G`` by ``W^T`` in every episode
        (a fifth to a third of a refit's time), without that multiplication.
        """
        cached = self._rhs_cache.get(name)
        if cached is None or not torch.equal(cached[0], weight):
            w = weight.reshape(weight.shape[0], -1).to(self.gram[name].dtype)
            cached = (weight.clone(), self.gram[name] @ w.T)
            self._rhs_cache[name] = cached
        return cached[1]

    def refit(self, model: nn.Module, units: Sequence[PruningUnit], removed: Sequence[set[int]]) -> None:
        """Refit, in place, every consumer that lost input channels (``model`` holds dense weights)."""
        for name, gone in self.removed_inputs(units, removed).items():
            module = self.consumers[name]
            weight = module.weight.detach()
            g = self.gram[name]
            per_input = g.shape[0] // weight.shape[1]  # k*k for convs, 1 for linear
            keep = torch.ones(weight.shape[1], dtype=torch.bool)
            keep[sorted(gone)] = False
            cols = (keep.nonzero()[:, :1] * per_input + torch.arange(per_input)).flatten().to(g.device)
            gkk = g[cols[:, None], cols]
            gkk.diagonal().add_(self.ridge * gkk.diagonal().mean().clamp_min(1e-12))
            solution = torch.linalg.solve(gkk, self._rhs(name, weight)[cols])  # |K| x out
            new = torch.zeros(weight.shape[0], g.shape[0], dtype=g.dtype, device=g.device)
            new[:, cols] = solution.T
            with torch.no_grad():
                module.weight.copy_(new.reshape(weight.shape).to(weight.dtype))
