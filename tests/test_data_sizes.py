"""Image folders at real sizes: input size, transforms, size-keyed caches, the streamed loader, the CLI."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

import amc.data.stream
from amc.cli import main
from amc.data import NORMALIZATIONS, DatasetError, ImageArrays, ImageFiles, iterate_batches, load_dataset
from amc.data.base import cache_dir
from amc.data.stream import split_loader
from amc.data.transforms import (
    CROP_ASPECT,
    CROP_SCALE,
    center_crop,
    crop_box,
    eval_transform,
    random_resized_crop,
    resize_size,
    to_array,
    train_transform,
)
from amc.models import create_model
from amc.scoring import calibration_images
from amc.train import training_memory_format

CLASSES = ("circle", "square", "triangle")
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220))


def draw(cls: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A noisy background with a class-coloured shape at a random place: every image is unique."""
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) // 4 + rng.integers(0, 192, 3).astype(
        np.uint8
    )
    img = Image.fromarray(noise)
    side = min(width, height) // 2
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    box = [x, y, x + side - 1, y + side - 1]
    pen = ImageDraw.Draw(img)
    if cls == 0:
        pen.ellipse(box, fill=COLOURS[cls])
    elif cls == 1:
        pen.rectangle(box, fill=COLOURS[cls])
    else:
        pen.polygon([(x, y + side - 1), (x + side // 2, y), (x + side - 1, y + side - 1)], fill=COLOURS[cls])
    return img


def write_folder(
    root: Path,
    size: int | None,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = ((48, 80), (300, 200), (64, 64), (225, 230), (97, 61)),
) -> Path:
    """``<split>/<class>/<i>.png`` images of ``size`` x ``size`` (or of the varied ``sizes``)."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 12, "test": 3}).items():
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = (size, size) if size else sizes[int(rng.integers(len(sizes)))]
                draw(c, w, h, rng).save(root / split / name / f"{i:03d}.png")
    return root


def files_of(root: Path, split: str) -> list[Path]:
    return sorted((root / split).rglob("*.png"))


@pytest.fixture
def folder64(tmp_path) -> Path:
    return write_folder(tmp_path / "f64", 64)


# --- loading at an input size -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 224])
def test_folders_at_64_and_224_load_at_their_input_size(tmp_path, size):
    root = write_folder(tmp_path / f"f{size}", size, {"train": 8 if size == 224 else 12, "test": 3})
    per_class = 8 if size == 224 else 12
    ds = load_dataset("folder", root, search_size=6, input_size=size, workers=0)
    train, search, test = ds.split("train"), ds.split("search"), ds.split("test")
    assert isinstance(train, ImageFiles), "the training images stay files"
    assert isinstance(search, ImageArrays) and isinstance(test, ImageArrays)
    assert len(train) + len(search) == 3 * per_class and len(search) == 6
    assert search.images.shape == (6, size, size, 3) and test.images.shape == (9, size, size, 3)
    assert train.images.shape == (len(train), size, size, 3)
    assert ds.in_channels == 3 and ds.num_classes == 3 and ds.classes == list(CLASSES)
    assert ds.input_size == size and test.images.dtype == np.uint8
    np.testing.assert_array_equal(test.labels, np.repeat(np.arange(3), 3))
    expected = np.stack(
        [to_array(eval_transform(Image.open(f).convert("RGB"), size)) for f in files_of(root, "test")]
    )
    np.testing.assert_array_equal(test.images, expected)
    if size == 64:  # at or below 64 px a square image is read as it is
        np.testing.assert_array_equal(test.images[0], np.asarray(Image.open(files_of(root, "test")[0])))


def test_val_folder_is_the_test_split(tmp_path):
    root = write_folder(tmp_path / "imagenet", 64, {"train": 6, "val": 2})
    ds = load_dataset("folder", root, search_size=3, input_size=32, workers=0)
    assert list(ds.splits) == ["train", "search", "test"]
    assert ds.split("test").images.shape == (6, 32, 32, 3)
    write_folder(root, 64, {"test": 1}, seed=1)  # with both, test/ is the test split
    assert len(load_dataset("folder", root, search_size=3, input_size=32, workers=0).split("test")) == 3


def test_mixed_sizes_need_an_input_size_and_get_resized_and_cropped(tmp_path):
    root = write_folder(tmp_path / "mixed", None, {"train": 8, "test": 3})
    with pytest.raises(DatasetError, match="differ in size"):
        load_dataset("folder", root, search_size=4)  # the images' own size must be uniform
    ds = load_dataset("folder", root, search_size=4, input_size=96, workers=0)
    assert ds.split("test").images.shape == (9, 96, 96, 3)
    assert ds.split("search").images.shape == (4, 96, 96, 3)
    files = files_of(root, "test")
    assert len({Image.open(f).size for f in files}) > 1
    for file, image in zip(files, ds.split("test").images, strict=True):
        np.testing.assert_array_equal(image, to_array(eval_transform(Image.open(file).convert("RGB"), 96)))
    x, _ = next(iter(iterate_batches(ds.split("train"), ds, 5, True, True, torch.Generator().manual_seed(0))))
    assert x.shape == (5, 3, 96, 96)


def test_input_size_and_normalisation_errors(tmp_path, folder64, capsys):
    with pytest.raises(DatasetError, match="--dataset folder"):
        load_dataset("sample", input_size=64)
    with pytest.raises(DatasetError, match="unknown normalisation 'coco'"):
        load_dataset("folder", folder64, search_size=4, normalize="coco")
    with pytest.raises(DatasetError, match="whole number"):
        load_dataset("folder", folder64, search_size=4, input_size=0)
    evaluate = ["evaluate", "--dataset", "sample", "--input-size", "64", "--checkpoint", "none"]
    evaluate += ["--threads", "1"]  # as conftest sets it: the CLI would take every core for later tests
    assert main(evaluate) == 2
    assert "--dataset folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--normalize", "coco"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--input-size", "-3"])


# --- transforms ---------------------------------------------------------------------------------------


def test_eval_sizes_follow_the_imagenet_convention_above_64_px():
    assert resize_size(224) == 256 and resize_size(128) == 146 and resize_size(96) == 110
    assert resize_size(64) == 64 and resize_size(32) == 32


def test_center_crop_is_exact_and_deterministic():
    coded = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)  # pixel value = its index
    crop = np.asarray(center_crop(Image.fromarray(coded), 4))
    np.testing.assert_array_equal(crop, coded[1:5, 3:7])
    img = draw(0, 300, 200, np.random.default_rng(1))
    first, second = eval_transform(img, 224), eval_transform(img, 224)
    assert first.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    # resize the shorter side to 256 (300 x 200 -> 384 x 256), then take the centre
    expected = img.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(expected))


def test_random_resized_crop_respects_size_area_and_aspect():
    img = draw(1, 300, 200, np.random.default_rng(2))
    areas, boxes = [], set()
    for seed in range(200):
        left, top, right, bottom = crop_box(300, 200, np.random.default_rng(seed))
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        w, h = right - left, bottom - top
        areas.append(w * h / (300 * 200))
        assert CROP_ASPECT[0] - 0.05 <= w / h <= CROP_ASPECT[1] + 0.05
        assert CROP_SCALE[0] - 0.01 <= areas[-1] <= CROP_SCALE[1]
        boxes.add((left, top, right, bottom))
    assert min(areas) < 0.3 and max(areas) > 0.7 and len(boxes) > 150
    for size in (32, 64, 224):
        assert random_resized_crop(img, size, np.random.default_rng(0)).size == (size, size)
    same = [np.asarray(random_resized_crop(img, 64, np.random.default_rng(5))) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    assert crop_box(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 506)  # too thin: centred fallback


def test_training_view_is_the_crop_or_its_mirror():
    img = draw(2, 120, 90, np.random.default_rng(3))
    flips = 0
    for seed in range(40):
        out = np.asarray(train_transform(img, 48, np.random.default_rng(seed)))
        replay = np.random.default_rng(seed)
        crop = np.asarray(random_resized_crop(img, 48, replay))
        flipped = replay.random() < 0.5
        np.testing.assert_array_equal(out, crop[:, ::-1] if flipped else crop)
        flips += flipped
    assert 5 < flips < 35


# --- caches -----------------------------------------------------------------------------------------


def test_decoded_subsets_are_cached_per_input_size(folder64, monkeypatch):
    opened = []
    real_open = amc.data.stream.open_image

    def counting_open(path, mode="RGB"):
        opened.append(path)
        return real_open(path, mode)

    monkeypatch.setattr(amc.data.stream, "open_image", counting_open)
    first = load_dataset("folder", folder64, search_size=6, input_size=64, workers=0)
    assert len(opened) == 9 + 6  # test and search decoded once
    again = load_dataset("folder", folder64, search_size=6, input_size=64, workers=0)
    assert len(opened) == 15, "the same input size reads the cache"
    np.testing.assert_array_equal(first.split("search").images, again.split("search").images)
    other = load_dataset("folder", folder64, search_size=6, input_size=48, workers=0)
    assert len(opened) == 30, "another input size decodes again"
    assert other.split("test").images.shape[1:3] == (48, 48)
    caches = sorted(p.name for p in (cache_dir() / "decoded").iterdir())
    assert [name.rsplit("-", 1)[1] for name in caches] == ["48px", "64px"]


def test_archive_train_split_is_decoded_at_the_input_size(tmp_path, caplog):
    root = write_folder(tmp_path / "mixed", None, {"train": 6, "val": 2})
    archive = tmp_path / "mixed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in sorted(root.rglob("*.png")):
            tar.add(file, arcname=file.relative_to(root).as_posix())
    with caplog.at_level(logging.INFO, logger="amc.data.folder"):
        ds = load_dataset("folder", archive, search_size=3, input_size=40, workers=0)
    assert "not streamed" in caplog.text
    assert isinstance(ds.split("train"), ImageArrays) and ds.split("train").images.shape[1:] == (40, 40, 3)
    assert ds.split("test").images.shape == (6, 40, 40, 3)
    batches = list(iterate_batches(ds.split("train"), ds, 4, True, True, torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == 15 and batches[0][0].shape == (4, 3, 40, 40)


# --- the streamed training split ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_loader_yields_normalised_batches(folder64, workers):
    ds = load_dataset("folder", folder64, search_size=6, input_size=56, workers=workers)
    train = ds.split("train")
    loader = split_loader(
        train, ds, 8, shuffle=True, augmented=True, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(loader, DataLoader) and loader.num_workers == workers
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8, 8, 8, 6]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and x.shape == (30, 3, 56, 56)
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    pixels = x * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, "normalised uint8 pixels"
    assert x.min() < -0.5 and x.max() > 0.5
    labels = torch.cat([y for _, y in batches])
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == sorted(train.labels.tolist())
    # the same generator seed gives the same batches, in and out of worker processes
    serial = load_dataset("folder", folder64, search_size=6, input_size=56, workers=0)
    again = split_loader(train, serial, 8, True, True, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([x for x, _ in again]), x)
    other = split_loader(train, serial, 8, True, True, torch.Generator().manual_seed(1))
    assert not torch.equal(torch.cat([x for x, _ in other]), x)


def test_evaluation_batches_of_streamed_files_are_the_centre_view(folder64):
    ds = load_dataset("folder", folder64, search_size=6, input_size=64, workers=0)
    train = ds.split("train")
    x = torch.cat([x for x, _ in iterate_batches(train, ds, 7)])
    expected = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in train.files])
    pixels = (x * torch.tensor(ds.std).view(1, 3, 1, 1) + torch.tensor(ds.mean).view(1, 3, 1, 1)) * 255
    np.testing.assert_allclose(pixels.permute(0, 2, 3, 1).numpy(), expected, atol=1e-3)
    picked = train.images[np.array([4, 0])]  # array-like access decodes just those images
    np.testing.assert_array_equal(picked, expected[[4, 0]])
    np.testing.assert_array_equal(train.images[2], expected[2])
    calibration = calibration_images(ds, 10, seed=7)  # scoring code reads the streamed split as is
    assert calibration.shape == (10, 3, 64, 64)


def test_search_split_is_disjoint_from_the_streamed_train_files(tmp_path):
    root = write_folder(tmp_path / "f", 64, {"train": 20, "test": 1})
    ds = load_dataset("folder", root, search_size=15, input_size=64, split_seed=3, workers=0)
    train = ds.split("train")
    every = {
        str(f.resolve()): np.asarray(Image.open(f).convert("RGB")).tobytes() for f in files_of(root, "train")
    }
    streamed = set(train.files)
    held_out = {image.tobytes() for image in ds.split("search").images}
    assert len(streamed) == 45 and len(held_out) == 15
    assert not held_out & {every[f] for f in streamed}, "a search image is also streamed for training"
    assert held_out | {every[f] for f in streamed} == set(every.values())
    other = load_dataset("folder", root, search_size=15, input_size=64, split_seed=4, workers=0)
    assert set(other.split("train").files) != streamed


def test_unreadable_streamed_image_is_named_in_one_line(folder64):
    ds = load_dataset("folder", folder64, search_size=3, input_size=64, workers=2)
    bad = Path(ds.split("train").files[5])
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=f"cannot decode image {bad}") as err:
        list(iterate_batches(ds.split("train"), ds, 8, True, True))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_without_an_input_size_nothing_is_streamed(folder64, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("split_loader called")

    monkeypatch.setattr(amc.data.stream, "split_loader", fail)
    ds = load_dataset("folder", folder64, search_size=6)
    assert isinstance(ds.split("train"), ImageArrays) and ds.input_size is None
    batches = list(iterate_batches(ds.split("train"), ds, 8, True, True, torch.Generator().manual_seed(0)))
    assert batches[0][0].shape == (8, 3, 64, 64)


def test_normalisation_presets(folder64):
    auto = load_dataset("folder", folder64, search_size=6, input_size=64, workers=0)
    search = auto.split("search").images.reshape(-1, 3) / 255.0
    assert auto.normalize == "auto"
    assert auto.mean == pytest.approx(tuple(search.mean(0)), abs=1e-4)
    for name, (mean, std) in NORMALIZATIONS.items():
        ds = load_dataset("folder", folder64, search_size=6, input_size=64, normalize=name, workers=0)
        assert (ds.mean, ds.std, ds.normalize) == (mean, std, name)
    cifar = load_dataset("folder", folder64, search_size=6, normalize="cifar10")  # no input size
    assert cifar.mean == NORMALIZATIONS["cifar10"][0] and cifar.input_size is None


# --- end to end from the command line -------------------------------------------------------------------


def test_64px_folder_search_apply_and_finetune_from_the_cli(tmp_path, monkeypatch, capsys):
    root = write_folder(tmp_path / "f64", 64, {"train": 10, "test": 4})
    streamed = []
    real_loader = amc.data.stream.split_loader

    def spy(data, dataset, *args, **kwargs):
        loader = real_loader(data, dataset, *args, **kwargs)
        streamed.append((type(data).__name__, loader.num_workers, loader.dataset.augmented))
        return loader

    monkeypatch.setattr(amc.data.stream, "split_loader", spy)
    data = ["--dataset", "folder", "--data", str(root), "--input-size", "64", "--search-size", "12"]
    data += ["--threads", "1"]  # as conftest sets it: the CLI would take every core for later tests
    model = ["--model", "resnet20", "--width", "0.25", "--checkpoint", "none"]
    search = ["--episodes", "3", "--search-images", "8", "--selection-images", "4", "--no-progress"]
    argv = ["search", *data, *model, *search, "--runs-dir", str(tmp_path / "runs"), "--name", "r"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "r"
    assert (run / "best_policy.json").exists()
    assert "held-out test images (12)" in capsys.readouterr().out
    out = tmp_path / "applied"
    policy = ["--policy", str(run / "best_policy.json"), "--finetune-epochs", "1", "--workers", "2"]
    assert main(["apply", *data, *model, *policy, "--out", str(out)]) == 0
    assert "pruned" in capsys.readouterr().out
    assert ("ImageFiles", 2, True) in streamed, "fine-tuning streams the training files"
    manifest = json.loads((out / "finetune" / "model.json").read_text())
    assert manifest["input_size"] == 64 and manifest["normalize"] == "auto"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["pruned_top1"] <= 100 and metrics["flops_ratio"] < 0.75


# --- training at real sizes ---------------------------------------------------------------------------


def test_thin_strided_1x1_convolutions_train_in_the_contiguous_format_at_real_sizes():
    """oneDNN corrupts the heap on their channels-last weight gradient from 56 x 56 inputs on."""
    cpu = torch.device("cpu")
    assert training_memory_format(create_model("resnet20", 10, 1.0), cpu, 224) == torch.channels_last
    assert training_memory_format(create_model("mobilenet_v1", 10, 0.25), cpu, 224) == torch.channels_last
    thin = create_model("resnet20", 10, 0.5)  # 8-channel shortcut into the second stage
    assert training_memory_format(thin, cpu, 64) == torch.contiguous_format
    assert training_memory_format(thin, cpu, 32) == torch.channels_last  # CIFAR sizes: unchanged
    assert training_memory_format(thin, torch.device("meta"), 64) == torch.channels_last
