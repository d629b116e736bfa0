"""Benchmark mechanics (no timings asserted): BatchNorm folding, the speed-up record, the episode overhead."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amc.agents.factory import imitation_callback, load_preset
from amc.agents.overhead import PARTS, episode_overhead
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from conftest import randomize
from torch import nn

from amc.backends import ChannelBackend, FineGrainedBackend
from amc.benchmark import PartTimer, fold_batchnorm, pruning_speedup, selection_table
from amc.data import Dataset, ImageArrays
from amc.models import create_model
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer, ScoringConfig, calibration_images


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1", "vgg16"])
def test_folding_batchnorm_keeps_outputs(name):
    torch.manual_seed(0)
    model = randomize(create_model(name, width=0.25))  # non-trivial BatchNorms to fold
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_speedup_record_has_both_forms():
    torch.manual_seed(0)
    result = pruning_speedup(create_model("resnet20", width=0.25), batch=2, repeats=5, round_to=2)
    assert result["flops_speedup"] == pytest.approx(2.0, rel=0.1)
    for prefix in ("", "deployed_"):
        assert result[prefix + "dense_ms"] > 0 and result[prefix + "pruned_ms"] > 0
        speedup = result[prefix + "dense_ms"] / result[prefix + "pruned_ms"]
        assert result[prefix + "latency_speedup"] == pytest.approx(speedup)
        assert result[prefix + "ratio"] == pytest.approx(speedup / result["flops_speedup"])


def test_speedup_record_with_onnxruntime():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    result = pruning_speedup(create_model("resnet20", width=0.25), batch=2, repeats=5, round_to=2, onnx=True)
    assert result["onnx_dense_ms"] > 0 and result["onnx_pruned_ms"] > 0
    speedup = result["onnx_dense_ms"] / result["onnx_pruned_ms"]
    assert result["onnx_ratio"] == pytest.approx(speedup / result["flops_speedup"])
    assert "onnx_ratio" not in pruning_speedup(create_model("resnet20", width=0.25), batch=2, repeats=5)


def test_selection_table_on_the_shipped_resnet20(sample_dataset):
    from amc.models import resolve_checkpoint

    path, _ = resolve_checkpoint("resnet20", "shipped")
    table = selection_table(lambda: create_model("resnet20", checkpoint=path), sample_dataset, 0.5)
    assert set(table) == {"dense"} | {
        f"reconstruct={a} recalibrate={b}" for a in (False, True) for b in (False, True)
    }
    both, neither = table["reconstruct=True recalibrate=True"], table["reconstruct=False recalibrate=False"]
    assert neither < both < table["dense"]


# --- overhead of the default search episode ------------------------------------------------------


def synthetic(n_search: int = 240, seed: int = 0) -> Dataset:
    """Random 32x32 images: enough for a tiny network's episodes (scored, calibrated, recalibrated)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_search) % 10).astype(np.int64)
    images = rng.integers(0, 256, (n_search, 32, 32, 3)).astype(np.uint8)
    classes = [f"c{i}" for i in range(10)]
    return Dataset("synthetic", classes, {"search": ImageArrays(images, labels)}, (0.5,) * 3, (0.25,) * 3)


def tiny_env(
    reconstruct: bool = True, recalibrate: bool = True, model: nn.Module | None = None
) -> PruningEnv:
    """The default episode's machinery (reconstruction, BN recalibration, a budget) on a tiny network."""
    torch.manual_seed(0)
    dataset = synthetic()
    net = model if model is not None else randomize(create_model("resnet20", width=0.25))
    scoring = ScoringConfig(images=64, recalibrate=recalibrate, recalibration_images=64)
    scorer = Scorer(dataset, scoring)
    calibration = calibration_images(dataset, 32, scorer.spare_index, seed=7) if reconstruct else None
    backend = ChannelBackend(ChannelPruner(net, calibration=calibration), scorer, model_name="tiny")
    return PruningEnv(
        EnvConfig(target=0.5, reconstruct=reconstruct, recalibrate=recalibrate), backend=backend
    )


