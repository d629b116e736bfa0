"""In-memory image datasets, seeded splits and batch iteration with CIFAR augmentation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from amc.data.stream import ImageFiles

SPLITS = ("train", "search", "test")
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
"""Normalisation presets: name -> (per-channel mean, standard deviation), in [0, 1].
``auto`` (not listed) computes them from the data (:func:`channel_stats`)."""


class DatasetError(ValueError):
    """A dataset is missing, incomplete or corrupt; the message names the file and the fix."""


@dataclass
class ImageArrays:
    """Decoded images of one split: ``images`` is uint8 N x H x W x C, ``labels`` int64 N."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim == 3:  # grayscale N x H x W
            self.images = self.images[..., None]
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageArrays:
        """Return the images at ``index`` (a copy)."""
        return ImageArrays(self.images[index], self.labels[index])


@dataclass
class Dataset:
    """A classification dataset with its ``train``, ``search`` and ``test`` splits.

    The ``search`` split is held out of the training images (seeded, never trained on): the
    pruning search scores policies on it, so the test split stays untouched.

    Attributes:
        name: Short name used in manifests (``cifar10``, ``sample``, ...).
        classes: Class names, in label order.
        splits: Split name -> images; a dataset may lack ``train`` (the bundled sample). With
            an input size, ``train`` may be :class:`~amc.data.stream.ImageFiles`, streamed.
        mean: Per-channel mean of the training images in [0, 1], used to normalise.
        std: Per-channel standard deviation, used to normalise.
        split_seed: Seed of the search/train split.
        input_size: Side of the square input images were resized and cropped to (``None``:
            the images' own size, with CIFAR-style pad-and-crop training augmentation).
        normalize: Where ``mean``/``std`` come from: a :data:`NORMALIZATIONS` preset or ``auto``.
        workers: Worker processes that decode streamed images.
    """

    name: str
    classes: list[str]
    splits: dict[str, ImageArrays | ImageFiles]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_seed: int = 0
    source: str = ""
    extra: dict = field(default_factory=dict)
    input_size: int | None = None
    normalize: str = "auto"
    workers: int = 0

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels (3 for RGB, 1 for grayscale)."""
        return next(iter(self.splits.values())).images.shape[-1]

    def split(self, name: str) -> ImageArrays | ImageFiles:
        """Return one split by name, with an error that lists the available ones."""
        if name not in self.splits:
            raise DatasetError(
                f"dataset '{self.name}' has no '{name}' split (it has: {', '.join(self.splits)})"
                + (
                    ". The bundled sample holds only held-out images; train on a full dataset "
                    "such as --dataset folder --data <cifar10 folder or archive>"
                    if name == "train"
                    else ""
                )
            )
        return self.splits[name]

    def tensors(self, name: str) -> tuple[Tensor, Tensor]:
        """One split as normalised float images ``(N, C, H, W)`` and int64 labels."""
        split = self.split(name)
        return to_tensor(split.images, self.mean, self.std), torch.from_numpy(split.labels)


def split_train_search(
    train: ImageArrays | ImageFiles, search_size: int = 5000, seed: int = 0
) -> dict[str, ImageArrays | ImageFiles]:
    """Carve a seeded ``search`` hold-out out of the training images.

    Args:
        train: All training images, in a deterministic order.
        search_size: Number of held-out images.
        seed: Seed of the permutation; the same seed always gives the same split.

    Returns:
        ``{"train": ..., "search": ...}``, disjoint and together covering ``train``.
    """
    if not 0 < search_size < len(train):
        raise DatasetError(f"search_size must be in (0, {len(train)}), got {search_size}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).numpy()
    search_idx, train_idx = np.sort(perm[:search_size]), np.sort(perm[search_size:])
    return {"train": train.subset(train_idx), "search": train.subset(search_idx)}


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1]."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += chunk.sum(0)
        squares += np.square(chunk).sum(0)
    count = images.size // images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def cache_dir() -> Path:
    """Folder for decoded datasets and downloads (``$AMC_CACHE_DIR`` or ``~/.cache/amc``)."""
    return Path(os.environ.get("AMC_CACHE_DIR", Path.home() / ".cache" / "amc"))


def file_key(path: Path) -> str:
    """A short key that changes when the file or folder at ``path`` changes."""
    st = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    if path.is_dir():  # a folder's own mtime misses files replaced or edited in its sub-folders
        for file in sorted(path.rglob("*")):
            fst = file.stat()
            digest.update(f"|{file.relative_to(path)}|{fst.st_size}|{fst.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def to_tensor(images: Tensor | np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Turn uint8 N x H x W x C images into a normalised float N x C x H x W tensor."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return x.sub_(m).div_(s).contiguous(memory_format=torch.channels_last)


def augment(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Standard CIFAR augmentation on a uint8 N x H x W x C batch: random crop with padding, flip."""
    n, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator)
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip.view(n, 1, 1), cols.flip(-1), cols)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols]


