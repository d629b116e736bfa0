"""Typed settings of a pruning environment, and building its backend from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from amc.envs.backends import ChannelBackend, FineGrainedBackend

from amc.loading import load_model_and_data
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer, ScoringConfig, calibration_images

log = logging.getLogger(__name__)
METRICS = ("flops", "params", "latency")


@dataclass
class EnvConfig:
    """Everything that defines a pruning environment (defaults: the bundled ResNet-20 setup).

    Attributes:
        model: Zoo name or ``package.module:function``.
        checkpoint: State-dict path, ``shipped``, or ``none``.
        width: Width multiplier (``None``: the checkpoint manifest's).
        dataset: Dataset name (``sample`` is the bundled CIFAR-10 sample).
        data: Dataset files, if the dataset needs them.
        split_seed: Search hold-out seed (taken from the checkpoint manifest when present).
        search_size: Training images held out as the search split.
        download: Download the official CIFAR archive when missing.
        mode: ``channel`` (structured) or ``finegrained`` (magnitude).
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
        device: Torch device.
        threads: CPU threads per environment (0: torch's default).
    """

    model: str = "resnet20"
    checkpoint: str | None = "shipped"
    width: float | None = None
    dataset: str = "sample"
    data: str | None = None
    split_seed: int = 0
    search_size: int = 5000
    download: bool = False
    mode: str = "channel"
    metric: str = "flops"
    target: float | None = 0.5
    reward: str = "acc"
    max_sparsity: float = 0.8
    round_to: int = 1
    criterion: str = "l1"
    reconstruct: bool = True
    recalibrate: bool = True
    search_images: int = 1000
    selection_images: int = 2000
    calibration_images: int = 256
    device: str = "cpu"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric '{self.metric}'; use one of {', '.join(METRICS)}")
        if self.mode not in ("channel", "finegrained"):
            raise ValueError(f"unknown mode '{self.mode}'; use channel or finegrained")
        if not 0.0 < self.max_sparsity < 1.0:
            raise ValueError(f"max_sparsity must be in (0, 1), got {self.max_sparsity}")


def build_backend(config: EnvConfig) -> ChannelBackend | FineGrainedBackend:
    """Load the model and data described by ``config`` and wrap them in a pruning backend."""
    if config.threads:
        torch.set_num_threads(config.threads)
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
    )
    shape = (1, dataset.in_channels, *dataset.split("search").images.shape[1:3])
    scoring = ScoringConfig(
        images=config.search_images,
        selection_images=config.selection_images,
        recalibrate=config.recalibrate,
        recalibration_images=512,
    )
    scorer = Scorer(dataset, scoring, config.device)
    if config.mode == "finegrained":
        return FineGrainedBackend(model, scorer, shape, config.model)
    calibration = None
    if config.reconstruct:
        spare = scorer.spare_index
        calibration = calibration_images(dataset, config.calibration_images, spare, seed=7).to(config.device)
    pruner = ChannelPruner(model, shape, config.criterion, config.round_to, calibration)
    latency = None
    if config.metric == "latency" or config.reward == "acc_latency":
        latency = latency_function(pruner, config, shape)
    return ChannelBackend(pruner, scorer, latency, config.model)


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
