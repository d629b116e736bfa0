"""CIFAR-10/100 from the official python release (``cifar-10-batches-py``), with download.

The release stores pickled dictionaries. They are read with a restricted unpickler that
admits only the NumPy types the format needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from amc.data.base import DatasetError, ImageArrays

log = logging.getLogger(__name__)

RELEASES = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
    },
}
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how pickle protocol <= 2 writes bytes under Python 3; harmless
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _load_batch(file: Path) -> dict:
    if not file.is_file():
        raise DatasetError(
            f"missing CIFAR file {file}: expected the official python release "
            "(pass --download to fetch it, or point --data at the extracted folder)"
        )
    try:
        with file.open("rb") as f:
            raw = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # garbage bytes raise many types (OverflowError, MemoryError, TypeError, ...)
        raise DatasetError(f"corrupt CIFAR file {file}: {exc}; delete it and download again") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"corrupt CIFAR file {file}: holds a {type(raw).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_split(folder: Path, files: list[str], label_key: str) -> ImageArrays:
    images, labels = [], []
    for name in files:
        batch = _load_batch(folder / name)
        data = np.asarray(batch.get("data"))
        if data.ndim != 2 or data.shape[1] != 3072 or label_key not in batch:
            raise DatasetError(
                f"{folder / name} is not a CIFAR batch: expected 'data' of shape "
                f"N x 3072 and '{label_key}', got data {data.shape}"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return ImageArrays(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def find_release(root: Path, name: str) -> Path:
    """Return the release folder: ``root`` itself or ``root/<release folder>``."""
    folder = RELEASES[name]["folder"]
    return root / folder if (root / folder).is_dir() else root


def read_cifar(root: Path, name: str = "cifar10") -> tuple[list[str], dict[str, ImageArrays]]:
    """Read CIFAR-10 or CIFAR-100 from the python release.

    Args:
        root: The extracted release folder, or a folder containing it.
        name: ``cifar10`` or ``cifar100``.

    Returns:
        Class names and ``{"train": ..., "test": ...}``.
    """
    spec = RELEASES[name]
    folder = find_release(Path(root), name)
    meta_file, key = spec["meta"]
    classes = [c.decode() if isinstance(c, bytes) else c for c in _load_batch(folder / meta_file)[key]]
    splits = {s: _read_split(folder, spec[s], spec["labels"]) for s in ("train", "test")}
    return classes, splits


def md5sum(file: Path) -> str:
    """MD5 hex digest of a file (the checksum CIFAR publishes)."""
    digest = hashlib.md5()
    with file.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar(root: Path, name: str = "cifar10") -> Path:
    """Download and verify the official archive into ``root`` and extract it (needs a network).

    Returns:
        The extracted release folder.
    """
    spec = RELEASES[name]
    root = Path(root)
    target = root / spec["folder"]
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / spec["url"].rsplit("/", 1)[1]
    if not archive.exists() or md5sum(archive) != spec["md5"]:
        log.info("downloading %s", spec["url"])
        partial = archive.with_suffix(".part")
        try:
            urllib.request.urlretrieve(spec["url"], partial)
        except OSError as exc:
            raise DatasetError(
                f"cannot download {spec['url']}: {exc}; download it by hand into {root}"
            ) from exc
        partial.rename(archive)
    if md5sum(archive) != spec["md5"]:
        raise DatasetError(f"{archive} fails its MD5 check (expected {spec['md5']}); delete it and retry")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return target
