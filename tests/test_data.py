"""Datasets: real-format files written here (CIFAR pickles, idx, image folders), splits, errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import amc.data.folder
from amc.data import DATASETS, Dataset, DatasetError, ImageArrays, iterate_batches, load_dataset
from amc.data.base import augment, cache_dir, split_train_search
from amc.data.cifar import read_cifar

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --- writers of the real file formats --------------------------------------------------------------


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 as Python 2's cPickle wrote the official CIFAR release: str opcodes, numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(
            pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        )
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dump(obj: dict, file: Path, style: str) -> None:
    """Write ``obj`` as a pickle: ``py3`` is pickle.dump(protocol=2), ``py2`` mimics the original."""
    with file.open("wb") as f:
        if style == "py2":
            Py2StylePickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=int(style.removeprefix("protocol")) if style != "py3" else 2)


def write_cifar10(root: Path, per_batch: int = 12, n_test: int = 10, style: str = "py3", seed: int = 0):
    """Write a miniature ``cifar-10-batches-py`` release; returns (train data, labels, test data, labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_x, train_y = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        dump(batch, folder / f"data_batch_{i}", style)
        train_x.append(data)
        train_y += labels
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = [int(v) for v in rng.integers(0, 10, n_test)]
    dump(
        {b"batch_label": b"testing batch 1 of 1", b"labels": test_y, b"data": test_x},
        folder / "test_batch",
        style,
    )
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    meta[b"num_vis"] = 3072
    dump(meta, folder / "batches.meta", style)
    return np.concatenate(train_x), np.array(train_y), test_x, np.array(test_y)


def as_images(rows: np.ndarray) -> np.ndarray:
    """CIFAR rows (N x 3072, channel-major) as N x 32 x 32 x 3."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write_idx(file: Path, array: np.ndarray, compress: bool = False) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        file = file.with_name(file.name + ".gz")
        raw = gzip.compress(raw)
    file.write_bytes(raw)


def write_mnist(root: Path, n_train: int = 30, n_test: int = 10, compress: bool = False):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y_train = np.arange(n_train) % 10
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_test = (np.arange(n_test) * 3) % 10
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", x_train, compress)
    write_idx(root / "train-labels-idx1-ubyte", y_train, compress)
    write_idx(root / "t10k-images-idx3-ubyte", x_test, compress)
    write_idx(root / "t10k-labels-idx1-ubyte", y_test, compress)
    return x_train, y_train, x_test, y_test


IMAGE_CLASSES = ["b_dog", "a_cat", "c_ship"]  # written unsorted; labels follow the sorted order


def write_image_folder(root: Path, per_class: dict[str, int] | None = None, size: int = 8) -> dict:
    """Write ``<split>/<class>/<i>.png``; returns {(split, class, filename): pixels}."""
    per_class = per_class or {"train": 6, "test": 2}
    rng = np.random.default_rng(0)
    written = {}
    for split, count in per_class.items():
        for cls in IMAGE_CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.png")
                written[split, cls, f"{i:03d}.png"] = pixels
    return written


def expected_split(written: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels in the loader's order: sorted path, classes sorted by name."""
    keys = sorted(k for k in written if k[0] == split)
    classes = sorted(IMAGE_CLASSES)
    return np.stack([written[k] for k in keys]), np.array([classes.index(k[1]) for k in keys])


def index_coded(n: int) -> ImageArrays:
    """Images whose pixels encode their index (and labels equal to it)."""
    idx = np.arange(n)
    images = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    images[..., 0] = (idx // 256)[:, None, None]
    images[..., 1] = (idx % 256)[:, None, None]
    return ImageArrays(images, idx.astype(np.int64))


def decode_index(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(np.int64) * 256 + images[:, 0, 0, 1]


# --- CIFAR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["py3", "py2", "protocol4"])
def test_cifar10_python_release(tmp_path, style):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path, style=style)
    ds = load_dataset("cifar10", data=tmp_path, search_size=20, split_seed=3)
    assert ds.name == "cifar10"
    assert ds.classes == CIFAR10_CLASSES
    assert ds.num_classes == 10 and ds.in_channels == 3
    assert list(ds.splits) == ["train", "search", "test"]
    assert len(ds.split("search")) == 20 and len(ds.split("train")) == 60 - 20
    test = ds.split("test")
    assert test.images.dtype == np.uint8 and test.images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(test.images, as_images(test_x))
    np.testing.assert_array_equal(test.labels, test_y)
    # search + train together are exactly the training batches, in file order within each split
    full = read_cifar(tmp_path, "cifar10")[1]["train"]
    np.testing.assert_array_equal(full.images, as_images(train_x))
    np.testing.assert_array_equal(full.labels, train_y)
    expected = split_train_search(full, 20, 3)
    for split in ("train", "search"):
        np.testing.assert_array_equal(ds.split(split).images, expected[split].images)
        np.testing.assert_array_equal(ds.split(split).labels, expected[split].labels)
    # normalisation statistics come from the training split only
    mean = ds.split("train").images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(ds.mean, mean, atol=1e-4)


def test_cifar10_folder_given_directly(tmp_path):
    _, _, test_x, _ = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", data=tmp_path / "cifar-10-batches-py", search_size=5)
    np.testing.assert_array_equal(ds.split("test").images, as_images(test_x))


def test_cifar100_python_release(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = [f"class_{i:02d}" for i in range(100)]
    splits = {}
    for split, n in (("train", 40), ("test", 8)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [v // 5 for v in fine]
        dump(
            {b"filenames": [b"x.png"] * n, b"fine_labels": fine, b"coarse_labels": coarse, b"data": data},
            folder / split,
            "py3",
        )
        splits[split] = (data, fine)
    dump(
        {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20},
        folder / "meta",
        "py3",
    )
    ds = load_dataset("cifar100", data=tmp_path, search_size=10)
    assert ds.classes == names and ds.num_classes == 100
    np.testing.assert_array_equal(ds.split("test").images, as_images(splits["test"][0]))
    np.testing.assert_array_equal(ds.split("test").labels, splits["test"][1])
    assert len(ds.split("train")) + len(ds.split("search")) == 40


def test_missing_cifar_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", data=tmp_path, search_size=5)


def test_cifar_without_data_looks_in_the_cache_dir(tmp_path):
    """Without --data the release is looked for under $AMC_CACHE_DIR, never in the home folder."""
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10")
    assert str(cache_dir() / "datasets") in str(err.value)


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a pickle at all",
        b"",
        b"\x80\x02\x8d\xe3\xdd\x9b\x90Q\x95r\xb1",  # OverflowError inside the unpickler
        b"\x80\x02(\x88\x98\x8c:",  # TypeError inside the unpickler
        b"\x80\x02K\x01.",  # a valid pickle of the int 1, not a dict
        np.random.default_rng(0).bytes(3000),
    ],
    ids=["text", "empty", "overflow", "typeerror", "not-a-dict", "random"],
)
def test_corrupt_cifar_pickle_is_named(tmp_path, garbage):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(garbage)
    with pytest.raises(DatasetError, match="corrupt CIFAR file") as err:
        load_dataset("cifar10", data=tmp_path, search_size=5)
    assert str(bad) in str(err.value)


def test_cifar_batch_of_wrong_shape(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, bad, "py3")
    with pytest.raises(DatasetError, match="is not a CIFAR batch"):
        load_dataset("cifar10", data=tmp_path, search_size=5)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["call", "reference"])
def test_pickle_with_forbidden_global_is_refused(tmp_path, payload):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    evil = _RunsShell(marker) if payload == "call" else os.system
    dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": evil}, bad, "py3")
    with pytest.raises(DatasetError, match=r"forbidden global (posix|nt|os)\.system") as err:
        load_dataset("cifar10", data=tmp_path, search_size=5)
    assert str(bad) in str(err.value)
    assert not marker.exists()


# --- MNIST idx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_mnist_idx(tmp_path, compress):
    x_train, _, x_test, y_test = write_mnist(tmp_path, compress=compress)
    ds = load_dataset("mnist", data=tmp_path, search_size=6)
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.in_channels == 1
    test = ds.split("test")
    assert test.images.shape == (10, 28, 28, 1) and test.images.dtype == np.uint8
    np.testing.assert_array_equal(test.images[..., 0], x_test)
    np.testing.assert_array_equal(test.labels, y_test)
    assert test.labels.dtype == np.int64
    union = np.concatenate([ds.split("train").images, ds.split("search").images])[..., 0]
    assert sorted(map(bytes, union)) == sorted(map(bytes, x_train))


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("cut", ["body", "header"])
def test_truncated_idx_file(tmp_path, compress, cut):
    write_mnist(tmp_path)
    file = tmp_path / "t10k-images-idx3-ubyte"
    raw = file.read_bytes()
    raw = raw[:-100] if cut == "body" else raw[:9]
    file.unlink()
    if compress:
        file = file.with_name(file.name + ".gz")
        raw = gzip.compress(raw)
    file.write_bytes(raw)
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("mnist", data=tmp_path, search_size=6)
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_truncated_gzip_idx_file(tmp_path):
    write_mnist(tmp_path, compress=True)
    file = tmp_path / "train-images-idx3-ubyte.gz"
    file.write_bytes(file.read_bytes()[:50])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", data=tmp_path, search_size=6)


def test_idx_bad_magic_and_missing(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetError, match="bad magic number"):
        load_dataset("mnist", data=tmp_path, search_size=6)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"missing idx file .*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data=tmp_path, search_size=6)


# --- image folders and archives ---------------------------------------------------------------------


def make_archive(folder: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for file in sorted(folder.rglob("*")):
            tar.add(file, arcname=prefix + file.relative_to(folder).as_posix(), recursive=False)
    return archive


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "tar.gz-with-prefix"])
def test_image_folder_pixels_and_labels(tmp_path, kind):
    root = tmp_path / "images"
    written = write_image_folder(root)
    data = root
    if kind != "folder":
        data = make_archive(root, tmp_path / "images.tar.gz", "cifar-ish/" if "prefix" in kind else "")
    ds = load_dataset("folder", data=data, search_size=4, split_seed=1)
    assert ds.classes == sorted(IMAGE_CLASSES)
    assert ds.source == str(data)
    test_images, test_labels = expected_split(written, "test")
    np.testing.assert_array_equal(ds.split("test").images, test_images)
    np.testing.assert_array_equal(ds.split("test").labels, test_labels)
    train_images, train_labels = expected_split(written, "train")
    expected = split_train_search(ImageArrays(train_images, train_labels), 4, 1)
    for split in ("train", "search"):
        np.testing.assert_array_equal(ds.split(split).images, expected[split].images)
        np.testing.assert_array_equal(ds.split(split).labels, expected[split].labels)


def test_image_folder_cache_is_reused(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_image_folder(root)
    archive = make_archive(root, tmp_path / "images.tar.gz")
    first = load_dataset("folder", data=archive, search_size=4)
    decoded = list((cache_dir() / "decoded").iterdir())
    assert len(decoded) == 1 and (decoded[0] / "arrays.npz").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("the images were decoded again instead of read from the cache")

    monkeypatch.setattr(amc.data.folder, "read_image_folder", fail)
    second = load_dataset("folder", data=archive, search_size=4)
    assert second.classes == first.classes
    for split in first.splits:
        np.testing.assert_array_equal(second.split(split).images, first.split(split).images)
        np.testing.assert_array_equal(second.split(split).labels, first.split(split).labels)


def test_image_folder_cache_notices_an_edited_image(tmp_path):
    """Replacing an image inside train/<class>/ must not serve the stale decoded copy."""
    root = tmp_path / "images"
    write_image_folder(root, {"train": 6, "test": 2})
    before = load_dataset("folder", data=root, search_size=4)
    file = root / "test" / "a_cat" / "000.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(file)
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = load_dataset("folder", data=root, search_size=4)
    assert not np.array_equal(before.split("test").images[0], after.split("test").images[0])
    assert (after.split("test").images[0] == 7).all()


def test_unreadable_cache_is_ignored(tmp_path):
    root = tmp_path / "images"
    written = write_image_folder(root)
    load_dataset("folder", data=root, search_size=4)
    (cache_dir() / "decoded").iterdir().__next__().joinpath("arrays.npz").write_bytes(b"garbage")
    ds = load_dataset("folder", data=root, search_size=4)
    np.testing.assert_array_equal(ds.split("test").images, expected_split(written, "test")[0])


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images under"):
        load_dataset("folder", data=tmp_path / "empty")


def test_missing_folder_and_missing_data_argument(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("folder", data=tmp_path / "absent")
    for name in ("folder", "mnist"):
        with pytest.raises(DatasetError, match="needs --data"):
            load_dataset(name)


@pytest.mark.parametrize("archived", [False, True], ids=["folder", "tar.gz"])
def test_non_image_with_jpg_suffix_is_named(tmp_path, archived):
    root = tmp_path / "images"
    write_image_folder(root)
    (root / "train" / "a_cat" / "notes.jpg").write_text("this is text, not a JPEG")
    data = make_archive(root, tmp_path / "images.tar.gz") if archived else root
    with pytest.raises(DatasetError, match=r"cannot decode image .*train/a_cat/notes\.jpg"):
        load_dataset("folder", data=data, search_size=4)


def test_corrupt_archive(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root)
    archive = make_archive(root, tmp_path / "images.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cannot read archive"):
        load_dataset("folder", data=archive, search_size=4)


def test_images_of_different_sizes(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "train" / "a_cat" / "odd.png")
    with pytest.raises(DatasetError, match="differ in size"):
        load_dataset("folder", data=root, search_size=4)


# --- splits, batches, augmentation -----------------------------------------------------------------


def test_split_is_deterministic():
    data = index_coded(500)
    a, b = split_train_search(data, 100, seed=7), split_train_search(data, 100, seed=7)
    c = split_train_search(data, 100, seed=8)
    np.testing.assert_array_equal(a["search"].images, b["search"].images)
    np.testing.assert_array_equal(a["train"].labels, b["train"].labels)
    assert not np.array_equal(a["search"].labels, c["search"].labels)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_split_is_disjoint_and_complete(seed):
    data = index_coded(1000)
    split = split_train_search(data, 250, seed)
    search, train = decode_index(split["search"].images), decode_index(split["train"].images)
    assert len(search) == 250 and len(train) == 750
    assert not set(search) & set(train)
    assert sorted(np.concatenate([search, train])) == list(range(1000))
    # each split keeps the original order, and labels travel with their images
    assert (np.diff(search) > 0).all() and (np.diff(train) > 0).all()
    np.testing.assert_array_equal(split["search"].labels, search)


@pytest.mark.parametrize("size", [0, 10, -1])
def test_split_size_out_of_range(size):
    with pytest.raises(DatasetError, match="search_size"):
        split_train_search(index_coded(10), size)


def test_split_seed_through_load_dataset(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 10, "test": 1})
    a = load_dataset("folder", data=tmp_path / "images", search_size=6, split_seed=5)
    b = load_dataset("folder", data=tmp_path / "images", search_size=6, split_seed=5)
    c = load_dataset("folder", data=tmp_path / "images", search_size=6, split_seed=6)
    assert a.split_seed == 5
    np.testing.assert_array_equal(a.split("search").images, b.split("search").images)
    assert not np.array_equal(a.split("search").images, c.split("search").images)


def make_dataset(data: ImageArrays) -> Dataset:
    return Dataset("t", ["a", "b"], {"test": data}, (0.5, 0.25, 0.0), (0.5, 0.5, 1.0))


def test_iterate_batches_normalises_and_covers_the_split():
    data = index_coded(10)
    ds = make_dataset(data)
    batches = list(iterate_batches(data, ds, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = batches[0][0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 2, 2)
    expected = (torch.from_numpy(data.images[:4]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x[:, 0], expected[:, 0])
    torch.testing.assert_close(x[:, 2], torch.zeros(4, 2, 2))  # (0 - 0) / 1
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(10))
    shuffled = torch.cat([y for _, y in iterate_batches(data, ds, 4, shuffle=True)])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    limited = torch.cat([y for _, y in iterate_batches(data, ds, 4, shuffle=True, limit=5)])
    assert len(limited) == 5


def test_limit_without_shuffle_keeps_a_class_sorted_split_balanced():
    """Splits are sorted by class; a limited evaluation must not see only the first classes."""
    labels = np.repeat(np.arange(10), 100)
    data = ImageArrays(index_coded(1000).images, labels)
    ds = Dataset("t", [str(i) for i in range(10)], {"test": data}, (0.0,) * 3, (1.0,) * 3)
    batches = list(iterate_batches(data, ds, 64, limit=200))
    picked = torch.cat([y for _, y in batches])
    assert np.bincount(picked.numpy(), minlength=10).tolist() == [20] * 10
    x = torch.cat([x for x, _ in batches])
    index = (x[:, 0, 0, 0] * 255).round().long() * 256 + (x[:, 1, 0, 0] * 255).round().long()
    assert len(set(index.tolist())) == 200, "each image at most once"
    everything = torch.cat([y for _, y in iterate_batches(data, ds, 64, limit=5000)])
    assert torch.equal(everything, torch.from_numpy(labels))


def test_augment_keeps_shape_and_dtype():
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_without_padding_is_identity_or_flip():
    images = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=0)
    flipped = 0
    for original, result in zip(images, out, strict=True):
        if torch.equal(result, original):
            continue
        assert torch.equal(result, original.flip(1)), "a sample is neither the input nor its mirror"
        flipped += 1
    assert 0 < flipped < 64


def test_augment_crops_stay_inside_the_padding():
    images = torch.full((32, 32, 32, 3), 255, dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=4)
    assert (out[:, 4:28, 4:28] == 255).all()  # every crop keeps the central 24 x 24
    assert set(out.unique().tolist()) <= {0, 255}
    assert (out == 0).any(), "some crops must show the zero padding"


# --- dataset registry and the bundled sample --------------------------------------------------------


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'") as err:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(err.value)


def test_bundled_sample(sample_dataset):
    ds = sample_dataset
    assert ds.name == "sample"
    assert list(ds.splits) == ["search", "test"]
    assert len(ds.split("search")) == 5000 and len(ds.split("test")) == 2000
    assert ds.num_classes == 10 and ds.classes == CIFAR10_CLASSES
    assert ds.split("test").images.shape[1:] == (32, 32, 3)
    assert ds.split("search").images.shape[1:] == (32, 32, 3)
    assert ds.split("test").images.dtype == np.uint8
    assert np.bincount(ds.split("test").labels).tolist() == [200] * 10
    assert ds.split_seed == 0
    assert ds.mean == pytest.approx((0.4911, 0.4819, 0.4466)) and ds.std == pytest.approx(
        (0.2453, 0.2428, 0.2607)
    )


def test_sample_has_no_train_split(sample_dataset):
    with pytest.raises(DatasetError, match="no 'train' split") as err:
        sample_dataset.split("train")
    assert "bundled sample" in str(err.value)


def test_sample_archive_members_are_jpegs():
    from amc.data import sample_path

    with tarfile.open(sample_path()) as tar:
        names = tar.getnames()
        assert len(names) == 7000
        first = tar.extractfile(names[0]).read()  # type: ignore[union-attr]
    assert {n.split("/")[0] for n in names} == {"search", "test"}
    assert Image.open(io.BytesIO(first)).format == "JPEG"