def test_overhead_record_has_every_part_and_a_ratio():
    repeats = 2
    result = episode_overhead(tiny_env(), repeats=repeats, hp={"batch_size": 8})
    assert result["ratio"] > 0 and result["dense_s"] > 0 and result["episode_s"] > 0
    assert result["images"] == 64
    assert list(result["parts_s"]) == list(PARTS) and list(result["shares"]) == list(PARTS)
    assert all(v >= 0 for v in result["parts_s"].values())
    assert sum(result["shares"].values()) == pytest.approx(1.0)
    # one call per episode, the untimed first round included: the default episode really
    # reconstructs, recalibrates, scores and trains the agent (and imitates, if the preset does)
    for part in ("pruning", "reconstruction", "recalibration", "scoring"):
        assert result["calls"][part] == repeats + 1, part
    imitates = imitation_callback(load_preset("ddpg")) is not None
    assert result["calls"]["agent update"] == (repeats + 1) * (2 if imitates else 1)


def test_overhead_without_reconstruction_and_recalibration_skips_them():
    result = episode_overhead(tiny_env(reconstruct=False, recalibrate=False), repeats=1, hp={"batch_size": 8})
    assert "reconstruction" not in result["calls"] and result["parts_s"]["reconstruction"] == 0
    assert result["calls"]["recalibration"] == 2  # called, but without recalibration images: a no-op
    assert result["calls"]["scoring"] == 2 and result["calls"]["agent update"] >= 2


def test_overhead_episode_fails_when_recalibration_fails(monkeypatch):
    def broken(self, model):
        raise RuntimeError("recalibration ran")

    monkeypatch.setattr(Scorer, "recalibrate", broken)
    with pytest.raises(RuntimeError, match="recalibration ran"):
        episode_overhead(tiny_env(), repeats=1, hp={"batch_size": 8})


def test_overhead_refuses_finegrained_environments():
    torch.manual_seed(0)
    net = create_model("resnet20", width=0.25)
    backend = FineGrainedBackend(
        net, Scorer(synthetic(), ScoringConfig(images=16, recalibrate=False)), (1, 3, 32, 32), "tiny"
    )
    with pytest.raises(ValueError, match="channel"):
        episode_overhead(PruningEnv(EnvConfig(target=None), backend=backend), repeats=1)


def test_part_timer_counts_nested_calls_once_and_restores():
    class Work:
        def outer(self) -> int:
            return self.inner() + 1

        def inner(self) -> int:
            return 1

    work = Work()
    with PartTimer() as timer:
        timer.wrap(work, "outer", "outer")
        timer.wrap(work, "inner", "inner")
        assert work.outer() == 2 and work.inner() == 1
    assert timer.calls == {"inner": 2, "outer": 1}
    assert all(v >= 0 for v in timer.seconds.values())
    assert "outer" not in vars(work) and "inner" not in vars(work)  # the class's methods again


def test_physically_pruned_scores_equal_pseudo_pruned_scores():
    env = tiny_env()
    backend, rng = env.backend, np.random.default_rng(0)
    for _ in range(5):
        sparsities = rng.uniform(0, 0.8, env.n).tolist()
        kept = backend.pruner.kept_for(sparsities)
        pseudo = backend.scorer.evaluate(backend.pruner.apply(kept))
        assert backend.score(sparsities) == pseudo
        assert backend.physical


class HardCodedWidth(nn.Module):
    """A forward that hard-codes a channel count: it runs pseudo-pruned, not physically pruned."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.features(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).reshape(-1, 8))


def test_scoring_falls_back_to_pseudo_pruning_when_cutting_fails(caplog):
    env = tiny_env(model=randomize(HardCodedWidth()))
    backend = env.backend
    sparsities = [0.5] * env.n
    pseudo = backend.scorer.evaluate(backend.pruner.apply(backend.pruner.kept_for(sparsities)))
    with caplog.at_level("WARNING"):
        assert backend.score(sparsities) == pseudo
    assert not backend.physical and "pseudo-pruned" in caplog.text


def test_scoring_batch_size_follows_the_threads_and_not_the_accuracy():
    env = tiny_env()
    scorer, model = env.backend.scorer, env.backend.pruner.model
    assert torch.get_num_threads() == 1 and scorer.batch_size == 100  # conftest: one thread
    auto = scorer.accuracy(model)
    scorer.config.batch_size = 7
    assert scorer.batch_size == 7 and scorer.accuracy(model) == auto
