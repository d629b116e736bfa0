"""The Policy type: per-unit sparsities with the settings and model signature they were made for.

Policies are plain JSON (never pickle), so they can be read, diffed and applied anywhere::

    policy = Policy.load("runs/x/best_policy.json")
    small = apply_policy(create_model("resnet20", checkpoint="shipped"), policy)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from amc.pruning.channel import ChannelPruner

MODES = ("channel", "finegrained")


class PolicyError(ValueError):
    """A policy that cannot be read or does not fit the model it is applied to."""


def model_signature(pruner: ChannelPruner) -> str:
    """A short hash of the model's pruning units (names and widths) and input shape."""
    text = ";".join(f"{u.name}:{u.channels}" for u in pruner.units) + f"|{pruner.graph.input_shape[1:]}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


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
        mode: ``channel`` (structured) or ``finegrained`` (magnitude).
        criterion: Channel importance criterion (``l1`` or ``l2``).
        reconstruct: Whether consumers are refit by least squares.
        round_to: Kept channels are multiples of this.
        model: Name of the model it was made for (informative).
        signature: :func:`model_signature` of that model; checked on apply.
        kept: Kept channels per unit (channel mode), as applied.
        cost_before: ``{"macs": ..., "params": ...}`` of the dense model.
        cost_after: The same after pruning.
        metrics: Anything measured (accuracy, reward, ...).
    """

    sparsities: dict[str, float]
    mode: str = "channel"
    criterion: str = "l1"
    reconstruct: bool = False
    round_to: int = 1
    model: str = ""
    signature: str = ""
    kept: dict[str, int] = field(default_factory=dict)
    cost_before: dict[str, int] = field(default_factory=dict)
    cost_after: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"unknown mode '{self.mode}'; use one of {', '.join(MODES)}")
        if not isinstance(self.sparsities, dict):
            raise PolicyError(f"sparsities must map names to fractions, got {type(self.sparsities).__name__}")
        bad = {k: v for k, v in self.sparsities.items() if not _is_fraction(v)}
        if bad:
            raise PolicyError(f"sparsities must be in [0, 1): {bad}")

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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

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
            kept={u.name: int(k) for u, k in zip(pruner.units, kept, strict=True)},
            cost_before={"macs": macs0, "params": params0},
            cost_after={"macs": macs, "params": params},
            **meta,
        )


def apply_policy(
    model: nn.Module,
    policy: Policy,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    calibration: Tensor | None = None,
) -> nn.Module:
    """Return a pruned copy of ``model`` according to ``policy`` (the model itself is not changed).

    Channel policies remove channels physically; fine-grained policies zero weights and fold
    the masks in. ``calibration`` images enable reconstruction when the policy asks for it.

    Raises:
        PolicyError: The policy was made for a different architecture.
    """
    if policy.mode == "finegrained":
        from amc.pruning.finegrained import apply_finegrained

        return apply_finegrained(model, policy.sparsities)
    if policy.reconstruct and calibration is None:
        raise PolicyError(
            "this policy uses reconstruction: pass calibration images (or set reconstruct=False)"
        )
    pruner = ChannelPruner(
        model, input_shape, policy.criterion, policy.round_to, calibration if policy.reconstruct else None
    )
    signature = model_signature(pruner)
    if policy.signature and policy.signature != signature:
        mine = {u.name: u.channels for u in pruner.units}
        theirs = set(policy.sparsities)
        diff = sorted(theirs ^ set(mine))[:5]
        raise PolicyError(
            f"policy made for model '{policy.model}' (signature {policy.signature}) does not fit "
            f"this model (signature {signature}); differing units: {diff or 'same names, other widths'}"
        )
    sparsities = pruner.sparsities_by_name(policy.sparsities)
    kept = [
        policy.kept.get(u.name, k) for u, k in zip(pruner.units, pruner.kept_for(sparsities), strict=True)
    ]
    return pruner.export(kept)


def save_pruned(model: nn.Module, policy: Policy, path: str | Path) -> Path:
    """Save a pruned model as its state dict (``.pt``) beside its policy (``.policy.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    policy.save(path.with_suffix(".policy.json"))
    return path


def load_pruned(
    model: nn.Module, path: str | Path, input_shape: tuple[int, ...] = (1, 3, 32, 32)
) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned` on a fresh ``model`` of the same architecture.

    The structure comes from the policy's kept channels, the weights from the state dict
    (loaded with ``weights_only=True``).
    """
    from amc.models import load_checkpoint

    path = Path(path)
    policy = Policy.load(path.with_suffix(".policy.json"))
    structure = apply_policy(model, replace(policy, reconstruct=False), input_shape)
    return load_checkpoint(structure, path)