@dataclass(frozen=True)
class Shard:
    """One process's share of every batch in data-parallel training (``torchrun``).

    Process ``rank`` of ``size`` takes rows ``rank, rank + size, ...`` of each global batch of
    ``batch_size`` images, so the shares of one batch are disjoint and together make the batch a
    single process would train on (what ``DistributedSampler`` gives when the batch size is a
    multiple of ``size``). Every process draws the order, and the augmentation of whole batches,
    from the same seeded generator, so the shares also change with the epoch together. A last
    batch with fewer images than processes is dropped by all of them (each must take part in
    every step).
    """

    rank: int
    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} must lie in [0, {self.size})")

    def rows(self, batch: int) -> slice | None:
        """The rows of a ``batch``-image global batch this process takes (``None``: the batch is dropped)."""
        return slice(self.rank, None, self.size) if batch >= self.size else None

    def batches(self, order: Tensor, batch_size: int) -> list[Tensor]:
        """This process's indices of each global batch of ``order`` (dropped batches left out)."""
        shares = []
        for batch in order.split(batch_size):
            rows = self.rows(len(batch))
            if rows is not None:
                shares.append(batch[rows])
        return shares


def visit_order(length: int, shuffle: bool, generator: torch.Generator, limit: int | None = None) -> Tensor:
    """The indices a pass over ``length`` images visits (see :func:`iterate_batches`)."""
    n = length if limit is None else min(limit, length)
    if shuffle:
        return torch.randperm(length, generator=generator)[:n]
    return torch.arange(n) * length // max(n, 1)


def iterate_batches(
    data: ImageArrays | ImageFiles,
    dataset: Dataset,
    batch_size: int = 128,
    shuffle: bool = False,
    augmented: bool = False,
    generator: torch.Generator | None = None,
    limit: int | None = None,
    shard: Shard | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield normalised ``(images, labels)`` batches from a split.

    A split held in memory is batched here. Image files, and the training view of a dataset
    with an input size (random-resized crop), go through :func:`amc.data.stream.split_loader`:
    a ``DataLoader`` whose workers decode and transform the images.

    Args:
        data: The split's images.
        dataset: The dataset they belong to (normalisation statistics).
        batch_size: Images per batch.
        shuffle: Visit the images in a random order drawn from ``generator``.
        augmented: Apply random crop and flip (training only): pad-and-crop at the images' own
            size, random-resized crop with an input size.
        generator: Source of randomness for shuffling and augmentation.
        limit: Use only ``limit`` images: the first ones after shuffling, else evenly spaced
            ones (splits are often sorted by class; the first ``limit`` would miss classes).
        shard: Data-parallel training: yield only this process's share of each batch of
            ``batch_size`` images (:class:`Shard`); the generator must be seeded alike on
            every process.
    """
    if not isinstance(data, ImageArrays) or (augmented and dataset.input_size is not None):
        from amc.data.stream import split_loader, worker_errors  # stream imports this module

        loader = split_loader(data, dataset, batch_size, shuffle, augmented, generator, limit, shard)
        yield from worker_errors(loader)
        return
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    order = visit_order(len(data), shuffle, gen, limit)
    n = len(order)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = images[idx]
        if augmented:
            batch = augment(batch, gen)  # the whole batch: the generator stays in step on every process
        if shard is not None:
            rows = shard.rows(len(idx))
            if rows is None:
                continue
            batch, idx = batch[rows], idx[rows]
        yield to_tensor(batch, dataset.mean, dataset.std), labels[idx]
