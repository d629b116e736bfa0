"""Image files at a chosen input size: file-backed splits and the streamed ``DataLoader``.

A dataset loaded with an input size keeps its training images as files (:class:`ImageFiles`)
and streams them through a :class:`torch.utils.data.DataLoader` with worker processes, each
image decoded and randomly cropped when a batch needs it (:func:`split_loader`). The smaller
sets that are read again and again (search, selection, calibration, test) are decoded once at
the evaluation transform and cached as uint8 arrays (:meth:`ImageFiles.decode`).

Random crops are drawn from a generator seeded by ``(seed, image index)``, with the seed drawn
from the caller's generator: batches are the same whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader

from amc.data.base import DatasetError, ImageArrays, Shard, to_tensor, visit_order
from amc.data.transforms import eval_transform, to_array, train_transform
from amc.files import atomic_path

if TYPE_CHECKING:
    from amc.data.base import Dataset

log = logging.getLogger(__name__)
PARALLEL_DECODE = 256
"""Sets of at least this many files are decoded by worker processes; smaller ones in-process."""
DECODE_BATCH = 64
"""Files per decoding batch."""
CHANNELS = {"RGB": 3, "L": 1}


def default_workers() -> int:
    """Data-loading worker processes when none are given: ``min(4, CPU count)``.

    Under ``torchrun`` the processes of a machine share its cores: each gets its share of them.
    """
    from amc.distributed import launched

    job = launched()
    return max(1, min(4, (os.cpu_count() or 1) // (job.local_size if job is not None else 1)))


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Decode one image file into Pillow ``mode``, naming the file on failure."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc


@dataclass
class ImageFiles:
    """The images of one split as files, decoded at ``size`` x ``size`` only when read.

    Attributes:
        files: Image paths, in the split's order.
        labels: int64 class index of each file.
        size: Input size (evaluation view: :func:`~amc.data.transforms.eval_transform`).
        mode: Pillow mode the images are converted to (``RGB`` or ``L``).
        cache: Folder where decoded subsets are kept (``None``: not cached).
    """

    files: list[str]
    labels: np.ndarray
    size: int
    mode: str = "RGB"
    cache: Path | None = None

    def __post_init__(self) -> None:
        if len(self.files) != len(self.labels):
            raise DatasetError(f"{len(self.files)} image files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> LazyImages:
        """The evaluation views as an array-like: indexing decodes just the images asked for."""
        return LazyImages(self)

    def subset(self, index: np.ndarray | Sequence[int]) -> ImageFiles:
        """The files at ``index``."""
        index = np.asarray(index, dtype=np.int64)
        return ImageFiles(
            [self.files[i] for i in index], self.labels[index], self.size, self.mode, self.cache
        )

    def decode(self, workers: int = 0) -> ImageArrays:
        """Decode every file at the evaluation view, once: later calls read the cached arrays.

        The cache file is named by the file list, size and mode, inside :attr:`cache` (a
        folder named by the dataset's contents, so edited images are decoded again). Decoded
        images go straight to that file and are read back memory-mapped, so a large test
        split never has to fit in memory.
        """
        shape = (len(self), self.size, self.size, CHANNELS.get(self.mode, 3))
        if self.cache is None:
            return ImageArrays(self._decode_into(np.empty(shape, np.uint8), workers), self.labels)
        names = "\n".join(self.files).encode()
        key = hashlib.sha1(names + f"|{self.size}|{self.mode}".encode()).hexdigest()[:16]
        file = self.cache / f"images-{key}.npy"
        if file.exists():
            try:
                images = np.load(file, mmap_mode="c", allow_pickle=False)
                if images.shape == shape:
                    return ImageArrays(images, self.labels)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable cache %s (%s); decoding again", file, exc)
        if len(self) >= PARALLEL_DECODE:
            log.info("decoding %d images at %d px (once; cached in %s)", len(self), self.size, self.cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            self._decode_into(out, workers)
            out.flush()
            del out
        return ImageArrays(np.load(file, mmap_mode="c", allow_pickle=False), self.labels)

    def _decode_into(self, out: np.ndarray, workers: int) -> np.ndarray:
        """Fill ``out`` with the evaluation views, in batches decoded by ``workers`` processes."""
        loader = DataLoader(
            SplitImages(self, self.size),
            batch_size=DECODE_BATCH,
            num_workers=workers if len(self) >= PARALLEL_DECODE else 0,
            collate_fn=_stack,
        )
        start = 0
        for images, _ in worker_errors(loader):
            out[start : start + len(images)] = images
            start += len(images)
        return out


class LazyImages:
    """Array-like view of :class:`ImageFiles`: ``images[index]`` decodes (and caches) those images.

    It lets code written for in-memory splits (``split.images[idx]``, ``.shape``) read a few
    images of a streamed training split, such as a calibration sample.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, files: ImageFiles):
        self.files = files

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, size, size, channels)``."""
        f = self.files
        return (len(f), f.size, f.size, CHANNELS.get(f.mode, 3))

    @property
    def ndim(self) -> int:
        """Always 4: N x H x W x C."""
        return 4

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> np.ndarray:
        picked = np.arange(len(self.files))[index]
        if np.ndim(picked) == 0:
            return SplitImages(self.files, self.files.size)[int(picked)][0]
        return self.files.subset(picked).decode(default_workers()).images


class SplitImages(torch.utils.data.Dataset):
    """One split as a map-style torch dataset of ``(uint8 H x W x C array, label)``.

    Args:
        source: Image files, or images in memory (already at the input size).
        size: Input size.
        augmented: Training view (random-resized crop and flip) instead of the evaluation view.
        seed: Seed of the training view; image ``i`` draws from ``default_rng((seed, i))``.
    """

    def __init__(self, source: ImageFiles | ImageArrays, size: int, augmented: bool = False, seed: int = 0):
        self.source, self.size, self.augmented, self.seed = source, size, augmented, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        label = int(self.source.labels[i])
        if isinstance(self.source, ImageFiles):
            img = open_image(self.source.files[i], self.source.mode)
            if not self.augmented:
                return to_array(eval_transform(img, self.size)), label
        else:
            array = self.source.images[i]
            if not self.augmented:
                return np.asarray(array), label
            img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        rng = np.random.default_rng((self.seed, i))
        return to_array(train_transform(img, self.size, rng)), label


def _stack(batch: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Collate uint8 images and labels into numpy arrays."""
    return np.stack([x for x, _ in batch]), np.array([y for _, y in batch], dtype=np.int64)


