"""Ask/tell searchers (random, CEM), the elite memory and elite imitation, and searches run with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from amc.agents.buffer import EpisodeRewardReplayBuffer
from amc.agents.elite import EliteImitation
from amc.agents.factory import imitation_callback, load_preset, make_agent
from amc.agents.population import SEARCHERS, CEMSearcher, RandomSearcher
from amc.agents.search import resume_search, run_search
from stable_baselines3.common.logger import configure
from test_agents import ACT, OBS, add_episode, env  # noqa: F401  (env is a fixture)
from test_search import load_events, read_rows, tiny_search

TARGET = np.linspace(-0.6, 0.6, 8)


def quadratic_reward(actions: np.ndarray) -> float:
    return -float(np.sum((actions - TARGET) ** 2))


def run_searcher(searcher, episodes: int) -> list[float]:
    rewards = []
    for _ in range(episodes):
        a = searcher.ask()
        rewards.append(quadratic_reward(a))
        searcher.tell(a, rewards[-1])
    return rewards


def test_random_searcher_is_uniform_and_seeded():
    a = RandomSearcher(8, seed=3)
    draws = np.array([a.ask() for _ in range(500)])
    assert draws.shape == (500, 8) and draws.min() >= -1 and draws.max() <= 1
    assert abs(draws.mean()) < 0.05 and draws.std() == pytest.approx(1 / np.sqrt(3), abs=0.03)
    b = RandomSearcher(8, seed=3)
    np.testing.assert_array_equal(draws[0], b.ask())
    assert a.proposal() is None


def test_cem_first_generation_is_uniform_then_converges():
    cem = CEMSearcher(8, seed=0, population=10)
    first = [cem.ask() for _ in range(10)]
    np.testing.assert_array_equal(first[0], RandomSearcher(8, seed=0).ask())
    assert cem.proposal() is None
    rewards = run_searcher(CEMSearcher(8, seed=0, population=10), 200)
    best_random = max(run_searcher(RandomSearcher(8, seed=0), 200))
    assert max(rewards[100:]) > best_random  # it exploits, where random search only samples
    cem = CEMSearcher(8, seed=0, population=10)
    run_searcher(cem, 200)
    assert np.abs(cem.proposal() - TARGET).max() < 0.15
    assert cem.std.min() >= 0.05  # never collapses below min_std


def test_cem_keeps_earlier_elites():
    cem = CEMSearcher(2, seed=0, population=4, elite_frac=0.5)
    for r in (5.0, 4.0, -1.0, -2.0):
        cem.tell(np.array([0.5, 0.5]), r)
    for r in (-3.0, -4.0, -5.0, -6.0):  # a worse generation does not replace them
        cem.tell(np.array([-0.5, -0.5]), r)
    assert [r for r, _ in cem.elites] == [5.0, 4.0]
    np.testing.assert_allclose(cem.proposal(), [0.5, 0.5])


@pytest.mark.parametrize("name", list(SEARCHERS))
def test_searcher_state_round_trip(name):
    a = SEARCHERS[name](8, seed=1)
    run_searcher(a, 33)
    b = SEARCHERS[name](8, seed=99)
    b.load_state(json.loads(json.dumps(a.state())))  # JSON-able
    np.testing.assert_array_equal(run_searcher(a, 30), run_searcher(b, 30))


def test_unknown_searcher_setting_is_refused():
    with pytest.raises(ValueError, match=r"unknown cem setting.*popsize.*known: population"):
        CEMSearcher(4, popsize=3)
    with pytest.raises(ValueError, match=r"unknown random setting.*warmup_episodes"):
        RandomSearcher(4, warmup_episodes=3)


# --- elite memory and imitation ------------------------------------------------------------------


def test_buffer_remembers_the_best_episodes(tmp_path):
    buf = EpisodeRewardReplayBuffer(12, OBS, ACT, device="cpu", elite_episodes=2)
    for k, reward in enumerate([-0.5, -0.1, -0.9, -0.2]):
        add_episode(buf, 4, reward, offset=k)
    assert [r for r, _, _ in buf.elites] == pytest.approx([-0.1, -0.2])
    obs, actions = buf.elite_transitions()
    assert obs.shape == (8, 3) and actions.shape == (8, 1)
    assert obs[0, 0] == pytest.approx(1.0) and obs[4, 0] == pytest.approx(3.0)  # episodes 2 and 4
    np.testing.assert_allclose(actions[:4, 0], [-0.5, -0.4, -0.3, -0.2], atol=1e-6)  # applied actions
    assert buf.size() == 12  # the ring buffer forgot episode 2; the elite memory did not
    buf.save_npz(tmp_path / "b.npz")
    other = EpisodeRewardReplayBuffer(12, OBS, ACT, device="cpu", elite_episodes=2)
    other.load_npz(tmp_path / "b.npz")
    np.testing.assert_array_equal(other.elite_transitions()[0], obs)
    assert [r for r, _, _ in other.elites] == pytest.approx([-0.1, -0.2])


def test_no_elites_by_default():
    buf = EpisodeRewardReplayBuffer(12, OBS, ACT, device="cpu")
    add_episode(buf, 4, -0.3)
    assert buf.elites == []


def test_imitation_pulls_the_actor_towards_the_elites(env):  # noqa: F811
    hp = load_preset("ddpg", overrides={"warmup_episodes": 0, "elite_episodes": 2, "imitation_steps": 50})
    agent, _ = make_agent("ddpg", env, hp, env.n, seed=0)
    buf = agent.replay_buffer
    rng = np.random.default_rng(0)
    for reward in (-0.2, -0.1):
        for t in range(env.n):
            obs = rng.uniform(0, 1, (1, *env.observation_space.shape)).astype(np.float32)
            info = {"applied_action": np.array([0.7], np.float32)}
            buf.add(
                obs, obs, np.zeros((1, 1), np.float32), np.array([reward]), np.array([t == env.n - 1]), [info]
            )
    obs, actions = (torch.as_tensor(x) for x in buf.elite_transitions())
    agent.set_logger(configure(None, []))
    with torch.no_grad():
        before = float(((agent.actor(obs) - actions) ** 2).mean())
    callback = imitation_callback(hp)
    assert isinstance(callback, EliteImitation) and callback.steps == 50
    callback.init_callback(agent)
    callback.on_training_start({}, {})
    callback.on_rollout_end()
    with torch.no_grad():
        after = float(((agent.actor(obs) - actions) ** 2).mean())
    assert after < 0.2 * before


def test_imitation_is_off_without_elites():
    assert imitation_callback(load_preset("ddpg", overrides={"elite_episodes": 0})) is None
    assert imitation_callback(load_preset("ddpg", overrides={"imitation_steps": 0})) is None


# --- searches with the ask/tell searchers --------------------------------------------------------


@pytest.mark.parametrize("name", ["random", "cem"])
def test_search_with_an_ask_tell_searcher(tmp_path, name):
    hp = {"population": 3} if name == "cem" else {}
    config = tiny_search(tmp_path, name, 7, agent=name)
    config.hp = hp
    config.env.selection_images = 32
    result = run_search(config, progress=False)
    run_dir = tmp_path / name
    assert result["episodes"] == 7 and result["warmup"] == 0 and result["agent"] == name
    rows = read_rows(run_dir / "episodes.csv")
    assert [int(r["episode"]) for r in rows] == list(range(1, 8))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["episodes"] == 7 and "searcher" in state and not (run_dir / "agent.pt").exists()
    sources = {f["source"] for f in json.loads((run_dir / "finalists.json").read_text())}
    assert sources == ({"episode", "uniform", "cem mean"} if name == "cem" else {"episode", "uniform"})
    events = load_events(run_dir)
    assert "search/sparsity_heatmap" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("episode/reward")] == list(range(1, 8))
    # Resuming to more episodes continues the same searcher state.
    assert resume_search(run_dir, episodes=9, progress=False)["episodes"] == 9
    assert len(read_rows(run_dir / "episodes.csv")) == 9


def test_every_searcher_gets_the_same_episode_budget(tmp_path):
    counts = {}
    for name in ("ddpg", "random", "cem"):
        config = tiny_search(tmp_path, name, 5, agent=name)
        if name != "ddpg":
            config.hp = {}
        counts[name] = run_search(config, progress=False)["episodes"]
        assert len(read_rows(tmp_path / name / "episodes.csv")) == 5
    assert counts == {"ddpg": 5, "random": 5, "cem": 5}


def test_unknown_agent_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown agent 'ppo'; known agents: ddpg, td3, sac, random, cem"):
        run_search(tiny_search(tmp_path, "x", 2, agent="ppo"), progress=False)
