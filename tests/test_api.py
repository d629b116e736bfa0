"""Pruning a user's own model from Python: amc.search, amc.prune, the evaluator, gym.make."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import amc
from amc.cost import count_thop
from amc.policy import PolicyError
from amc.scoring import EvaluatorScorer, calibration_batch


class SqueezeExcite(nn.Module):
    """A squeeze-excitation gate, written the usual way."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class UserNet(nn.Module):
    """A model that is not in the zoo: conv stem, ResNeXt-style grouped block with an SE gate, MLP head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            SqueezeExcite(32),
        )
        self.conv = nn.Sequential(
            nn.Conv2d(32, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=8, bias=False),  # grouped, 8 channels per group
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 32, 1, bias=False),
            nn.BatchNorm2d(32),
        )
        self.head = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, num_classes))

    def forward(self, x):
        x = self.block(self.stem(x))
        x = torch.relu(x + self.conv(x))
        return self.head(x.mean((2, 3)))


def loader(n: int, size: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return DataLoader(TensorDataset(images, labels), batch_size=32)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_search_and_prune_a_user_model_from_python(tmp_path):
    torch.manual_seed(0)
    model, train, val = UserNet(), loader(96, 48, 0), loader(64, 48, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = amc.search(
        model,
        torch.randn(1, 3, 48, 48),
        amc.classification_evaluator(val, max_images=48),
        target="flops=0.5",
        selection=amc.classification_evaluator(loader(64, 48, 2)),
        calibration=train,
        agent="random",
        episodes=6,
        run_dir=tmp_path / "run",
        progress=False,
    )
    small = amc.prune(model, result.policy, calibration=train)

    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched
    assert result.run_dir == tmp_path / "run" and result.episodes == 6
    assert {"config.yaml", "episodes.csv", "best_policy.json", "finalists.json"} <= {
        p.name for p in result.run_dir.iterdir()
    }
    assert result.policy.input_shape == [1, 3, 48, 48]
    assert small(torch.randn(2, 3, 48, 48)).shape == (2, 10)
    macs, _ = count_thop(small, (1, 3, 48, 48))
    dense, _ = count_thop(model, (1, 3, 48, 48))
    assert macs / dense <= 0.5 + 1e-9
    assert macs / dense == pytest.approx(result.policy.ratios()["flops_ratio"])
    assert {"conv.0", "conv.3", "block.3.fc1"} <= set(
        result.policy.sparsities
    )  # grouped conv and SE gate prunable
    grouped = small.conv[3]
    assert grouped.groups == 8 and grouped.in_channels % 8 == 0 and grouped.out_channels % 8 == 0


def test_a_killed_python_search_resumes_through_the_same_call(tmp_path):
    torch.manual_seed(0)
    model, data = UserNet(), loader(64, 32, 0)
    args = (model, torch.randn(1, 3, 32, 32), amc.classification_evaluator(data))
    kwargs = dict(agent="random", calibration=data, run_dir=tmp_path / "run", progress=False)
    amc.search(*args, episodes=3, **kwargs)
    rows = (tmp_path / "run" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 4
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["episodes"] == 3
    more = amc.search(*args, episodes=5, **kwargs)
    assert more.episodes == 5
    assert (tmp_path / "run" / "episodes.csv").read_text().splitlines()[:4] == rows
    with pytest.raises(ValueError, match=r"amc\.search\(model"):
        from amc.agents.search import resume_search

        resume_search(tmp_path / "run", 6, progress=False)


def test_gym_make_takes_a_model_object():
    torch.manual_seed(0)
    data = loader(32, 32, 0)
    env = gym.make(
        "amc/ChannelPruning-v0",
        model=UserNet(),
        example_inputs=torch.randn(1, 3, 32, 32),
        evaluate=amc.classification_evaluator(data),
        target=0.6,
    )
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(env.action_space.sample())
    assert info["flops_ratio"] <= 0.6 + 1e-9 and reward <= 0
    with pytest.raises(ValueError, match="example_inputs"):
        gym.make("amc/ChannelPruning-v0", model=UserNet())


def test_scores_are_normalised_against_the_dense_model():
    model = UserNet()
    values = iter([-0.5, -0.6, 2.0, 1.5])  # minus a loss, then a higher-is-better metric
    scorer = EvaluatorScorer(model, lambda m: next(values))
    assert scorer.dense["search"] == -0.5
    assert scorer.evaluate(model) == pytest.approx(80.0)  # 20 % worse than dense
    assert not scorer.has_selection
    scorer = EvaluatorScorer(model, lambda m: next(values))
    assert scorer.evaluate(model) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="dense value is not 0"):
        EvaluatorScorer(model, lambda m: 0.0)


def test_calibration_takes_tensors_and_loaders():
    data = loader(70, 8, 0)
    assert calibration_batch(data, 50).shape == (50, 3, 8, 8)
    assert calibration_batch(torch.ones(9, 3, 8, 8), 4).shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="no inputs"):
        calibration_batch([], 4)


def test_prune_needs_calibration_for_a_reconstructing_policy(tmp_path):
    torch.manual_seed(0)
    model, data = UserNet(), loader(32, 32, 0)
    result = amc.search(
        model, torch.randn(1, 3, 32, 32), amc.classification_evaluator(data), calibration=data,
        agent="random", episodes=2, run_dir=tmp_path / "r", progress=False,
    )  # fmt: skip
    with pytest.raises(PolicyError, match="calibration"):
        amc.prune(model, result.run_dir / "best_policy.json")
    assert amc.prune(model, result.run_dir / "best_policy.json", calibration=data)(
        torch.randn(1, 3, 32, 32)
    ).shape == (1, 10)


def user_net(num_classes: int = 10) -> nn.Module:
    """A builder that takes only ``num_classes``, as user code usually does."""
    return UserNet(num_classes)


def test_the_same_model_from_the_cli_with_a_num_classes_only_builder(tmp_path, capsys):
    from amc.cli import main

    model = ["--model", "test_api:user_net", "--checkpoint", "none"]
    search = ["search", *model, "--agent", "random", "--episodes", "3", "--search-images", "64"]
    search += ["--selection-images", "64", "--runs-dir", str(tmp_path), "--name", "cli", "--no-progress"]
    assert main(search) == 0
    policy = tmp_path / "cli" / "best_policy.json"
    assert main(["apply", *model, "--policy", str(policy), "--out", str(tmp_path / "applied")]) == 0
    out = capsys.readouterr().out
    assert "best policy" in out and (tmp_path / "applied" / "pruned.pt").is_file()
