"""Image-folder datasets (``train/<class>/*``, ``test/<class>/*``), from a folder or an archive.

Images are decoded once with Pillow and cached as uint8 arrays under :func:`cache_dir`, so
later runs load 50,000 CIFAR images in well under a second.

With an input size (:func:`load_image_folder_sized`) images may have any size: the held-out
images (``test/`` or ``val/``) are decoded once at the evaluation view, and the training
images of a folder stay files, streamed by :mod:`amc.data.stream`.
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
from amc.data.stream import ImageFiles
from amc.data.transforms import eval_transform, to_array
from amc.files import atomic_path, write_atomic

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SIZED_SPLITS = ("train", "search", "test", "val")
"""Split folders read with an input size: ``val/`` is the held-out ``test`` split when there is
no ``test/`` (the ImageNet layout)."""


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


def decode_image(data: bytes, name: str, mode: str = "RGB", size: int | None = None) -> np.ndarray:
    """Decode encoded image bytes into a uint8 H x W x C array, naming the file on failure.

    With ``size``, the evaluation view at that size (:func:`~amc.data.transforms.eval_transform`).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {name}: {exc}") from exc
    if size is None:
        return np.asarray(img, dtype=np.uint8)
    return to_array(eval_transform(img, size))


def _val_as_test(found: dict, path: Path) -> dict:
    """Rename a ``val`` split to ``test`` when there is no ``test`` split; else drop it."""
    if "val" in found:
        if "test" in found:
            log.info("%s has test/ and val/: evaluating on test/, ignoring val/", path)
            found.pop("val")
        else:
            found["test"] = found.pop("val")
    return found


def read_image_folder(
    path: Path,
    splits: tuple[str, ...] = ("train", "search", "test"),
    mode: str = "RGB",
    size: int | None = None,
) -> tuple[list[str], dict[str, ImageArrays]]:
    """Decode every image of an image-folder dataset (a folder or a tar archive).

    Args:
        path: Folder or ``.tar``/``.tar.gz`` holding ``<split>/<class>/<image>``.
        splits: Split folder names to read.
        mode: Pillow mode to convert to (``RGB`` or ``L``).
        size: Decode the evaluation view at this input size, and read ``val/`` as ``test/``
            (:data:`SIZED_SPLITS`); ``None`` keeps the images as they are (all one size).

    Returns:
        Class names (sorted, shared by all splits) and split name -> images.
    """
    if size is not None:
        splits = SIZED_SPLITS
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
            image = decode_image(data, f"{path}/{rel}", mode, size)
            found.setdefault(where[0], []).append((where[1], image))
    if not found:
        raise DatasetError(
            f"no images under {path}: expected <split>/<class>/<image> with split "
            f"in {', '.join(splits)} (e.g. train/cat/0001.jpg)"
        )
    classes = sorted({c for items in found.values() for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in _val_as_test(found, path).items():
        shapes = {img.shape for _, img in items}
        if len(shapes) != 1:
            raise DatasetError(f"images of split '{split}' in {path} differ in size: {sorted(shapes)[:3]}")
        images = np.stack([img for _, img in items])
        out[split] = ImageArrays(images, np.array([index[c] for c, _ in items], dtype=np.int64))
    return classes, out


def sized_cache(path: Path, mode: str, size: int | None) -> Path:
    """The cache folder of a dataset's decoded images, named by its contents, mode and size."""
    return cache_dir() / "decoded" / f"{path.name}-{file_key(path)}-{mode}{f'-{size}px' if size else ''}"


def load_image_folder_cached(
    path: Path, mode: str = "RGB", size: int | None = None
) -> tuple[list[str], dict[str, ImageArrays]]:
    """Like :func:`read_image_folder`, but decode only once and reuse a uint8 ``.npz`` cache."""
    path = Path(path)
    if not path.exists():
        return read_image_folder(path, mode=mode)  # raises the explanatory error
    cache = sized_cache(path, mode, size)
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
    classes, splits = read_image_folder(path, mode=mode, size=size)
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{k}": getattr(a, k) for s, a in splits.items() for k in ("images", "labels")}
    with atomic_path(cache / "arrays.npz") as tmp:
        np.savez(tmp, **arrays)
    write_atomic(meta_file, json.dumps({"classes": classes, "splits": list(splits), "source": str(path)}))
    return classes, splits


def _list_folder(root: Path) -> dict[str, list[tuple[str, str]]]:
    """Split name -> ``(class, file)`` of every image under ``root``, in path order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for file in sorted(root.rglob("*")):
        if file.suffix.lower() in IMAGE_SUFFIXES:
            where = _split_of(file.relative_to(root).as_posix(), SIZED_SPLITS)
            if where is not None:
                found.setdefault(where[0], []).append((where[1], str(file)))
    return found


def load_image_folder_sized(
    path: Path, size: int, mode: str = "RGB", workers: int = 0
) -> tuple[list[str], dict[str, ImageArrays | ImageFiles]]:
    """An image-folder dataset of any image size, read at input ``size``.

    A folder's ``train`` split stays files (:class:`~amc.data.stream.ImageFiles`, streamed
    for training); its other splits are decoded once at the evaluation view and cached. An
    archive cannot be read file by file quickly, so all its images are decoded at the
    evaluation view into the cache (training then crops those).

    Args:
        path: Folder or archive holding ``<split>/<class>/<image>``; ``val/`` counts as ``test/``.
        size: Input size.
        mode: Pillow mode to convert to (``RGB`` or ``L``).
        workers: Worker processes that decode large splits.

    Returns:
        Class names (sorted, shared by all splits) and split name -> images.
    """
    path = Path(path)
    if not path.exists() or is_archive(path):
        classes, splits = load_image_folder_cached(path, mode, size)
        if "train" in splits:
            log.info(
                "%s is an archive: its training images are decoded at %d px into the cache, not "
                "streamed (extract it and pass the folder to stream them at full resolution)",
                path,
                size,
            )
        return classes, splits
    found = _val_as_test(_list_folder(path.resolve()), path)  # absolute: valid from any working folder
    if not found:
        return read_image_folder(path, mode=mode, size=size)  # raises the explanatory error
    classes = sorted({c for items in found.values() for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    cache = sized_cache(path, mode, size)
    out: dict[str, ImageArrays | ImageFiles] = {}
    for split, items in found.items():
        labels = np.array([index[c] for c, _ in items], dtype=np.int64)
        files = ImageFiles([f for _, f in items], labels, size, mode, cache)
        out[split] = files if split == "train" else files.decode(workers)
    return classes, out