class Normalised:
    """Collate ``(image, label)`` pairs into a normalised float N x C x H x W batch and int64 labels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, batch: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor]:
        """Stack and normalise one batch."""
        images, labels = _stack(batch)
        return to_tensor(torch.from_numpy(images), self.mean, self.std), torch.from_numpy(labels)


def worker_errors(loader: Iterable) -> Iterator:
    """Iterate ``loader``; a worker's :class:`DatasetError` is raised again with its own one-line message.

    A ``DataLoader`` re-raises a worker's exception with the worker's traceback in the message.
    Its worker processes are shut down before the error propagates: left to garbage collection,
    which may come much later, their shutdown waits seconds for each of them.
    """
    batches = iter(loader)
    try:
        yield from batches
        return
    except DatasetError as exc:
        message = str(exc).strip().splitlines()[-1].split("DatasetError: ", 1)[-1]
    shutdown = getattr(batches, "_shutdown_workers", None)  # private, hence looked up with care
    if shutdown is not None:
        shutdown()
    raise DatasetError(message)


def split_loader(
    data: ImageFiles | ImageArrays,
    dataset: Dataset,
    batch_size: int = 128,
    shuffle: bool = False,
    augmented: bool = False,
    generator: torch.Generator | None = None,
    limit: int | None = None,
    shard: Shard | None = None,
) -> DataLoader:
    """A ``DataLoader`` of normalised ``(images, labels)`` batches over a split, with workers.

    It visits the images in the order :func:`~amc.data.iterate_batches` would and decodes
    them in ``dataset.workers`` worker processes (0: in this process).

    Args:
        data: The split: image files, or images in memory at the input size.
        dataset: The dataset (input size, normalisation, workers).
        batch_size: Images per batch.
        shuffle: Visit the images in a random order drawn from ``generator``.
        augmented: Training view: random-resized crop and horizontal flip.
        generator: Source of the order and of the crops' seed.
        limit: Use only ``limit`` images (see :func:`~amc.data.iterate_batches`).
        shard: Load only this process's share of each batch (:class:`~amc.data.base.Shard`);
            crops are seeded by image index, so each image gets the crop it gets in one process.
    """
    size = dataset.input_size or data.images.shape[1]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    order = visit_order(len(data), shuffle, gen, limit)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    if shard is None:
        batching = {"batch_size": batch_size, "sampler": order.tolist()}
    else:
        batching = {"batch_sampler": [b.tolist() for b in shard.batches(order, batch_size)]}
    return DataLoader(
        SplitImages(data, size, augmented, seed),
        **batching,
        num_workers=dataset.workers,
        collate_fn=Normalised(dataset.mean, dataset.std),
        generator=torch.Generator().manual_seed(seed),
    )
