"""Fine-grained (unstructured) magnitude pruning with reversible masks.

The mask lifecycle follows torchao sparsity: **prepare** puts a boolean mask on every
prunable weight (a ``torch.nn.utils.parametrize`` parametrization, so ``model(x)`` computes
with ``weight * mask`` while the dense weight stays untouched), **step** recomputes masks by
weight magnitude, **reset** sets every mask back to ones (cheap, so a search can re-apply a
policy each episode without copying the model), and **squash** folds the masks into the
weights and removes the parametrizations, leaving a plain model whose pruned weights are 0.

>>> pruner = MagnitudePruner()
>>> pruner.prepare(model)
>>> pruner.step({"features.0": 0.5, "classifier": 0.9})  # per-layer fractions of zeros
>>> pruner.step(0.8, scope="global")                      # one threshold over all layers
>>> pruner.step(0.5, nm=(2, 4))                           # 2:4 semi-structured pattern
>>> pruner.reset()                                        # dense again
>>> plain = pruner.squash(model)
>>> export_sparse(plain, "model.sparse.pt")               # CSR where it is smaller
>>> export_nm(plain, (2, 4), "model.nm.pt")                # N:M weights as values + 2-bit indices
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "PRUNABLE_TYPES",
    "FineGrainedConfig",
    "MagnitudePruner",
    "SparsityReport",
    "apply_nm",
    "export_nm",
    "export_sparse",
    "load_nm",
    "load_sparse",
    "nm_prunable",
    "nm_stored_size",
    "parse_nm",
    "prunable_weights",
    "satisfies_nm",
    "sparsity",
    "stored_size",
]

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
"""Module types whose ``weight`` can be pruned (depthwise and grouped convolutions included)."""

Scope = Literal["local", "global"]

_FORMAT = "amc-sparse"
_VERSION = 1
_VALUE_BYTES = 4  # weights are costed as float32
_INDEX_BYTES = 4  # CSR indices are int32
_NM_FORMAT = "amc-nm"
_NM_VERSION = 1


@dataclass(frozen=True)
class FineGrainedConfig:
    """Which layers a :class:`MagnitudePruner` masks.

    Attributes:
        exclude_first_last: Leave the first convolution and the last linear layer dense (they
            are small and sensitive, the usual choice).
        layers: Qualified module names to mask; ``None`` masks every prunable layer (minus
            the ends if ``exclude_first_last``).
    """

    exclude_first_last: bool = False
    layers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SparsityReport:
    """Fraction of exactly-zero weights, per layer and over all the reported layers.

    Attributes:
        layers: Qualified module name -> fraction of its weights that are zero.
        zeros: Zero weights over all reported layers.
        total: Weights over all reported layers.
    """

    layers: dict[str, float]
    zeros: int
    total: int

    @property
    def overall(self) -> float:
        """Weight-count-weighted fraction of zeros over all reported layers."""
        return self.zeros / self.total if self.total else 0.0


class _WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with a boolean ``mask`` buffer."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        """Return the masked weight, with ``+0.0`` in the masked entries.

        ``weight * mask`` would give ``-0.0`` for negative weights, whose signs
        :func:`export_nm` would then have to store.
        """
        return torch.where(self.mask, weight, 0.0)


def prunable_weights(model: nn.Module, exclude_first_last: bool = False) -> dict[str, nn.Module]:
    """The Conv2d (including depthwise) and Linear layers of ``model``.

    Args:
        model: Any model; a prepared (masked) model gives the same names.
        exclude_first_last: Drop the first Conv2d and the last Linear layer.

    Returns:
        Qualified module name -> module, in registration order (the execution order for the
        sequential models of :mod:`amc.models`; a model whose ``forward`` calls its children
        in another order keeps registration order).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if exclude_first_last:
        convs = [name for name, m in layers.items() if isinstance(m, nn.Conv2d)]
        linears = [name for name, m in layers.items() if isinstance(m, nn.Linear)]
        for name in convs[:1] + linears[-1:]:
            del layers[name]
    return layers


