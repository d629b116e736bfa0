"""Episodes on Ray actors: the optional extra, the run-folder setting, RayVecEnv, and recovery.

The fast tests need no Ray (they hide it if it is installed); the others start a local
2-CPU Ray instance and are marked slow.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import sys
from pathlib import Path

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from amc.agents.parallel import episodes_per_second
from amc.agents.ray_vec import RAY_INSTALL_HINT, RayVecEnv, require_ray
from amc.agents.search import SearchConfig, _config_yaml, resume_search, run_search
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import amc
from amc.plots import MissingExtraError

pytestmark = pytest.mark.usefixtures("shared_sample_cache")  # one decoded sample per module
# Ray's workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
WARMUP = 1


def tiny_env(**overrides) -> EnvConfig:
    """An untrained width-0.25 ResNet-20 on the bundled sample, scored on 32 images (as in test_search)."""
    settings = dict(model="resnet20", checkpoint="none", width=0.25, search_images=32, threads=1)
    return EnvConfig(**{**settings, **overrides})


def tiny_search(runs_dir: Path, name: str, episodes: int, selection: int = 64, **overrides) -> SearchConfig:
    """A tiny search whose final selection re-scores on ``selection`` images."""
    hp = {"warmup_episodes": WARMUP, "batch_size": 8} if overrides.get("agent", "ddpg") == "ddpg" else {}
    env = tiny_env(selection_images=selection)
    return SearchConfig(env=env, episodes=episodes, hp=hp, runs_dir=str(runs_dir), name=name, **overrides)


def seeded_env(config: EnvConfig) -> PruningEnv:
    """The environment with the same untrained network in every process (checkpoint "none")."""
    torch.manual_seed(0)
    return PruningEnv(config)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_ray(monkeypatch):
    """Make ``import ray`` fail, as without the extra."""
    monkeypatch.setitem(sys.modules, "ray", None)


# --- without Ray ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_ray")
def test_missing_extra_is_a_one_line_error_naming_the_install_command(tmp_path):
    with pytest.raises(MissingExtraError) as caught:
        require_ray()
    message = str(caught.value)
    assert RAY_INSTALL_HINT in message and "\n" not in message
    assert RAY_INSTALL_HINT == "pip install 'amc-pruner[ray]'"
    with pytest.raises(MissingExtraError, match=r"amc-pruner\[ray\]"):
        RayVecEnv([lambda: gym.make("CartPole-v1")])
    # The search refuses at once: no model is loaded and no run folder is left behind.
    with pytest.raises(MissingExtraError, match=r"amc-pruner\[ray\]"):
        run_search(tiny_search(tmp_path, "run", 2, ray="local", envs=2), progress=False)
    assert not (tmp_path / "run").exists()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with pytest.raises(MissingExtraError, match=r"amc-pruner\[ray\]"):
        amc.search(model, torch.randn(1, 3, 8, 8), lambda m: 1.0, ray="local", run_dir=tmp_path / "api")
    assert not (tmp_path / "api").exists()


@pytest.mark.usefixtures("no_ray")
def test_the_ray_option_of_amc_search(tmp_path, capsys):
    from amc.cli import main

    argv = ["search", "--model", "resnet20", "--checkpoint", "none", "--width", "0.25", "--threads", "1"]
    argv += ["--envs", "2", "--runs-dir", str(tmp_path), "--name", "run", "--no-progress"]
    assert main([*argv, "--ray"]) != 0  # bare --ray: a local instance, which needs the extra
    assert "pip install 'amc-pruner[ray]'" in capsys.readouterr().err
    assert main([*argv, "--ray", "head:6379"]) != 0
    assert "amc-pruner[ray]" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_ray_setting_round_trips_through_config_yaml():
    for ray in (None, "", "local", "auto", "ray://head:10001"):
        config = SearchConfig(env=tiny_env(), ray=ray, envs=4)
        again = SearchConfig.from_dict(yaml.safe_load(_config_yaml(config)))
        assert again == config and again.ray == ray
    older = yaml.safe_load(_config_yaml(SearchConfig()))
    del older["ray"]  # a run folder written before the setting existed
    assert SearchConfig.from_dict(older).ray is None
    with pytest.raises(ValueError, match="ray must be"):
        SearchConfig(ray=2)


@pytest.mark.usefixtures("no_ray")
def test_resume_keeps_the_runs_ray_setting_unless_told_otherwise(tmp_path):
    run_search(tiny_search(tmp_path, "run", 2, selection=0, agent="random"), progress=False)
    run_dir = tmp_path / "run"
    path = run_dir / "config.yaml"
    assert yaml.safe_load(path.read_text())["ray"] is None
    before = path.read_text()
    with pytest.raises(MissingExtraError):  # moving the rest onto Ray needs Ray
        resume_search(run_dir, episodes=3, progress=False, ray="local")
    assert path.read_text() == before
    # A run started on a cluster resumes there (its own setting)...
    path.write_text(before.replace("ray: null", "ray: auto"))
    with pytest.raises(MissingExtraError):
        resume_search(run_dir, episodes=3, progress=False)
    # ...or, told so, without Ray; the choice is written to config.yaml.
    assert resume_search(run_dir, episodes=4, progress=False, ray=None)["episodes"] == 4
    config = yaml.safe_load(path.read_text())
    assert config["ray"] is None and config["episodes"] == 4
    assert [int(r["episode"]) for r in read_rows(run_dir / "episodes.csv")] == [1, 2, 3, 4]


# --- on a local Ray instance ---------------------------------------------------------------------


@pytest.mark.slow
def test_ray_vec_env_steps_like_a_local_env_and_replays_after_a_kill(caplog):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    fns = [functools.partial(seeded_env, tiny_env())] * 2
    vec = RayVecEnv(fns, num_cpus_per_actor=1)
    ref = DummyVecEnv(fns)  # the same environments in this process
    try:
        assert vec.started_ray and ray.cluster_resources()["CPU"] == 2
        assert vec.num_envs == 2 and vec.observation_space == ref.observation_space
        n = vec.get_attr("n")[0]
        assert vec.get_attr("n") == [n, n] and vec.has_attr("units") and not vec.has_attr("nothing")
        assert vec.env_is_wrapped(gym.Wrapper) == [False, False]
        assert vec.env_method("to_sparsity", 1.0) == ref.env_method("to_sparsity", 1.0)
        vec.set_attr("marker", 7, indices=[0])  # kept, and set again on a replacement actor
        vec.seed(5), ref.seed(5)
        np.testing.assert_array_equal(vec.reset(), ref.reset())
        pids = vec.actor_pids()
        actions = np.random.default_rng(0).uniform(-1, 1, (n + n // 2, 2, 1)).astype(np.float32)
        finished = 0
        with caplog.at_level(logging.WARNING, logger="amc.agents.ray_vec"):
            for t, action in enumerate(actions):
                if t == 5:  # mid-episode: the next step finds the actor dead
                    ray.kill(vec.actors[0], no_restart=False)
                obs, rewards, dones, infos = vec.step(action)
                ref_obs, ref_rewards, ref_dones, ref_infos = ref.step(action)
                np.testing.assert_array_equal(obs, ref_obs)
                np.testing.assert_array_equal(dones, ref_dones)
                np.testing.assert_allclose(rewards, ref_rewards, rtol=1e-6)
                for info, ref_info in zip(infos, ref_infos, strict=True):
                    assert info["TimeLimit.truncated"] is False
                    assert ("terminal_observation" in info) == ("terminal_observation" in ref_info)
                    if "terminal_observation" in info:
                        finished += 1
                        np.testing.assert_array_equal(
                            info["terminal_observation"], ref_info["terminal_observation"]
                        )
                        assert info["sparsities"] == ref_info["sparsities"]
                        assert info["accuracy"] == pytest.approx(ref_info["accuracy"], rel=1e-6)
        assert finished == 2  # each environment finished its first episode once
        assert vec.restarts == 1 and "replaying its episode" in caplog.text and "differ" not in caplog.text
        new_pids = vec.actor_pids()
        assert new_pids[0] != pids[0] and new_pids[1] == pids[1]
        assert vec.get_attr("marker", indices=[0]) == [7]
    finally:
        vec.close()
        ref.close()
    assert not ray.is_initialized()  # the instance it started is shut down


def load_scalars(run_dir: Path, tag: str) -> list:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(tag)


@pytest.mark.slow
def test_ddpg_search_on_ray_actors_records_each_episode_once_and_resumes(tmp_path):
    ray = pytest.importorskip("ray")
    # A Ray session the caller opened is joined and left open (one start-up for both runs).
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        config = tiny_search(tmp_path, "run", 2, envs=2, ray="local")
        result = run_search(config, progress=False, env_factory=seeded_env)
        run_dir = tmp_path / "run"
        assert result["episodes"] == 2 and ray.is_initialized()
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["ray"] == "local"
        # Resumed with its own settings (Ray, 2 actors) to 4 episodes.
        result = resume_search(run_dir, episodes=4, progress=False, env_factory=seeded_env)
        assert result["episodes"] == 4 and ray.is_initialized()
    finally:
        ray.shutdown()
    rows = read_rows(run_dir / "episodes.csv")
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["episodes"] == 4 and state["num_timesteps"] == 4 * 12
    with np.load(run_dir / "buffer.npz") as z:
        assert tuple(z["meta"][:3]) == (48, 0, 4)
    rewards = load_scalars(run_dir, "episode/reward")
    assert [e.step for e in rewards] == [1, 2, 3, 4]
    np.testing.assert_allclose([e.value for e in rewards], [float(r["reward"]) for r in rows], atol=1e-5)
    final = json.loads((run_dir / "finalists.json").read_text())[0]
    policy = amc.Policy.load(run_dir / "best_policy.json")
    assert policy.metrics["source"] == final["source"]
    assert (run_dir / "agent.pt").is_file()


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def minus_loss(images: torch.Tensor, labels: torch.Tensor, marker: str, driver: int, crash_at: int):
    """Minus the cross-entropy; its ``crash_at``-th call in a Ray actor kills the actor (once)."""
    calls: dict[int, int] = {}  # per process (the actors get a copy of the driver's counts)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        pid = os.getpid()
        calls[pid] = calls.get(pid, 0) + 1
        if pid != driver and calls[pid] == crash_at:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass  # crashed once already: this replica lives
            else:
                os.close(fd)
                os._exit(1)
        return -float(nn.functional.cross_entropy(model.eval()(images), labels))

    return evaluate


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [2, 3], ids=["first-episode", "after-auto-reset"])
def test_an_actor_that_dies_mid_search_costs_no_episode_and_counts_none_twice(tmp_path, caplog, crash_at):
    """``amc.search`` on Ray with one actor killing itself while scoring: the same episodes as in one env.

    The first episode of an ask/tell search starts without a reset; the second after the
    actor's auto-reset.
    """
    ray = pytest.importorskip("ray")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = UserNet()
    images, labels = torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    marker = tmp_path / "crashed"
    # Calls in an actor: 1 is the dense score, 2 its first episode, 3 its second one.
    evaluate = minus_loss(images, labels, str(marker), os.getpid(), crash_at)
    settings = dict(agent="random", episodes=6, calibration=images[:32], progress=False)
    with caplog.at_level(logging.WARNING, logger="amc.agents.ray_vec"):
        on_ray = amc.search(
            model, images[:1], evaluate, envs=2, ray="local", run_dir=tmp_path / "ray", **settings
        )
    assert marker.is_file() and "replaying its episode" in caplog.text  # an actor did die
    assert "differ" not in caplog.text  # the replay retraced the episode
    assert not ray.is_initialized()
    local = amc.search(model, images[:1], evaluate, run_dir=tmp_path / "local", **settings)
    assert on_ray.episodes == local.episodes == 6
    rows, expected = read_rows(on_ray.run_dir / "episodes.csv"), read_rows(local.run_dir / "episodes.csv")
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == expected  # every episode once, none lost, none twice, in the same order
    assert on_ray.policy.sparsities == local.policy.sparsities
    assert json.loads((on_ray.run_dir / "state.json").read_text())["episodes"] == 6
    rewards = load_scalars(on_ray.run_dir, "episode/reward")
    assert [e.step for e in rewards] == [1, 2, 3, 4, 5, 6]


# --- the measurement -----------------------------------------------------------------------------


@pytest.mark.parametrize("ray", [None, pytest.param("local", marks=pytest.mark.slow)])
def test_episodes_per_second_reports_its_episodes_and_cpu_time(ray):
    if ray is not None:
        pytest.importorskip("ray")
    stats: dict = {}
    rate = episodes_per_second(tiny_env(), 1, 2, ray=ray, stats=stats)
    assert stats["episodes"] == 3 and rate == pytest.approx(stats["episodes"] / stats["seconds"])
    assert stats["env_cpu_s"] > 0 and stats["driver_cpu_s"] > 0
    if ray is not None:  # the work is in the actor, not in this process
        assert stats["driver_cpu_s"] < stats["env_cpu_s"]
