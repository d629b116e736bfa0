"""The Policy type: per-unit sparsities with the settings and model signature they were made for.

Policies are plain JSON (never pickle), so they can be read, diffed and applied anywhere::

    policy = Policy.load("runs/x/best_policy.json")
    small = apply_policy(create_model("resnet20", checkpoint="shipped"), policy, calibration=images)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from amc.files import atomic_path, write_atomic
from amc.pruning.channel import ChannelPruner
from amc.scoring import calibration_batch

RECONSTRUCTION_IMAGES = 256
"""Calibration inputs used for least-squares reconstruction when applying a policy."""

MODES = ("channel", "finegrained", "nm")


class PolicyError(ValueError):
    """A policy that cannot be read or does not fit the model it is applied to."""


def model_signature(pruner: ChannelPruner) -> str:
    """A short hash of the model's pruning units (names and widths) and input shape."""
    text = ";".join(f"{u.name}:{u.channels}" for u in pruner.units) + f"|{pruner.graph.input_shape[1:]}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_fraction(value: object) -> bool:
    try:
        return 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        return False


@dataclass
class Policy:
    """Per-unit sparsities and everything needed to apply them again.

    Attributes:
        sparsities: Unit (channel mode) or layer (fine-grained mode) name -> fraction removed.
        mode: ``channel`` (structured), ``finegrained`` (magnitude) or ``nm`` (N:M
            semi-structured: the layers with sparsity ``1 - N/M`` take the pattern).
        criterion: Channel importance criterion (``l1`` or ``l2``).
        reconstruct: Whether consumers are refit by least squares.
        round_to: Kept channels are multiples of this.
        model: Name of the model it was made for (informative).
        signature: :func:`model_signature` of that model; checked on apply.
        input_shape: Shape of the example input it was made with, ``(1, C, H, W)``; the
            default input shape of :func:`apply_policy` and :func:`load_pruned`.
        kept: Kept channels per unit (channel mode), as applied.
        cost_before: ``{"macs": ..., "params": ...}`` of the dense model.
        cost_after: The same after pruning.
        metrics: Anything measured (accuracy, reward, ...).
        nm: ``[N, M]`` of an ``nm`` policy (empty for other modes).
    """

    sparsities: dict[str, float]
    mode: str = "channel"
    criterion: str = "l1"
    reconstruct: bool = False
    round_to: int = 1
    model: str = ""
    signature: str = ""
    input_shape: list[int] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    cost_before: dict[str, int] = field(default_factory=dict)
    cost_after: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    nm: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"unknown mode '{self.mode}'; use one of {', '.join(MODES)}")
        if not isinstance(self.sparsities, dict):
            raise PolicyError(f"sparsities must map names to fractions, got {type(self.sparsities).__name__}")
        bad = {k: v for k, v in self.sparsities.items() if not _is_fraction(v)}
        if bad:
            raise PolicyError(f"sparsities must be in [0, 1): {bad}")
        if not _is_count(self.round_to):
            raise PolicyError(f"round_to must be a whole number of at least 1, got {self.round_to!r}")
        if not isinstance(self.kept, dict):
            raise PolicyError(f"kept must map unit names to channel counts, got {type(self.kept).__name__}")
        bad = {k: v for k, v in self.kept.items() if not _is_count(v)}
        if bad:
            raise PolicyError(f"kept channels must be whole numbers of at least 1: {bad}")
        if self.mode == "nm":
            self._check_nm()

    def _check_nm(self) -> None:
        """Refuse an ``nm`` policy without a valid pattern, or with sparsities other than 0 and 1 - N/M."""
        from amc.pruning.finegrained import parse_nm

        try:
            n, m = parse_nm(self.nm)
        except ValueError as exc:
            raise PolicyError(f"an nm policy needs nm: [N, M]: {exc}") from None
        self.nm = [n, m]
        target = 1.0 - n / m
        bad = {k: v for k, v in self.sparsities.items() if float(v) != 0 and abs(float(v) - target) > 1e-6}
        if bad:
            raise PolicyError(f"an {n}:{m} policy gives each layer sparsity 0 or {1 - n / m:g}: {bad}")

    @property
    def nm_layers(self) -> list[str]:
        """The layers an ``nm`` policy applies its pattern to (empty for other modes)."""
        return [k for k, v in self.sparsities.items() if float(v) > 0] if self.mode == "nm" else []

    def ratios(self) -> dict[str, float]:
        """Pruned/dense ratios of MACs and parameters (``flops_ratio``, ``params_ratio``)."""
        out = {}
        for key, label in (("macs", "flops_ratio"), ("params", "params_ratio")):
            if self.cost_before.get(key):
                out[label] = self.cost_after.get(key, 0) / self.cost_before[key]
        return out

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> Path:
        """Write the policy as JSON (atomically) and return the path."""
        return write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy JSON file, with errors that name the file."""
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {path} does not exist")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (TypeError, ValueError) as exc:  # ValueError: bad JSON, bad encoding or a PolicyError
            raise PolicyError(f"{path} is not a policy JSON file: {exc}") from exc

    @classmethod
    def from_kept(cls, pruner: ChannelPruner, kept: list[int], sparsities: list[float], **meta) -> Policy:
        """Build a channel policy from what a :class:`ChannelPruner` applied."""
        macs0, params0 = pruner.cost.cost()
        macs, params = pruner.cost.cost(kept)
        return cls(
            sparsities={u.name: float(s) for u, s in zip(pruner.units, sparsities, strict=True)},
            criterion=pruner.criterion,
            reconstruct=pruner.reconstructor is not None,
            round_to=pruner.round_to,
            signature=model_signature(pruner),
            input_shape=[1, *pruner.graph.input_shape[1:]],
            kept={u.name: int(k) for u, k in zip(pruner.units, kept, strict=True)},
            cost_before={"macs": macs0, "params": params0},
            cost_after={"macs": macs, "params": params},
            **meta,
        )


def apply_policy(
    model: nn.Module,
    policy: Policy,
    input_shape: tuple[int, ...] | None = None,
    calibration: Tensor | Iterable | None = None,
    strict: bool = False,
) -> nn.Module:
    """Return a pruned copy of ``model`` according to ``policy`` (the model itself is not changed).

    Channel policies remove channels physically; fine-grained policies zero weights and fold
    the masks in; N:M policies keep the N largest of every M weights of their chosen layers.
    ``calibration`` inputs (a tensor or an iterable of batches) enable
    reconstruction when the policy asks for it. ``input_shape`` defaults to the policy's.
    ``strict`` refuses a model with a layer that cannot be pruned (by default it stays dense).

    Raises:
        PolicyError: The policy was made for a different architecture, or it needs an input
            shape or calibration inputs that were not given.
    """
    if policy.mode == "finegrained":
        from amc.pruning.finegrained import apply_finegrained

        return apply_finegrained(model, policy.sparsities)
    if policy.mode == "nm":
        from amc.pruning.finegrained import apply_nm

        try:
            return apply_nm(model, policy.nm_layers, tuple(policy.nm))
        except (TypeError, ValueError) as exc:
            pattern = f"{policy.nm[0]}:{policy.nm[1]}"
            raise PolicyError(f"the {pattern} policy does not fit this model: {exc}") from exc
    if policy.reconstruct and calibration is None:
        raise PolicyError(
            "this policy uses reconstruction: pass calibration images (or set reconstruct=False)"
        )
    images = calibration_batch(calibration, RECONSTRUCTION_IMAGES) if policy.reconstruct else None
    pruner = ChannelPruner(
        model, _input_shape(policy, input_shape), policy.criterion, policy.round_to, images, strict=strict
    )
    signature = model_signature(pruner)
    if not policy.signature:
        raise PolicyError(
            "the policy records no model signature, so nothing shows it fits this model; amc's policies "
            f'carry one (if you wrote this one for this model, add "signature": "{signature}")'
        )
    if policy.signature != signature:
        mine = {u.name: u.channels for u in pruner.units}
        theirs = set(policy.sparsities)
        diff = sorted(theirs ^ set(mine))[:5]
        raise PolicyError(
            f"policy made for model '{policy.model}' (signature {policy.signature}) does not fit "
            f"this model (signature {signature}); differing units: {diff or 'same names, other widths'}"
        )
    _check_kept(policy, pruner)
    sparsities = pruner.sparsities_by_name(policy.sparsities)
    kept = [
        policy.kept.get(u.name, k) for u, k in zip(pruner.units, pruner.kept_for(sparsities), strict=True)
    ]
    return pruner.export(kept)


def _check_kept(policy: Policy, pruner: ChannelPruner) -> None:
    """Refuse kept channel counts the model cannot have: unknown units, or outside 1..width."""
    width = {u.name: u.channels for u in pruner.units}
    unknown = sorted(set(policy.kept) - set(width))
    if unknown:
        raise PolicyError(f"the policy keeps channels of unit(s) this model does not have: {unknown[:5]}")
    bad = {n: f"{k} of {width[n]}" for n, k in policy.kept.items() if not (_is_count(k) and k <= width[n])}
    if bad:
        raise PolicyError(f"the policy keeps impossible channel counts (kept of the unit's width): {bad}")


def _input_shape(policy: Policy, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is not None:
        return tuple(given)
    if not policy.input_shape:
        raise PolicyError("this policy does not record its input shape: pass input_shape=(1, C, H, W)")
    return tuple(policy.input_shape)


def save_pruned(model: nn.Module, policy: Policy, path: str | Path) -> Path:
    """Save a pruned model as its state dict (``.pt``) beside its policy (``.policy.json``).

    Both are written atomically, the policy first: a ``.pt`` file always has its policy.
    """
    path = Path(path)
    policy.save(path.with_suffix(".policy.json"))
    with atomic_path(path) as tmp:
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    return path


def load_pruned(model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned` on a fresh ``model`` of the same architecture.

    The structure comes from the policy's kept channels, the weights from the state dict
    (loaded with ``weights_only=True``); ``input_shape`` defaults to the policy's.
    """
    from amc.models import load_checkpoint

    path = Path(path)
    policy = Policy.load(path.with_suffix(".policy.json"))
    structure = apply_policy(model, replace(policy, reconstruct=False), input_shape)
    return load_checkpoint(structure, path)


def measure_cost(model: nn.Module, input_shape: tuple[int, ...], sparse: bool = False) -> dict[str, int]:
    """MACs and parameters of ``model`` as it is, counted on the network (not read from a policy).

    With ``sparse`` (fine-grained pruning), zeroed weights of convolutions and linear layers
    count as neither parameters nor MACs, as :class:`~amc.backends.FineGrainedBackend`
    counts them.
    """
    from amc.cost import layer_costs

    modules = dict(model.named_modules())

    def density(module: nn.Module | None) -> float:
        if sparse and isinstance(module, (nn.Conv2d, nn.Linear)):
            return float((module.weight != 0).float().mean())
        return 1.0

    macs = sum(cost.macs * density(modules.get(cost.name)) for cost in layer_costs(model, input_shape))
    params = sum(p.numel() for p in model.parameters())
    if sparse:
        params -= sum(
            int((m.weight == 0).sum()) for m in modules.values() if isinstance(m, (nn.Conv2d, nn.Linear))
        )
    return {"macs": round(macs), "params": params}
