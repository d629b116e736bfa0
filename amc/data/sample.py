"""Build the bundled CIFAR-10 sample: the search hold-out and part of the test set, as JPEG bytes.

The sample keeps the *original* JPEG bytes of the images, so decoding it gives exactly the
pixels the shipped checkpoints were scored on. Rebuild it with::

    python -m amc.data.sample ../shared/data/cifar10/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from amc.data.base import ImageArrays, channel_stats, split_train_search
from amc.data.folder import _split_of, _walk_archive, load_image_folder_cached

DEFAULT_OUT = Path(__file__).parent / "sample" / "cifar10_sample.tar.gz"


def build_sample(
    source: Path,
    out: Path = DEFAULT_OUT,
    split_seed: int = 0,
    search_size: int = 5000,
    test_per_class: int = 200,
) -> dict:
    """Write ``out`` (``search/<class>/*.jpg``, ``test/<class>/*.jpg``) and its JSON metadata.

    Args:
        source: The CIFAR-10 image-folder archive (or folder) the checkpoints were trained on.
        out: Target ``.tar.gz``; the metadata goes to the same name with ``.json``.
        split_seed: Seed of the search hold-out, as used for training.
        search_size: Size of the search hold-out, as used for training.
        test_per_class: Test images kept per class (the first ones in file order).

    Returns:
        The metadata written beside the archive.
    """
    items = list(_walk_archive(source))
    train = [(rel, data) for rel, data in items if (_split_of(rel, ("train",)) or ("",))[0] == "train"]
    index = np.arange(len(train))
    holdout = split_train_search(ImageArrays(index[:, None, None], index), search_size, split_seed)
    chosen = [("search", *train[i]) for i in holdout["search"].labels]
    per_class: dict[str, int] = {}
    for rel, data in items:
        where = _split_of(rel, ("test",))
        if where and per_class.get(where[1], 0) < test_per_class:
            per_class[where[1]] = per_class.get(where[1], 0) + 1
            chosen.append(("test", rel, data))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        for split, rel, data in chosen:
            info = tarfile.TarInfo(f"{split}/{'/'.join(rel.split('/')[-2:])}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    classes, splits = load_image_folder_cached(source)
    mean, std = channel_stats(split_train_search(splits["train"], search_size, split_seed)["train"].images)
    meta = {
        "name": "CIFAR-10 sample",
        "classes": classes,
        "mean": mean,
        "std": std,
        "split_seed": split_seed,
        "search_size": search_size,
        "test_per_class": test_per_class,
        "source": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else "",
        "note": "search = the seeded hold-out of the training set; mean/std are those of the training split",
    }
    out.with_suffix("").with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta


def main() -> None:
    """Command-line entry: ``python -m amc.data.sample SOURCE [--out OUT]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="CIFAR-10 image-folder archive or folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .tar.gz")
    args = parser.parse_args()
    meta = build_sample(args.source, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {json.dumps(meta)[:200]}")


if __name__ == "__main__":
    main()