def _resolve_layers(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """Look ``names`` up in ``model``, in the model's order; raise on unknown or unprunable ones."""
    prunable = prunable_weights(model)
    modules = dict(model.named_modules())
    wanted = set()
    for name in names:
        if name in prunable:
            wanted.add(name)
        elif name in modules:
            raise TypeError(
                f"module '{name}' is a {type(modules[name]).__name__}, which cannot be pruned; "
                f"prunable types: {', '.join(t.__name__ for t in PRUNABLE_TYPES)}"
            )
        else:
            raise ValueError(f"unknown layer '{name}'; valid names: {', '.join(prunable) or 'none'}")
    return {name: m for name, m in prunable.items() if name in wanted}


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"sparsity of '{name}' must be a number, got {type(value).__name__}")
    fraction = float(value)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"sparsity of '{name}' must be in [0, 1), got {fraction}")
    return fraction


def _check_nm(nm: tuple[int, int]) -> tuple[int, int]:
    n, m = nm
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"N:M pattern needs integers 0 < N < M, got {n}:{m}")
    return n, m


def _local_mask(magnitude: Tensor, fraction: float) -> Tensor:
    """Boolean keep-mask zeroing exactly ``round(fraction * numel)`` smallest entries."""
    flat = magnitude.flatten()
    keep = torch.ones_like(flat, dtype=torch.bool)
    k = round(fraction * flat.numel())
    if k:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return keep.view_as(magnitude)


