"""Image-folder datasets (``train/<class>/*``, ``test/<class>/*``), from a folder or an archive.

Images are decoded once with Pillow and cached as uint8 arrays under :func:`cache_dir`, so
later runs load 50,000 CIFAR images in well under a second.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from amc.data.base import DatasetError, ImageArrays, cache_dir, file_key

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    """True when ``path`` names a tar archive we can read directly."""
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _walk_folder(root: Path) -> Iterator[tuple[str, bytes]]:
    for file in sorted(root.rglob("*")):
        if file.suffix.lower() in IMAGE_SUFFIXES:
            yield file.relative_to(root).as_posix(), file.read_bytes()


def _walk_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    """Read members in stream order (random access into a .tar.gz re-decompresses), then sort."""
    items = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    items.append((m.name.removeprefix("./"), tar.extractfile(m).read()))  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {path}: {exc}; re-download or re-create it") from exc
    yield from sorted(items)


def _split_of(rel: str, splits: tuple[str, ...]) -> tuple[str, str] | None:
    """Map ``[prefix/]<split>/<class>/<file>`` to ``(split, class)``."""
    parts = rel.split("/")
    for i in range(len(parts) - 2):
        if parts[i] in splits and i == len(parts) - 3:
            return parts[i], parts[i + 1]
    return None


def decode_image(data: bytes, name: str, mode: str = "RGB") -> np.ndarray:
    """Decode encoded image bytes into a uint8 H x W x C array, naming the file on failure."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {name}: {exc}") from exc


def read_image_folder(
    path: Path, splits: tuple[str, ...] = ("train", "search", "test"), mode: str = "RGB"
) -> tuple[list[str], dict[str, ImageArrays]]:
    """Decode every image of an image-folder dataset (a folder or a tar archive).

    Args:
        path: Folder or ``.tar``/``.tar.gz`` holding ``<split>/<class>/<image>``.
        splits: Split folder names to read.
        mode: Pillow mode to convert to (``RGB`` or ``L``).

    Returns:
        Class names (sorted, shared by all splits) and split name -> images.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"dataset path {path} does not exist; expected a folder or archive "
            "with train/<class>/<image> and test/<class>/<image>"
        )
    walk = _walk_archive(path) if is_archive(path) else _walk_folder(path)
    found: dict[str, list[tuple[str, np.ndarray]]] = {}
    for rel, data in walk:
        where = _split_of(rel, splits)
        if where is not None:
            found.setdefault(where[0], []).append((where[1], decode_image(data, f"{path}/{rel}", mode)))
    if not found:
        raise DatasetError(
            f"no images under {path}: expected <split>/<class>/<image> with split "
            f"in {', '.join(splits)} (e.g. train/cat/0001.jpg)"
        )
    classes = sorted({c for items in found.values() for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in found.items():
        shapes = {img.shape for _, img in items}
        if len(shapes) != 1:
            raise DatasetError(f"images of split '{split}' in {path} differ in size: {sorted(shapes)[:3]}")
        images = np.stack([img for _, img in items])
        out[split] = ImageArrays(images, np.array([index[c] for c, _ in items], dtype=np.int64))
    return classes, out


def load_image_folder_cached(path: Path, mode: str = "RGB") -> tuple[list[str], dict[str, ImageArrays]]:
    """Like :func:`read_image_folder`, but decode only once and reuse a uint8 ``.npz`` cache."""
    path = Path(path)
    if not path.exists():
        return read_image_folder(path, mode=mode)  # raises the explanatory error
    cache = cache_dir() / "decoded" / f"{path.name}-{file_key(path)}-{mode}"
    meta_file = cache / "meta.json"
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(cache / "arrays.npz", allow_pickle=False) as z:
                splits = {s: ImageArrays(z[f"{s}_images"], z[f"{s}_labels"]) for s in meta["splits"]}
            return meta["classes"], splits
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cache %s (%s); decoding again", cache, exc)
    log.info("decoding images of %s (once; cached in %s)", path, cache)
    classes, splits = read_image_folder(path, mode=mode)
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{k}": getattr(a, k) for s, a in splits.items() for k in ("images", "labels")}
    np.savez(cache / "arrays.npz", **arrays)
    meta_file.write_text(json.dumps({"classes": classes, "splits": list(splits), "source": str(path)}))
    return classes, splits
