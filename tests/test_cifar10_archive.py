"""End-to-end checks on the real CIFAR-10 archive (slow; CI runs them when ../shared is there).

Set ``AMC_CIFAR10`` to the image-folder archive (``cifar10-jpg.tar.gz``) to run them.
"""

import os
from pathlib import Path

import numpy as np
import pytest

import amc.models
from amc.data import load_dataset, sample_path
from amc.models import create_model, read_manifest
from amc.train import evaluate

ARCHIVE = os.environ.get("AMC_CIFAR10")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ARCHIVE, reason="set AMC_CIFAR10 to the CIFAR-10 archive"),
]


@pytest.fixture(scope="module")
def cifar10():
    return load_dataset("folder", ARCHIVE)


def test_cifar10_archive_sample_is_the_search_holdout(cifar10):
    sample = load_dataset("sample")
    assert np.array_equal(sample.split("search").images, cifar10.split("search").images)
    assert np.array_equal(sample.split("search").labels, cifar10.split("search").labels)
    assert sample.mean == cifar10.mean and sample.std == cifar10.std
    assert sample_path().stat().st_size <= 8_000_000


def test_cifar10_archive_shipped_accuracy_matches_manifest(cifar10):
    checkpoints = sorted((Path(amc.models.__file__).parent / "checkpoints").glob("*.pt"))
    if not checkpoints:
        pytest.skip("no shipped checkpoints")
    for path in checkpoints:
        manifest = read_manifest(path)
        model = create_model(manifest["model"], width=manifest["width"], checkpoint=path)
        top1 = evaluate(model, cifar10, "test")["top1"]
        assert abs(top1 - manifest["test_top1"]) < 0.05, (path.name, top1, manifest["test_top1"])
