"""Pillow image transforms at a chosen input size (the ImageNet conventions, without torchvision).

Evaluation: resize the shorter side to :func:`resize_size` and crop the centre square.
Training: a random-resized crop (a random area and aspect ratio, resized to the input size)
and a horizontal flip, drawn from a numpy generator so that a seed fixes every pixel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

CROP_RATIO = 0.875
"""Evaluation crops this share of the resized image (224 out of 256, the ImageNet convention)."""
SMALL_INPUT = 64
"""At or below this input size the shorter side is resized to the input size itself: small
images (CIFAR, Tiny ImageNet) have no background margin to crop away."""
CROP_SCALE = (0.08, 1.0)
"""Range of the share of the image area a training crop covers."""
CROP_ASPECT = (3 / 4, 4 / 3)
"""Range of a training crop's aspect ratio (width / height)."""
RESAMPLE = Image.Resampling.BILINEAR


def resize_size(size: int) -> int:
    """Length of the shorter side before the centre crop of an evaluation image of ``size``."""
    return size if size <= SMALL_INPUT else round(size / CROP_RATIO)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio."""
    width, height = img.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new = (size, new_long) if width <= height else (new_long, size)
    return img if new == img.size else img.resize(new, RESAMPLE)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` x ``size`` square (the image must be at least that large)."""
    width, height = img.size
    left, top = round((width - size) / 2.0), round((height - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def eval_transform(img: Image.Image, size: int) -> Image.Image:
    """The deterministic evaluation view: resize the shorter side, then crop the centre square."""
    return center_crop(resize_shorter(img, resize_size(size)), size)


def crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    aspect: tuple[float, float] = CROP_ASPECT,
) -> tuple[int, int, int, int]:
    """A random crop ``(left, top, right, bottom)`` covering a ``scale`` share of the area.

    Up to ten draws of area and aspect ratio (log-uniform); if none fits, the largest centred
    crop whose aspect ratio lies in ``aspect``.
    """
    area = width * height
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_aspect))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height
    w, h = width, height
    if ratio < aspect[0]:
        h = round(width / aspect[0])
    elif ratio > aspect[1]:
        w = round(height * aspect[1])
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A random crop (:func:`crop_box`) resized to ``size`` x ``size``."""
    return img.resize((size, size), RESAMPLE, box=crop_box(*img.size, rng))


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """The training view: a random-resized crop, mirrored with probability one half."""
    out = random_resized_crop(img, size, rng)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def to_array(img: Image.Image) -> np.ndarray:
    """A uint8 H x W x C array (grayscale gets a channel axis)."""
    array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array
