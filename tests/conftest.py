"""Shared fixtures: an isolated dataset cache for every test and the bundled sample, decoded once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.data import Dataset, load_dataset


def pytest_configure(config: pytest.Config) -> None:
    # The test machine is small and shared: one intra-op thread keeps every test predictable.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Every test starts on one thread, whatever an earlier one (e.g. a CLI run) set."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point $AMC_CACHE_DIR at a fresh folder so no test writes decoded images to the home folder."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path_factory.mktemp("amc-cache")))


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache folder per test module, so the bundled sample is decoded once per module."""
    return tmp_path_factory.mktemp("sample-cache")


@pytest.fixture
def shared_sample_cache(_isolated_cache: None, sample_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point $AMC_CACHE_DIR at the module's cache (use with ``pytest.mark.usefixtures``)."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(sample_cache))


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The bundled CIFAR-10 sample (decoding its 7000 JPEGs takes ~2 s, so once per session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(tmp_path_factory.mktemp("sample-cache")))
        return load_dataset("sample")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, random conv/linear biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()