def _nm_mask(magnitude: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights of each output row.

    A row is the weight flattened to ``out x (in/groups * kh * kw)`` in PyTorch layout; the
    last ``cols % m`` columns of every row form no complete group and stay dense.
    """
    rows = magnitude.shape[0]
    flat = magnitude.reshape(rows, -1)
    full = flat.shape[1] - flat.shape[1] % m
    keep = torch.ones_like(flat, dtype=torch.bool)
    if full:
        groups = flat[:, :full].reshape(rows, full // m, m)
        top = groups.topk(n, dim=2).indices
        group_keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
        keep[:, :full] = group_keep.reshape(rows, full)
    return keep.view_as(magnitude)


def _global_masks(magnitudes: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """Keep-masks from one magnitude ranking over all tensors, zeroing ``fraction`` of the total."""
    keep = _local_mask(torch.cat([t.flatten() for t in magnitudes.values()]), fraction)
    parts = keep.split([t.numel() for t in magnitudes.values()])
    return {name: part.view_as(t) for (name, t), part in zip(magnitudes.items(), parts, strict=True)}


def _detach_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its generated class.

    ``copy.deepcopy`` of a parametrized module shares the generated ``Parametrized*`` class,
    and ``remove_parametrizations`` deletes the weight property from that class, which would
    break every copy still masked. A private class confines the removal to ``module``.
    """
    cls = module.__class__
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


class MagnitudePruner:
    """Unstructured magnitude pruning through reversible weight masks.

    Args:
        config: Which layers to mask; the default masks every Conv2d and Linear layer.
    """

    def __init__(self, config: FineGrainedConfig | None = None) -> None:
        self.config = config or FineGrainedConfig()
        self._model: nn.Module | None = None
        self._layers: dict[str, nn.Module] = {}

    @property
    def layers(self) -> list[str]:
        """Names of the masked layers, in model order (empty before :meth:`prepare`)."""
        return list(self._layers)

    @property
    def masks(self) -> dict[str, Tensor]:
        """Layer name -> its live boolean mask buffer (``True`` keeps a weight)."""
        return {name: self._mask(name).mask for name in self._layers}

    def prepare(self, model: nn.Module) -> nn.Module:
        """Register an all-ones mask parametrization on each selected layer's weight, in place.

        The weight ``Parameter`` object is kept (as ``parametrizations.weight.original``), so
        an optimizer built before or after ``prepare`` trains the dense weights; gradients of
        masked entries are zero.

        Args:
            model: The model to prune.

        Returns:
            ``model`` itself, now computing with masked weights.

        Raises:
            RuntimeError: This pruner already holds a prepared model.
            ValueError: A configured layer name is unknown, or a weight is already parametrized.
            TypeError: A configured layer is not a Conv2d or Linear module.
        """
        if self._model is not None:
            raise RuntimeError("this pruner already prepared a model; squash it or use a new pruner")
        if self.config.layers is None:
            layers = prunable_weights(model, self.config.exclude_first_last)
        else:
            layers = _resolve_layers(model, self.config.layers)
        for name, module in layers.items():
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"the weight of '{name}' is already parametrized; squash it first")
        for module in layers.values():
            parametrize.register_parametrization(module, "weight", _WeightMask(module.weight))
        self._model, self._layers = model, layers
        log.debug("prepared %d layers for fine-grained pruning", len(layers))
        return model

    def _mask(self, name: str) -> _WeightMask:
        return self._layers[name].parametrizations.weight[0]

    def _magnitude(self, name: str) -> Tensor:
        return self._layers[name].parametrizations.weight.original.detach().abs()

    def _fractions(self, sparsities: float | Mapping[str, float]) -> dict[str, float]:
        """Validate ``sparsities`` into layer name -> fraction, in model order."""
        if self._model is None:
            raise RuntimeError("call prepare(model) before step()")
        if not isinstance(sparsities, Mapping):
            fraction = _check_fraction(sparsities, "all layers")
            return dict.fromkeys(self._layers, fraction)
        for name in sparsities:
            if name not in self._layers:
                _resolve_layers(self._model, [name])  # raises for unknown or unprunable names
                raise ValueError(
                    f"layer '{name}' was not prepared; prepared layers: {', '.join(self._layers)}"
                )
        return {name: _check_fraction(sparsities[name], name) for name in self._layers if name in sparsities}

    @torch.no_grad()
    def step(
        self,
        sparsities: float | Mapping[str, float],
        scope: Scope = "local",
        nm: tuple[int, int] | None = None,
    ) -> None:
        """Recompute the masks of the named layers from the magnitudes of their dense weights.

        Masks are always computed from the untouched dense weights, so calling ``step``
        again replaces (does not compound) a layer's mask; layers not named keep their mask.

        Args:
            sparsities: Layer name -> fraction of its weights to zero, in [0, 1); a single
                float applies to every prepared layer.
            scope: ``local`` zeros exactly ``round(fraction * numel)`` smallest-magnitude
                weights of each layer. ``global`` ranks the magnitudes of all named layers
                together and zeros the smallest ``round(f * total)``, where ``f`` is the
                weight-count-weighted mean of the requested fractions; layers with small
                weights can then lose far more than ``f`` (even all of their weights).
            nm: ``(N, M)`` keeps the N largest-magnitude weights of every M consecutive ones
                along each output row (``in/groups * kh * kw`` flattened in PyTorch layout);
                the ``cols % M`` trailing weights of a row stay dense. The pattern fixes the
                sparsity, so each requested fraction must be 0 (layer left dense) or
                ``1 - N/M``; ``scope`` must be ``local``.

        Raises:
            RuntimeError: :meth:`prepare` was not called.
            ValueError: An unknown or unprepared layer name, a fraction outside [0, 1), an
                unknown scope, or a fraction that does not match the N:M pattern.
            TypeError: A named module is not a Conv2d or Linear layer, or a fraction is not
                a number.
        """
        fractions = self._fractions(sparsities)
        if scope not in ("local", "global"):
            raise ValueError(f"unknown scope '{scope}'; use local or global")
        if nm is not None:
            self._step_nm(fractions, nm, scope)
        elif scope == "local":
            for name, fraction in fractions.items():
                self._mask(name).mask.copy_(_local_mask(self._magnitude(name), fraction))
        else:
            self._step_global(fractions)

    def _step_nm(self, fractions: dict[str, float], nm: tuple[int, int], scope: str) -> None:
        n, m = _check_nm(nm)
        if scope != "local":
            raise ValueError("an N:M pattern is applied per group; use scope='local'")
        target = 1.0 - n / m
        for name, fraction in fractions.items():
            if fraction != 0.0 and not math.isclose(fraction, target, abs_tol=1e-6):
                raise ValueError(
                    f"sparsity of '{name}' is {fraction}, but a {n}:{m} pattern zeros {target:g}; "
                    "request 0 (dense) or exactly 1 - N/M"
                )
        for name, fraction in fractions.items():
            magnitude = self._magnitude(name)
            keep = _nm_mask(magnitude, n, m) if fraction else torch.ones_like(magnitude, dtype=torch.bool)
            self._mask(name).mask.copy_(keep)

    def _step_global(self, fractions: dict[str, float]) -> None:
        if not fractions:
            return
        magnitudes = {name: self._magnitude(name) for name in fractions}
        total = sum(t.numel() for t in magnitudes.values())
        mean = sum(fractions[name] * t.numel() for name, t in magnitudes.items()) / total
        for name, keep in _global_masks(magnitudes, mean).items():
            self._mask(name).mask.copy_(keep)
            if not keep.any():
                log.warning("global pruning zeroed every weight of '%s'", name)

    @torch.no_grad()
    def reset(self) -> None:
        """Set every mask back to ones: the model computes with its dense weights again."""
        for name in self._layers:
            self._mask(name).mask.fill_(True)

    def squash(self, model: nn.Module | None = None) -> nn.Module:
        """Fold the masks into the weights and remove the mask parametrizations, in place.

        Args:
            model: The prepared model, or a deep copy of it (the pruner then stays usable on
                the original); ``None`` squashes the prepared model.

        Returns:
            The same model as plain modules whose pruned weights are exactly zero.
        """
        model = self._model if model is None else model
        if model is None:
            raise RuntimeError("nothing to squash: call prepare(model) first")
        masked = [
            m
            for m in model.modules()
            if parametrize.is_parametrized(m, "weight")
            and any(isinstance(p, _WeightMask) for p in m.parametrizations.weight)
        ]
        for module in masked:
            _detach_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if model is self._model:
            self._model, self._layers = None, {}
        return model

    def sparsity(self, model: nn.Module | None = None) -> SparsityReport:
        """Fraction of zero weights of the prepared layers (all prunable layers of ``model``)."""
        if model is None:
            if self._model is None:
                raise RuntimeError("call prepare(model) first or pass a model")
            return sparsity(self._model, self._layers)
        return sparsity(model)


