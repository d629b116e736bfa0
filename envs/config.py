"""Typed settings of a pruning environment, and building its backend from them."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from amc.backends import ChannelBackend, FineGrainedBackend, NMBackend
from amc.budget import MAX_SPARSITY, Budget
from amc.data import Dataset
from amc.loading import load_model_and_data
from amc.pruning.channel import ChannelPruner
from amc.pruning.finegrained import parse_nm
from amc.scoring import (
    RACE_SLICE,
    Evaluate,
    EvaluatorScorer,
    Scorer,
    ScoringConfig,
    calibration_batch,
    calibration_images,
)

log = logging.getLogger(__name__)


@dataclass
class EnvConfig:
    """Everything that defines a pruning environment (defaults: the bundled ResNet-20 setup).

    Attributes:
        model: Zoo name or ``package.module:function``.
        checkpoint: State-dict path, ``shipped``, or ``none``.
        width: Width multiplier (``None``: the checkpoint manifest's).
        dataset: Dataset name (``sample`` is the bundled CIFAR-10 sample); ``python`` marks
            an environment over a model object and evaluation function (:func:`object_backend`).
        data: Dataset files, if the dataset needs them.
        split_seed: Search hold-out seed (``None``: the checkpoint manifest's, else 0).
        search_size: Training images held out as the search split.
        download: Download the official CIFAR archive when missing.
        input_size: Read an image folder of any image size at this square input size
            (``None``: the checkpoint manifest's, else the images' own size).
        normalize: ``auto``, ``imagenet`` or ``cifar10`` (``None``: the checkpoint
            manifest's, else ``auto``); see :func:`amc.data.load_dataset`.
        workers: Processes that decode streamed images (``None``: ``min(4, CPU count)``).
        mode: ``channel`` (structured), ``finegrained`` (magnitude) or ``nm`` (per layer:
            apply the N:M pattern or not).
        nm: ``(N, M)`` of ``nm`` mode (also given as ``"2:4"`` or a list).
        metric: Budgeted resource: ``flops``, ``params`` or ``latency``.
        target: Budget as a ratio of the dense cost; ``None`` disables the action wall.
        reward: Reward name (see :data:`amc.envs.rewards.REWARDS`).
        max_sparsity: Largest sparsity per unit.
        round_to: Kept channels are multiples of this.
        criterion: Channel importance (``l1``/``l2``).
        reconstruct: Least-squares reconstruction of consumers.
        recalibrate: BatchNorm recalibration before scoring.
        search_images: Search-split images scored per episode.
        selection_images: Other search-split images on which a search re-scores its best
            candidates before naming the final policy (0: keep the best episode as it is).
        calibration_images: Images for reconstruction statistics.
        race_slice: Search-split images a racing episode scores between two checks of whether
            it can still reach the search's finalists (:class:`~amc.scoring.Race`); 0 scores
            every episode on all ``search_images``.
        latency_batch: Batch size at which latency is measured and budgeted (1: one input
            at a time; small 32x32 models then spend most of it in per-layer overhead, so
            give the batch size the model will be deployed at).
        device: Torch device.
        threads: CPU threads per environment (0: torch's default).
        strict: Refuse a model with a layer that channel pruning cannot follow, instead of
            leaving that layer dense with a warning.
    """

    model: str = "resnet20"
    checkpoint: str | None = "shipped"
    width: float | None = None
    dataset: str = "sample"
    data: str | None = None
    split_seed: int | None = None
    search_size: int = 5000
    download: bool = False
    input_size: int | None = None
    normalize: str | None = None
    workers: int | None = None
    mode: str = "channel"
    nm: tuple[int, int] = (2, 4)
    metric: str = "flops"
    target: float | None = 0.5
    reward: str = "acc"
    max_sparsity: float = MAX_SPARSITY
    round_to: int = 1
    criterion: str = "l1"
    reconstruct: bool = True
    recalibrate: bool = ScoringConfig.recalibrate
    search_images: int = ScoringConfig.images
    selection_images: int = 2000
    calibration_images: int = ScoringConfig.calibration_images
    race_slice: int = RACE_SLICE
    latency_batch: int = 1
    device: str = "cpu"
    threads: int = 0
    strict: bool = False

    def __post_init__(self) -> None:
        Budget(self.metric, self.target)  # one check of metric and ratio, raising BudgetError
        if self.mode not in ("channel", "finegrained", "nm"):
            raise ValueError(f"unknown mode '{self.mode}'; use channel, finegrained or nm")
        self.nm = parse_nm(self.nm)
        if self.mode == "nm" and (self.metric == "latency" or self.reward == "acc_latency"):
            raise ValueError("nm mode budgets flops or params; use --target params=... (no latency model)")
        if not 0.0 < self.max_sparsity < 1.0:
            raise ValueError(f"max_sparsity must be in (0, 1), got {self.max_sparsity}")
        for key, least in (("round_to", 1), ("search_images", 1), ("selection_images", 0), ("race_slice", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key} must be a whole number of at least {least}, got {value!r}")


def _load(config: EnvConfig) -> tuple[torch.nn.Module, Dataset]:
    model, dataset, _ = load_model_and_data(
        config.model,
        config.checkpoint,
        config.width,
        config.dataset,
        config.data,
        config.split_seed,
        config.search_size,
        config.download,
        config.device,
        config.input_size,
        config.normalize,
        config.workers,
    )
    return model, dataset


def build_backend(
    config: EnvConfig, loaded: tuple[torch.nn.Module, Dataset] | None = None
) -> ChannelBackend | FineGrainedBackend | NMBackend:
    """Load the model and data described by ``config`` and wrap them in a pruning backend.

    ``loaded``: the model and dataset ``config`` describes, already loaded by the caller (the
    model is copied, so the caller's stays dense).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    model, dataset = (copy.deepcopy(loaded[0]), loaded[1]) if loaded is not None else _load(config)
    shape = (1, dataset.in_channels, *dataset.split("search").images.shape[1:3])
    scoring = ScoringConfig(
        images=config.search_images,
        selection_images=config.selection_images,
        recalibrate=config.recalibrate,
        recalibration_images=ScoringConfig.recalibration_images,
    )
    scorer = Scorer(dataset, scoring, config.device)
    if config.mode == "finegrained":
        return FineGrainedBackend(model, scorer, shape, config.model)
    if config.mode == "nm":
        return NMBackend(model, scorer, config.nm, shape, config.model)
    calibration = None
    if config.reconstruct:
        spare = scorer.spare_index
        calibration = calibration_images(dataset, config.calibration_images, spare, seed=7).to(config.device)
    pruner = ChannelPruner(model, shape, config.criterion, config.round_to, calibration, strict=config.strict)
    return _channel_backend(pruner, scorer, config, shape)


def object_backend(
    model: torch.nn.Module,
    example_inputs: torch.Tensor,
    evaluate: Evaluate,
    config: EnvConfig,
    selection: Evaluate | None = None,
    calibration: torch.Tensor | Iterable | None = None,
) -> ChannelBackend:
    """A channel backend over a user's own model and evaluation function (no zoo, no dataset).

    The model is copied (the user's object is never changed). ``calibration`` inputs (a
    tensor or an iterable of batches) feed least-squares reconstruction (its first
    ``config.calibration_images``) and BatchNorm recalibration before each score (up to
    :data:`ScoringConfig.recalibration_images`); without them both are off. Scores are normalised against
    the dense model's (:class:`~amc.scoring.EvaluatorScorer`).
    """
    if config.mode != "channel":
        raise ValueError("a model object is pruned in channel mode; use mode='channel'")
    if config.threads:
        torch.set_num_threads(config.threads)
    model = copy.deepcopy(model).to(config.device).eval()
    shape = (1, *example_inputs.shape[1:])
    images = None
    if calibration is not None:
        images = calibration_batch(
            calibration, max(config.calibration_images, ScoringConfig.recalibration_images)
        )
        images = images.to(config.device)
    scorer = EvaluatorScorer(model, evaluate, selection, images if config.recalibrate else None)
    reconstruct = images[: config.calibration_images] if config.reconstruct and images is not None else None
    pruner = ChannelPruner(model, shape, config.criterion, config.round_to, reconstruct, strict=config.strict)
    return _channel_backend(pruner, scorer, config, shape)


def _channel_backend(
    pruner: ChannelPruner, scorer: Scorer | EvaluatorScorer, config: EnvConfig, shape: tuple[int, ...]
) -> ChannelBackend:
    """The channel backend, with a latency predictor at ``config.latency_batch`` when one is needed."""
    latency, latency_shape = None, (config.latency_batch, *shape[1:])
    if config.metric == "latency" or config.reward == "acc_latency":
        latency = latency_function(pruner, config, latency_shape)
    return ChannelBackend(pruner, scorer, latency, config.model, latency_shape)


def latency_function(pruner: ChannelPruner, config: EnvConfig, shape: tuple[int, ...]):
    """Predicted whole-model latency (ms) as a function of kept channels.

    From a cached per-layer table, calibrated once against the dense model and copies with
    a quarter, half and three quarters of every unit's channels removed
    (:meth:`amc.cost.LatencyTable.calibrate`).
    """
    from amc.cost import LatencyTable

    def uniform_copies() -> list[torch.nn.Module]:
        return [pruner.export(pruner.kept_for([s] * len(pruner.units))) for s in (0.25, 0.5, 0.75)]

    table = LatencyTable.cached(
        pruner.model, config.model, shape, max(config.round_to, 8), config.device, pruned=uniform_copies
    )
    layers = set(table.layers)

    def predict(kept) -> float:
        widths = pruner.cost.layer_widths(kept)
        return table.model_ms({k: v for k, v in widths.items() if k in layers})

    return predict
