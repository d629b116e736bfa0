"""Datasets: CIFAR-10/100, image folders, MNIST idx files and the bundled CIFAR-10 sample.

:func:`load_dataset` is the one entry point; every dataset comes with ``train`` (when it has
training images), a seeded ``search`` hold-out of the training images, and ``test``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from amc.data.base import (
    NORMALIZATIONS,
    SPLITS,
    Dataset,
    DatasetError,
    ImageArrays,
    Shard,
    cache_dir,
    channel_stats,
    iterate_batches,
    split_train_search,
)
from amc.data.cifar import download_cifar, read_cifar
from amc.data.folder import load_image_folder_cached, load_image_folder_sized
from amc.data.mnist import read_mnist
from amc.data.stream import ImageFiles, default_workers, split_loader

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "ImageArrays",
    "ImageFiles",
    "Shard",
    "iterate_batches",
    "load_dataset",
    "sample_path",
    "split_loader",
]

SAMPLE_ARCHIVE = "cifar10_sample.tar.gz"


def sample_path() -> Path:
    """Path of the bundled CIFAR-10 sample archive (search + test images)."""
    return Path(str(resources.files("amc.data") / "sample" / SAMPLE_ARCHIVE))


def _load_sample(data: Path | None, download: bool) -> tuple[list[str], dict[str, ImageArrays], dict]:
    archive = sample_path()
    meta = json.loads(archive.with_suffix("").with_suffix(".json").read_text())
    classes, splits = load_image_folder_cached(archive)
    return classes, splits, meta


def _require(data: Path | None, name: str) -> Path:
    if data is None:
        raise DatasetError(f"dataset '{name}' needs --data <path> (the folder holding its files)")
    return Path(data)


def _load_cifar(name: str) -> Callable[..., tuple[list[str], dict[str, ImageArrays], dict]]:
    def load(data: Path | None, download: bool):
        root = Path(data) if data is not None else cache_dir() / "datasets"
        if download:
            download_cifar(root, name)
        classes, splits = read_cifar(root, name)
        return classes, splits, {}

    return load


def _load_folder(data: Path | None, download: bool):
    classes, splits = load_image_folder_cached(_require(data, "folder"))
    return classes, splits, {}


def _load_mnist(data: Path | None, download: bool):
    classes, splits = read_mnist(_require(data, "mnist"))
    return classes, splits, {}


DATASETS: dict[str, Callable[..., tuple[list[str], dict[str, ImageArrays], dict]]] = {
    "sample": _load_sample,
    "cifar10": _load_cifar("cifar10"),
    "cifar100": _load_cifar("cifar100"),
    "folder": _load_folder,
    "mnist": _load_mnist,
}


def check_loading_options(name: str, input_size: int | None, normalize: str) -> None:
    """Refuse an input size or normalisation that ``load_dataset`` cannot honour."""
    if normalize != "auto" and normalize not in NORMALIZATIONS:
        raise DatasetError(f"unknown normalisation '{normalize}'; use auto, {', '.join(NORMALIZATIONS)}")
    if input_size is None:
        return
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise DatasetError(f"input size must be a whole number of pixels, got {input_size!r}")
    if name != "folder":
        raise DatasetError(
            f"--input-size resizes image files: use it with --dataset folder, not '{name}' "
            "(whose images keep their own size); drop --input-size"
        )


def load_dataset(
    name: str = "sample",
    data: str | Path | None = None,
    split_seed: int = 0,
    search_size: int = 5000,
    download: bool = False,
    input_size: int | None = None,
    normalize: str = "auto",
    workers: int | None = None,
) -> Dataset:
    """Load a dataset by name and split it into ``train``, ``search`` and ``test``.

    Args:
        name: One of :data:`DATASETS` (``sample``, ``cifar10``, ``cifar100``, ``folder``, ``mnist``).
        data: Where its files are (folder or archive); not needed for ``sample``.
        split_seed: Seed of the search hold-out (keep it equal to the checkpoint's manifest).
        search_size: Number of training images held out for the search.
        download: Fetch the official CIFAR archive when it is not in ``data`` (needs a network).
        input_size: ``folder`` only: read images of any size at this square input size
            (evaluation: resize and centre crop; training: random-resized crop and flip,
            streamed from the files). ``None``: the images' own size, which must be uniform.
        normalize: ``auto`` (mean and standard deviation measured on the training images,
            or on the search hold-out when they are streamed) or a preset of
            :data:`NORMALIZATIONS` (``imagenet``, ``cifar10``).
        workers: Worker processes that decode streamed images (``None``: ``min(4, CPUs)``).

    Returns:
        The dataset with its splits and normalisation statistics.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}")
    check_loading_options(name, input_size, normalize)
    workers = default_workers() if workers is None else workers
    path = Path(data) if data is not None else None
    if input_size is None:
        classes, splits, meta = DATASETS[name](path, download)
    else:
        classes, splits = load_image_folder_sized(_require(path, name), input_size, workers=workers)
        meta = {}
    if "train" in splits and "search" not in splits:
        splits.update(split_train_search(splits["train"], search_size, split_seed))
        if isinstance(splits["search"], ImageFiles):  # streamed training images: decode the hold-out once
            splits["search"] = splits["search"].decode(workers)
        # streamed training images are not all decoded: their search hold-out, a random sample, stands in
        measured = splits["train"] if isinstance(splits["train"], ImageArrays) else splits["search"]
        mean, std = None, None
    else:
        measured = next(iter(splits.values()))
        mean, std = meta.get("mean"), meta.get("std")
        split_seed = meta.get("split_seed", split_seed)
    if normalize != "auto":
        mean, std = NORMALIZATIONS[normalize]
        if len(mean) != measured.images.shape[-1]:
            raise DatasetError(
                f"normalisation '{normalize}' is for {len(mean)} channels but the images have "
                f"{measured.images.shape[-1]}; use --normalize auto"
            )
    elif mean is None:
        mean, std = channel_stats(measured.images)
    ordered = {s: splits[s] for s in SPLITS if s in splits}
    return Dataset(
        name,
        classes,
        ordered,
        tuple(mean),
        tuple(std),
        split_seed,
        str(data or ""),
        meta,
        input_size=input_size,
        normalize=normalize,
        workers=workers,
    )