@torch.no_grad()
def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityReport:
    """Fraction of exactly-zero weights per layer and overall (masked or plain models).

    Args:
        model: The model.
        layers: Layer names to report; ``None`` reports every Conv2d and Linear layer.

    Returns:
        The per-layer and weight-count-weighted overall fractions.
    """
    modules = prunable_weights(model) if layers is None else _resolve_layers(model, layers)
    counts = {name: (int((m.weight == 0).sum()), m.weight.numel()) for name, m in modules.items()}
    return SparsityReport(
        layers={name: zeros / total for name, (zeros, total) in counts.items()},
        zeros=sum(zeros for zeros, _ in counts.values()),
        total=sum(total for _, total in counts.values()),
    )


@torch.no_grad()
def _effective_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict the squashed model would have: parametrized tensors by plain name."""
    replaced: dict[str, tuple[str, nn.Module, str]] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{name}." if name else ""
            for tensor in module.parametrizations:
                replaced[f"{prefix}parametrizations.{tensor}."] = (f"{prefix}{tensor}", module, tensor)
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        match = next((p for p in replaced if key.startswith(p)), None)
        if match is None:
            state[key] = value
        elif replaced[match][0] not in state:
            plain, module, tensor = replaced[match]
            state[plain] = getattr(module, tensor).detach()
    return state


def _weight_keys(model: nn.Module) -> dict[str, str]:
    """State-dict key of each prunable weight -> its layer name."""
    return {(f"{name}.weight" if name else "weight"): name for name in prunable_weights(model)}


def _layer_bytes(weight: Tensor) -> dict[str, int]:
    numel, rows = weight.numel(), weight.shape[0]
    nonzero = int(torch.count_nonzero(weight))
    return {
        "numel": numel,
        "nonzero": nonzero,
        "dense": _VALUE_BYTES * numel,
        "csr": (_VALUE_BYTES + _INDEX_BYTES) * nonzero + _INDEX_BYTES * (rows + 1),
        "bitmask": math.ceil(numel / 8) + _VALUE_BYTES * nonzero,
    }


def _size_report(state: dict[str, Tensor], weight_keys: dict[str, str]) -> dict:
    layers = {weight_keys[k]: _layer_bytes(v) for k, v in state.items() if k in weight_keys}
    other = sum(v.numel() * v.element_size() for k, v in state.items() if k not in weight_keys)
    total = {fmt: other + sum(sizes[fmt] for sizes in layers.values()) for fmt in ("dense", "csr", "bitmask")}
    total["best"] = other + sum(min(sizes["dense"], sizes["csr"]) for sizes in layers.values())
    ratio = {fmt: total["dense"] / total[fmt] for fmt in ("csr", "bitmask", "best")}
    return {"layers": layers, "other": other, "total": total, "ratio": ratio}


def stored_size(model: nn.Module) -> dict:
    """Bytes needed to store the model with its Conv2d/Linear weights dense, CSR or bitmask.

    Every weight is costed as float32 on its 2-D view ``out x rest``: dense is
    ``4 * numel``; CSR is ``4 * nnz`` values + ``4 * nnz`` int32 column indices +
    ``4 * (out + 1)`` int32 row pointers; bitmask is ``ceil(numel / 8)`` bytes + ``4 * nnz``
    values. Every other tensor (biases, BatchNorm parameters and statistics) is counted dense
    at its own dtype size. Masked models are measured as if squashed.

    Args:
        model: A plain or masked model.

    Returns:
        ``{"layers": {name: {"numel", "nonzero", "dense", "csr", "bitmask"}}, "other": int,
        "total": {"dense", "csr", "bitmask", "best"}, "ratio": {"csr", "bitmask", "best"}}``,
        where ``best`` takes the smaller of dense and CSR per layer (what
        :func:`export_sparse` writes) and each ratio is the dense total over that total.
    """
    return _size_report(_effective_state(model), _weight_keys(model))


def _to_csr(weight: Tensor) -> dict[str, Tensor | list[int]]:
    flat = weight.reshape(weight.shape[0], -1)
    rows, cols = flat.nonzero(as_tuple=True)
    crow = torch.zeros(flat.shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=flat.shape[0]).cumsum(0)
    return {
        "shape": list(weight.shape),
        "crow_indices": crow.to(torch.int32),
        "col_indices": cols.to(torch.int32),
        "values": flat[rows, cols],
    }


def _from_csr(entry: dict, key: str) -> Tensor:
    try:
        shape, values = [int(s) for s in entry["shape"]], entry["values"]
        crow, col = entry["crow_indices"].long(), entry["col_indices"].long()
        if not isinstance(values, Tensor):
            raise TypeError(f"values are a {type(values).__name__}")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"sparse entry '{key}' is malformed: {exc}") from exc
    rows, width = shape[0], math.prod(shape[1:])
    valid = (
        crow.numel() == rows + 1
        and col.numel() == values.numel() == int(crow[-1])
        and int(crow[0]) == 0
        and bool((crow.diff() >= 0).all())
        and bool(((col >= 0) & (col < width)).all())
    )
    if not valid:
        raise ValueError(f"sparse entry '{key}' has inconsistent CSR indices for shape {shape}")
    dense = torch.zeros(rows, width, dtype=values.dtype)
    dense[torch.arange(rows).repeat_interleave(crow.diff()), col] = values
    return dense.reshape(shape)


def export_sparse(model: nn.Module, path: str | Path) -> dict:
    """Write the model's state dict with each Conv2d/Linear weight dense or CSR, whichever is smaller.

    The file holds ``{"format": "amc-sparse", "version": 1, "tensors": {key: value}}`` where a
    value is a tensor or, for a CSR weight, a dict of ``shape`` (list of ints), int32
    ``crow_indices`` and ``col_indices`` and the ``values``; it loads with
    ``torch.load(weights_only=True)``. A masked model is written as if squashed. The write is
    atomic (temporary file, then rename).

    Args:
        model: A plain or masked model.
        path: Output file.

    Returns:
        The :func:`stored_size` report plus ``file_bytes``, the size of the written file.
    """
    path = Path(path)
    state, weight_keys = _effective_state(model), _weight_keys(model)
    report = _size_report(state, weight_keys)
    tensors: dict[str, object] = {}
    for key, value in state.items():
        sizes = report["layers"][weight_keys[key]] if key in weight_keys else None
        tensors[key] = _to_csr(value) if sizes and sizes["csr"] < sizes["dense"] else value
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": _FORMAT, "version": _VERSION, "tensors": tensors}, tmp)
    os.replace(tmp, path)
    report["file_bytes"] = path.stat().st_size
    log.info(
        "wrote %s: %d bytes on disk, %d of %d weights as CSR; float32 dense %d bytes, best %d bytes (%.2fx)",
        path,
        report["file_bytes"],
        sum(isinstance(v, dict) for v in tensors.values()),
        len(weight_keys),
        report["total"]["dense"],
        report["total"]["best"],
        report["ratio"]["best"],
    )
    return report


def load_sparse(path: str | Path) -> dict[str, Tensor]:
    """Read a file written by :func:`export_sparse` back into a dense state dict.

    Args:
        path: The file.

    Returns:
        State-dict key -> dense tensor, ready for ``model.load_state_dict``.

    Raises:
        ValueError: The file is not an ``amc-sparse`` file or a CSR entry is inconsistent.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an {_FORMAT} file (write it with export_sparse)")
    if payload.get("version") != _VERSION:
        raise ValueError(f"{path} has {_FORMAT} version {payload.get('version')}; expected {_VERSION}")
    return {
        key: _from_csr(value, key) if isinstance(value, dict) else value
        for key, value in payload["tensors"].items()
    }


