"""MNIST-style idx files (``train-images-idx3-ubyte`` and friends, optionally gzipped)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from amc.data.base import DatasetError, ImageArrays

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(file: Path) -> np.ndarray:
    """Read one idx file (unsigned-byte data) into an array of its declared shape."""
    candidates = [file, file.with_name(file.name + ".gz")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetError(f"missing idx file {file} (or {file.name}.gz)")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a damaged or truncated .gz
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path} is truncated: its header declares {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def read_mnist(root: Path) -> tuple[list[str], dict[str, ImageArrays]]:
    """Read MNIST (or Fashion-MNIST) idx files from ``root``: classes ``0``..``9``, 28x28x1."""
    splits = {}
    for split, (images, labels) in FILES.items():
        x, y = read_idx(Path(root) / images), read_idx(Path(root) / labels)
        splits[split] = ImageArrays(np.ascontiguousarray(x), y.astype(np.int64))
    classes = [str(i) for i in range(int(splits["train"].labels.max()) + 1)]
    return classes, splits
