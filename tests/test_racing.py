"""Racing: an episode stops scoring once it cannot join the search's finalists."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from amc.agents.search import SearchConfig, resume_search, run_search
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from torch import nn

from amc.scoring import Race, Scorer, ScoringConfig

pytestmark = pytest.mark.usefixtures("shared_sample_cache")


def test_upper_bound_counts_the_scored_images_and_widens_with_few():
    race = Race(lambda accuracy: True)
    assert race.upper_bound(100, 100, 1000) == 100.0  # every image right so far: anything is possible
    assert race.upper_bound(0, 900, 1000) < 2.0  # nine tenths wrong: the rest cannot save it
    narrow, wide = race.upper_bound(400, 800, 1000), race.upper_bound(50, 100, 1000)
    assert 50.0 < narrow < wide  # same running accuracy, fewer images seen: a wider bound
    assert Race(lambda accuracy: True, z=1.0).upper_bound(50, 100, 1000) < wide


def test_a_race_is_never_lost_on_all_the_images():
    race = Race(lambda accuracy: False)
    assert race.hopeless(10, 100, 1000) and not race.hopeless(10, 1000, 1000)


class Constant(nn.Module):
    """Predicts class 0 for every image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()


def test_scorer_stops_a_hopeless_episode_after_one_slice(sample_dataset):
    scorer = Scorer(sample_dataset, ScoringConfig(images=400, recalibrate=False))
    labels = scorer.sets["search"][1]
    full = scorer.accuracy(Constant())
    assert full == pytest.approx(100.0 * (labels == 0).float().mean().item())

    race = Race(lambda accuracy: True, slice=100)  # every bar reachable: scored in full
    assert scorer.accuracy(Constant(), race=race) == full and race.scored is None

    race = Race(lambda accuracy: accuracy > 50.0, slice=100)  # 10 % accuracy cannot reach 50 %
    partial = scorer.accuracy(Constant(), race=race)
    assert race.scored == 100
    assert partial == pytest.approx(100.0 * (labels[:100] == 0).float().mean().item())


def test_env_races_only_with_a_bar_and_reports_the_images_scored():
    env = PruningEnv(
        EnvConfig(model="resnet20", checkpoint="none", width=0.25, search_images=32, race_slice=8)
    )

    def episode() -> dict:
        env.reset(seed=0)
        for _ in range(env.n):
            _, _, done, _, info = env.step(np.array([0.0], dtype=np.float32))
        assert done
        return info

    assert episode()["scored_images"] is None
    env.race_bar = 1.0  # a reward no accuracy reaches
    raced = episode()
    assert raced["scored_images"] == 8 and raced["reward"] < 1.0
    env.race_bar = -2.0  # every reward beats it
    assert episode()["scored_images"] is None


def racing_search(runs_dir: Path, name: str, race_slice: int, episodes: int = 16) -> SearchConfig:
    """Random search with the shipped ResNet-20 on 400 sample images: racing has something to stop."""
    env = EnvConfig(search_images=400, selection_images=400, race_slice=race_slice, threads=1)
    return SearchConfig(
        env=env, agent="random", episodes=episodes, finalists=4, runs_dir=str(runs_dir), name=name
    )


def rows(run: Path) -> list[dict]:
    with (run / "episodes.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def raced_and_full(tmp_path_factory) -> tuple[Path, Path]:
    runs = tmp_path_factory.mktemp("racing")
    raced = run_search(racing_search(runs, "raced", 100), progress=False)
    full = run_search(racing_search(runs, "full", 0), progress=False)
    return Path(raced["run_dir"]), Path(full["run_dir"])


def test_racing_stops_episodes_below_the_finalists_and_keeps_the_finalists(raced_and_full):
    raced, full = raced_and_full
    raced_rows, full_rows = rows(raced), rows(full)
    stopped = [r for r in raced_rows if r["scored_images"]]
    assert stopped, "no episode was stopped early"
    assert json.loads((raced / "state.json").read_text())["raced"] == len(stopped)
    assert all(r["scored_images"] == "" for r in full_rows)
    finalists = 4
    for i, (a, b) in enumerate(zip(raced_rows, full_rows, strict=True)):
        sparsities = [k for k in a if "conv" in k or k == "fc"]
        assert [a[k] for k in sparsities] == [b[k] for k in sparsities]  # the same random episodes
        if a["scored_images"]:
            assert int(a["scored_images"]) < 400 and i >= finalists  # never before the finalists are in
            bar = sorted(float(r["reward"]) for r in full_rows[:i])[-finalists]
            assert float(b["reward"]) <= bar  # its full score would not have made the finalists
        else:
            assert a == b
    # Racing changed no decision: the same finalists and the same final policy.
    assert json.loads((raced / "finalists.json").read_text()) == json.loads(
        (full / "finalists.json").read_text()
    )
    assert (raced / "best_policy.json").read_text() == (full / "best_policy.json").read_text()


def test_a_resumed_race_uses_the_restored_finalists(tmp_path, raced_and_full):
    raced, _ = raced_and_full
    part = run_search(racing_search(tmp_path, "part", 100, episodes=8), progress=False)
    resumed = resume_search(part["run_dir"], episodes=16, progress=False)
    assert resumed["raced"] == json.loads((raced / "state.json").read_text())["raced"]
    assert rows(Path(resumed["run_dir"])) == rows(raced)