def apply_finegrained(model: nn.Module, sparsities: Mapping[str, float]) -> nn.Module:
    """A copy of ``model`` with ``sparsities[layer]`` of each layer's smallest weights set to zero."""
    pruned = copy.deepcopy(model)
    pruner = MagnitudePruner(FineGrainedConfig(layers=tuple(sparsities)))
    pruner.prepare(pruned)
    pruner.step(dict(sparsities))
    return pruner.squash(pruned)


def parse_nm(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An N:M pattern from ``"2:4"`` (or a pair), checked to be integers with ``0 < N < M``.

    Raises:
        ValueError: ``text`` is not ``N:M`` with integers ``0 < N < M``.
    """
    if isinstance(text, str):
        parts = text.split(":")
    else:
        parts = list(text)
    try:
        if len(parts) != 2 or any(isinstance(p, (bool, float)) for p in parts):
            raise ValueError
        n, m = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"N:M pattern '{text}' is not two integers N:M; give e.g. 2:4") from None
    if not 0 < n < m:
        raise ValueError(f"N:M pattern '{n}:{m}' needs 0 < N < M; give e.g. 2:4")
    return n, m


def nm_prunable(weight: Tensor, m: int) -> bool:
    """Whether each output row of ``weight`` (``in/groups * kh * kw`` weights) splits into groups of ``m``."""
    return weight.dim() >= 2 and weight[0].numel() % m == 0


def satisfies_nm(weight: Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive weights of each output row has at most ``n`` nonzeros.

    Rows are the weight flattened to ``out x (in/groups * kh * kw)`` (PyTorch layout); a row
    whose width is not a multiple of ``m`` does not satisfy the pattern.
    """
    if not nm_prunable(weight, m):
        return False
    groups = weight.detach().reshape(weight.shape[0], -1, m)
    return bool(((groups != 0).sum(dim=2) <= n).all())


def nm_stored_size(model: nn.Module, nm: tuple[int, int]) -> dict:
    """Bytes needed to store the model with its N:M-sparse weights in compressed N:M form.

    A Conv2d/Linear weight that satisfies the pattern (:func:`satisfies_nm`) is stored as its
    ``N/M * numel`` kept float32 values plus ``ceil(log2 M)`` index bits per kept value (the
    2-bit metadata of 2:4); every other weight is float32 dense and every other tensor
    (biases, BatchNorm) dense at its own dtype size. Masked models are measured as if squashed.

    Args:
        model: A plain or masked model.
        nm: The ``(N, M)`` pattern.

    Returns:
        ``{"layers": {name: bytes}, "compressed": [names stored as N:M], "other": int,
        "total": int, "dense": int, "ratio": float}`` (``ratio``: float32 dense over ``total``).
    """
    n, m = parse_nm(nm)
    return _nm_report(_effective_state(model), _weight_keys(model), n, m)


def _nm_bits(m: int) -> int:
    """Bits of one index into a group of ``m``: ``ceil(log2 m)``."""
    return max(1, (m - 1).bit_length())


def _nm_report(state: dict[str, Tensor], weight_keys: dict[str, str], n: int, m: int) -> dict:
    """The :func:`nm_stored_size` report of a state dict."""
    bits = _nm_bits(m)
    layers: dict[str, int] = {}
    compressed: list[str] = []
    dense = other = 0
    for key, value in state.items():
        if key not in weight_keys:
            other += value.numel() * value.element_size()
            continue
        name, numel = weight_keys[key], value.numel()
        dense += _VALUE_BYTES * numel
        if satisfies_nm(value, n, m):
            kept = numel // m * n
            layers[name] = _VALUE_BYTES * kept + math.ceil(kept * bits / 8)
            compressed.append(name)
        else:
            layers[name] = _VALUE_BYTES * numel
    total = other + sum(layers.values())
    return {
        "layers": layers,
        "compressed": compressed,
        "other": other,
        "total": total,
        "dense": other + dense,
        "ratio": (other + dense) / total if total else 1.0,
    }


def _pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers below ``2**bits`` into a little-endian uint8 bit stream."""
    shifts = torch.arange(bits, dtype=torch.int32)
    stream = ((values.reshape(-1, 1).to(torch.int32) >> shifts) & 1).to(torch.uint8).flatten()
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` integers of ``bits`` bits each that :func:`_pack_bits` packed, as int64."""
    stream = (packed.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1
    stream = stream.flatten()[: count * bits].reshape(count, bits).to(torch.int64)
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


def _to_nm(weight: Tensor, n: int, m: int) -> dict[str, Tensor | list[int]]:
    """Encode a weight that satisfies N:M as its kept values, packed indices and dropped-zero signs."""
    groups = weight.detach().cpu().reshape(weight.shape[0], -1, m)
    # the nonzeros of each group first (at most n), then zeros, in position order; then ascending
    order = torch.sort((groups != 0).to(torch.int8), dim=2, descending=True, stable=True).indices
    index = order[..., :n].sort(dim=2).values
    entry: dict[str, Tensor | list[int]] = {
        "shape": list(weight.shape),
        "values": groups.gather(2, index).contiguous(),
        "indices": _pack_bits(index, _nm_bits(m)),
    }
    dropped = groups[~torch.zeros_like(groups, dtype=torch.bool).scatter_(2, index, True)]
    signs = torch.signbit(dropped)  # the dropped entries are zeros; keep -0.0 exact
    if signs.any():
        entry["zero_signs"] = _pack_bits(signs, 1)
    return entry


def _from_nm(entry: object, key: str, n: int, m: int, where: str) -> Tensor:
    """Decode an :func:`_to_nm` entry back into the dense weight, checking every field."""

    def bad(problem: str) -> ValueError:
        return ValueError(f"{where}: N:M entry '{key}' {problem}")

    if not isinstance(entry, dict) or set(entry) - {"shape", "values", "indices", "zero_signs"}:
        raise bad("is not a dict of shape, values, indices (and zero_signs)")
    shape, values, packed = entry.get("shape"), entry.get("values"), entry.get("indices")
    if not (isinstance(shape, list) and len(shape) >= 2 and all(type(s) is int and s > 0 for s in shape)):
        raise bad(f"has shape {shape!r}, not a list of at least 2 positive ints")
    rows, cols = shape[0], math.prod(shape[1:])
    if cols % m:
        raise bad(f"has rows of {cols} weights, not a multiple of {m}")
    kept = rows * (cols // m) * n
    if not (isinstance(values, Tensor) and values.is_floating_point() and values.numel() == kept):
        raise bad(f"needs {kept} floating-point values for shape {shape}")
    bits = _nm_bits(m)
    if not (
        isinstance(packed, Tensor)
        and packed.dtype == torch.uint8
        and packed.numel() == math.ceil(kept * bits / 8)
    ):
        raise bad(f"needs {math.ceil(kept * bits / 8)} uint8 bytes of {bits}-bit indices")
    index = _unpack_bits(packed, bits, kept).reshape(rows, cols // m, n)
    if not (bool((index < m).all()) and bool((index.diff(dim=2) > 0).all())):
        raise bad(f"has indices that are not increasing positions below {m} within each group")
    groups = torch.zeros(rows, cols // m, m, dtype=values.dtype)
    groups.scatter_(2, index, values.reshape(rows, cols // m, n))
    if "zero_signs" in entry:
        signs = entry["zero_signs"]
        dropped = rows * (cols // m) * (m - n)
        if not (
            isinstance(signs, Tensor)
            and signs.dtype == torch.uint8
            and signs.numel() == math.ceil(dropped / 8)
        ):
            raise bad(f"needs {math.ceil(dropped / 8)} uint8 bytes of zero signs")
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, index, True)
        groups[~keep] = torch.where(_unpack_bits(signs, 1, dropped).bool(), -0.0, 0.0).to(values.dtype)
    return groups.reshape(shape)


def export_nm(model: nn.Module, nm: tuple[int, int], path: str | Path) -> dict:
    """Write the model's state dict with each N:M-sparse Conv2d/Linear weight in compressed N:M form.

    The file holds ``{"format": "amc-nm", "version": 1, "nm": [N, M], "tensors": {key: value}}``.
    A weight that satisfies the pattern (:func:`satisfies_nm`; its rows split into groups of
    ``M``) is a dict of ``shape`` (list of ints), ``values`` (the ``N`` kept weights of every
    group, shape ``[rows, cols / M, N]``, the weight's dtype) and ``indices`` (each kept
    value's position in its group, ascending within the group, packed ``ceil(log2 M)`` bits
    each, least significant first, into a uint8 tensor); a group with fewer than ``N``
    nonzeros keeps some zeros. The dropped entries load as ``+0.0``; only if some of them are
    ``-0.0`` does the entry add ``zero_signs``, one sign bit per dropped entry packed the same
    way. Every other tensor is stored as it is. It loads with ``torch.load(weights_only=True)``;
    a masked model is written as if squashed. The write is atomic.

    Args:
        model: A plain or masked model.
        nm: The ``(N, M)`` pattern.
        path: Output file.

    Returns:
        The :func:`nm_stored_size` report plus ``file_bytes``, the size of the written file,
        and ``zero_signs``, the layers whose entry needed sign bits.
    """
    from amc.files import atomic_path

    n, m = parse_nm(nm)
    path = Path(path)
    state, weight_keys = _effective_state(model), _weight_keys(model)
    report = _nm_report(state, weight_keys, n, m)
    compressed = set(report["compressed"])
    tensors: dict[str, object] = {}
    for key, value in state.items():
        if weight_keys.get(key) in compressed:
            tensors[key] = _to_nm(value, n, m)
        else:
            tensors[key] = value.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        torch.save({"format": _NM_FORMAT, "version": _NM_VERSION, "nm": [n, m], "tensors": tensors}, tmp)
    report["file_bytes"] = path.stat().st_size
    report["zero_signs"] = [
        weight_keys[k] for k, v in tensors.items() if isinstance(v, dict) and "zero_signs" in v
    ]
    log.info(
        "wrote %s: %d bytes on disk, %d of %d weights as %d:%d; float32 dense %d bytes, N:M %d bytes (%.2fx)",
        path,
        report["file_bytes"],
        len(compressed),
        len(weight_keys),
        n,
        m,
        report["dense"],
        report["total"],
        report["ratio"],
    )
    return report


def load_nm(path: str | Path) -> dict[str, Tensor]:
    """Read a file written by :func:`export_nm` back into the exact dense state dict.

    Args:
        path: The file.

    Returns:
        State-dict key -> dense tensor, bit for bit the state dict of the (squashed) model
        that was written, ready for ``model.load_state_dict``.

    Raises:
        ValueError: The file is unreadable, not an ``amc-nm`` file, or an entry is
            inconsistent (a one-line message naming the file).
    """
    from amc.files import load_weights

    payload = load_weights(path, f"{_NM_FORMAT} file")
    if not isinstance(payload, dict) or payload.get("format") != _NM_FORMAT:
        raise ValueError(f"{path} is not an {_NM_FORMAT} file (write it with export_nm)")
    if payload.get("version") != _NM_VERSION:
        raise ValueError(
            f"{path} has {_NM_FORMAT} version {payload.get('version')!r}; expected {_NM_VERSION}"
        )
    pattern, tensors = payload.get("nm"), payload.get("tensors")
    try:
        n, m = parse_nm(pattern)
    except (TypeError, ValueError):
        raise ValueError(f"{path} has N:M pattern {pattern!r}, not [N, M] with 0 < N < M") from None
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
        raise ValueError(f"{path} has no dict of tensors")
    state: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if isinstance(value, Tensor):
            state[key] = value
        else:
            state[key] = _from_nm(value, key, n, m, str(path))
    return state


def apply_nm(model: nn.Module, layers: Iterable[str], nm: tuple[int, int]) -> nn.Module:
    """A copy of ``model`` whose named layers keep the ``N`` largest of every ``M`` consecutive weights.

    Raises:
        ValueError: A layer is unknown, or its rows do not split into groups of ``M``.
    """
    n, m = parse_nm(nm)
    pruned = copy.deepcopy(model)
    chosen = _resolve_layers(pruned, layers)
    for name, module in chosen.items():
        if not nm_prunable(module.weight, m):
            raise ValueError(
                f"layer '{name}' has rows of {module.weight[0].numel()} weights, not a multiple of {m}; "
                "leave it dense for this N:M pattern"
            )
    pruner = MagnitudePruner(FineGrainedConfig(layers=tuple(chosen)))
    pruner.prepare(pruned)
    pruner.step(dict.fromkeys(chosen, 1.0 - n / m), nm=(n, m))
    return pruner.squash(pruned)
