"""Resolve a checkpoint argument and load a model with the dataset it was trained on."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from amc.data import Dataset, load_dataset
from amc.models import create_model, model_factory, resolve_checkpoint

log = logging.getLogger(__name__)


def _split_seed(given: int | None, manifest: dict) -> int:
    trained = manifest.get("split_seed")
    if given is not None and trained is not None and given != trained:
        log.warning(
            "split seed %d differs from the checkpoint's %d: the search split may hold images the "
            "model was trained on, which flatters every score",
            given,
            trained,
        )
    return given if given is not None else (trained if trained is not None else 0)


def load_model_and_data(
    model: str,
    checkpoint: str | Path | None = "shipped",
    width: float | None = None,
    dataset: str = "sample",
    data: str | Path | None = None,
    split_seed: int | None = None,
    search_size: int = 5000,
    download: bool = False,
    device: str = "cpu",
    input_size: int | None = None,
    normalize: str | None = None,
    workers: int | None = None,
) -> tuple[nn.Module, Dataset, float]:
    """The model (with its checkpoint) and dataset; split seed and width default to the manifest's.

    An explicit ``split_seed`` wins over the manifest's, with a warning when they differ (the
    search split may then hold images the checkpoint was trained on).

    So do the input size and the normalisation (``None``: the manifest's, else the images' own
    size and ``auto``); ``workers`` decode streamed images (:func:`~amc.data.load_dataset`).

    Returns:
        The model on ``device`` in eval mode, the dataset, and the width used.
    """
    model_factory(model)  # an unknown model fails here, before the dataset is decoded
    path, manifest = resolve_checkpoint(model, checkpoint)
    data_set = load_dataset(
        dataset,
        data,
        _split_seed(split_seed, manifest),
        search_size,
        download,
        input_size if input_size is not None else manifest.get("input_size"),
        normalize or manifest.get("normalize", "auto"),
        workers,
    )
    width = width if width is not None else manifest.get("width", 1.0)
    net = create_model(model, data_set.num_classes, width, path, data_set.in_channels)
    return net.to(device), data_set, width
