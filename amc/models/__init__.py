"""Model zoo: a registry of CIFAR architectures, user models by import path, checkpoints.

>>> model = create_model("resnet20", num_classes=10)
>>> model = create_model("resnet20", checkpoint="shipped")   # the trained checkpoint in the package
>>> model = create_model("mypkg.nets:build", num_classes=10)  # imports and calls the user's code
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path

from torch import nn

from amc.models.mobilenet import MobileNetV1, MobileNetV2
from amc.models.resnet import CifarResNet
from amc.models.vgg import CifarVGG

__all__ = [
    "MODELS",
    "CheckpointError",
    "ModelError",
    "build_user_model",
    "create_model",
    "load_checkpoint",
    "model_factory",
    "read_manifest",
    "shipped_checkpoint",
]


class ModelError(ValueError):
    """An unknown model name or a user model that cannot be imported or built."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "resnet56": partial(CifarResNet, 56),
    "resnet110": partial(CifarResNet, 110),
    "plain20": partial(CifarResNet, 20, residual=False),
    "vgg16": CifarVGG,
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
}


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import '{module_name}' for model '{spec}': {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"'{spec}': module '{module_name}' has no callable '{attr}'")
    return factory


def _signature(factory: Callable[..., object]) -> inspect.Signature | None:
    """The builder's signature, or ``None`` for a callable without one (some builtins)."""
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def build_user_model(
    spec: str, factory: Callable[..., object], num_classes: int, width: float, in_channels: int
) -> nn.Module:
    """Call a user's builder with the arguments its signature accepts, and check it built a model.

    ``num_classes`` goes to a builder that names it or takes ``**kwargs`` (torchvision and
    timm builders pass it on); ``width`` and ``in_channels`` to one that names them, or
    through ``**kwargs`` when they differ from 1.0 and 3.

    Raises:
        ModelError: A width other than 1.0 for a builder without a width argument, a builder
            that needs other arguments, or one that returns something that is not a module.
    """
    signature = _signature(factory)
    params = signature.parameters.values() if signature is not None else []
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = signature is None or any(p.kind is p.VAR_KEYWORD for p in params)
    kwargs: dict[str, object] = {"num_classes": num_classes} if "num_classes" in named or var_kw else {}
    for key, value, default in (("width", width, 1.0), ("in_channels", in_channels, 3)):
        if key in named or (var_kw and value != default):
            kwargs[key] = value
    if width != 1.0 and "width" not in kwargs:
        raise ModelError(f"'{spec}' takes no width argument, so it cannot build width {width}")
    try:
        if signature is not None:
            signature.bind(**kwargs)
    except TypeError as exc:
        raise ModelError(f"cannot call '{spec}' with {', '.join(kwargs) or 'no arguments'}: {exc}") from exc
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"'{spec}' returned a {type(model).__name__}, not a torch.nn.Module; "
            "--model package.module:function must name a function that builds the model"
        )
    return model


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The function that builds model ``name`` (a registry key or ``package.module:function``)."""
    if ":" in name:
        return _import_factory(name)
    if name not in MODELS:
        raise ModelError(
            f"unknown model '{name}'; known models: {', '.join(MODELS)} "
            "(or package.module:function for your own)"
        )
    return MODELS[name]


def shipped_checkpoint(name: str) -> Path:
    """Path of the checkpoint shipped in the package for model ``name``."""
    path = Path(str(resources.files("amc.models") / "checkpoints" / f"{name}.pt"))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.pt"))
        raise CheckpointError(f"no shipped checkpoint for '{name}'; shipped: {', '.join(shipped) or 'none'}")
    return path


def read_manifest(checkpoint: str | Path) -> dict:
    """The JSON manifest beside a checkpoint (``x.pt`` -> ``x.json``), or ``{}`` if there is none."""
    path = Path(checkpoint).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def load_checkpoint(model: nn.Module, checkpoint: str | Path, strict: bool = True) -> nn.Module:
    """Load a state dict (or a training checkpoint holding one under ``model``) into ``model``.

    Raises:
        CheckpointError: The file is missing or unreadable, or a tensor does not fit; the
            message names the first mismatched tensor.
    """
    from amc.files import WeightsError, load_weights

    path = Path(checkpoint)
    try:
        state = load_weights(path, "checkpoint")
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return load_state(model, state, path, strict)


def load_state(model: nn.Module, state: dict, path: str | Path, strict: bool = True) -> nn.Module:
    """Load ``state`` into ``model`` after checking that every tensor fits.

    Raises:
        CheckpointError: A tensor is missing, unexpected or of another shape; the message
            names the first one and ``path``, the file ``state`` came from.
    """
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            if strict:
                raise CheckpointError(
                    f"checkpoint {path} does not fit the model: tensor '{key}' "
                    f"{tuple(tensor.shape)} is missing from the checkpoint"
                )
        elif state[key].shape != tensor.shape:
            raise CheckpointError(
                f"checkpoint {path} does not fit the model: tensor '{key}' has shape "
                f"{tuple(state[key].shape)} in the checkpoint, {tuple(tensor.shape)} "
                "in the model (wrong model, width or number of classes?)"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected and strict:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: unexpected tensor '{unexpected[0]}'"
        )
    model.load_state_dict(state, strict=strict)
    return model


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> tuple[Path | None, dict]:
    """The one reading of a checkpoint argument: ``"shipped"``, ``"none"``/``None`` or a path.

    Returns:
        The checkpoint file (``None`` for none) and its manifest (``{}`` when it has none).
    """
    if checkpoint is None or str(checkpoint) == "none":
        return None, {}
    path = shipped_checkpoint(name) if str(checkpoint) == "shipped" else Path(checkpoint)
    return path, read_manifest(path)


def create_model(
    name: str,
    num_classes: int = 10,
    width: float | None = None,
    checkpoint: str | Path | None = None,
    in_channels: int = 3,
) -> nn.Module:
    """Build a model by registry name or ``package.module:function`` import path.

    Args:
        name: A key of :data:`MODELS`, or ``package.module:function``. The latter imports the
            user's module (running its code) and calls the function with the arguments its
            signature accepts (see :func:`build_user_model`).
        num_classes: Classifier outputs.
        width: Width multiplier (default: the checkpoint manifest's, else 1.0).
        checkpoint: A state-dict file to load, ``"shipped"`` for the packaged checkpoint, or
            ``"none"``/``None`` (see :func:`resolve_checkpoint`).
        in_channels: Image channels.

    Returns:
        The model in eval mode.

    Raises:
        ModelError: An unknown name, or a user builder that cannot build the model.
    """
    factory = model_factory(name)
    checkpoint, manifest = resolve_checkpoint(name, checkpoint)
    if width is None:
        width = manifest.get("width", 1.0)
    if ":" in name:
        model = build_user_model(name, factory, num_classes, width, in_channels)
    else:
        model = factory(num_classes=num_classes, width=width, in_channels=in_channels)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()
