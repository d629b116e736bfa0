"""Agent parts: exploration noise, the episode-reward replay buffer, presets, ScaledAdam, make_agent."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from amc.agents.buffer import EpisodeRewardReplayBuffer
from amc.agents.factory import AMCPolicy, ScaledAdam, load_preset, make_agent, parse_overrides
from amc.agents.noise import DecayingTruncatedNormalNoise
from amc.envs.pruning_env import PruningEnv
from stable_baselines3 import DDPG, SAC, TD3

from amc.backends import ChannelBackend
from amc.data import Dataset, ImageArrays
from amc.models import create_model
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer, ScoringConfig

# --- DecayingTruncatedNormalNoise ----------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "bound"), [(0.5, 2.0), (0.2, 1.0), (1.0, 0.5)])
def test_noise_samples_stay_within_the_truncation(sigma, bound):
    noise = DecayingTruncatedNormalNoise(sigma=sigma, bound=bound, seed=0)
    samples = np.concatenate([noise() for _ in range(4000)])
    assert samples.dtype == np.float32
    assert np.all(np.abs(samples) <= bound * sigma + 1e-6)
    assert abs(samples.mean()) < 0.05 * sigma
    assert samples.std() > 0.25 * sigma * min(bound, 1.0)  # really random, not constant
    # Samples reach close to the truncation, so it is not narrower than asked.
    assert np.abs(samples).max() > 0.9 * bound * sigma


def test_noise_shape_and_seed():
    one = DecayingTruncatedNormalNoise(seed=1)
    assert one().shape == (1,)
    many = DecayingTruncatedNormalNoise(seed=1, n_envs=3)
    x = many()
    assert x.shape == (3, 1) and x.dtype == np.float32
    assert len(set(x.ravel().tolist())) == 3  # an independent sample per environment
    a, b = DecayingTruncatedNormalNoise(seed=5), DecayingTruncatedNormalNoise(seed=5)
    np.testing.assert_array_equal([a() for _ in range(10)], [b() for _ in range(10)])
    wide = DecayingTruncatedNormalNoise(size=2, n_envs=4, seed=0)
    assert wide().shape == (4, 2)


def test_noise_sigma_constant_during_warmup_then_decays():
    noise = DecayingTruncatedNormalNoise(sigma=0.5, decay=0.9, warmup_episodes=3, seed=0)
    for _ in range(3):
        noise.reset()
        assert noise.sigma == 0.5
    for k in range(1, 5):
        noise.reset()
        assert noise.sigma == pytest.approx(0.5 * 0.9**k)
    assert noise.episodes == 7
    # Samples shrink with sigma.
    assert np.all(np.abs(np.concatenate([noise() for _ in range(500)])) <= 2.0 * noise.sigma + 1e-6)


def test_noise_state_round_trip():
    noise = DecayingTruncatedNormalNoise(sigma=0.4, decay=0.8, warmup_episodes=1, seed=0)
    for _ in range(4):
        noise.reset()
    state = json.loads(json.dumps(noise.state()))  # JSON-able
    assert state == {"sigma": pytest.approx(0.4 * 0.8**3), "episodes": 4}
    other = DecayingTruncatedNormalNoise(sigma=0.4, decay=0.8, warmup_episodes=1, seed=0)
    other.load_state(state)
    assert other.sigma == noise.sigma and other.episodes == noise.episodes
    noise.reset()
    other.reset()
    assert other.state() == noise.state()
    assert "sigma=" in repr(other)


# --- EpisodeRewardReplayBuffer -------------------------------------------------------------------

OBS = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def make_buffer(n_envs: int = 1, alpha: float = 0.5, size: int = 50) -> EpisodeRewardReplayBuffer:
    return EpisodeRewardReplayBuffer(size, OBS, ACT, device="cpu", n_envs=n_envs, baseline_alpha=alpha)


def add_episode(buf, steps: int, final_reward: float, offset: float = 0.0) -> list[float]:
    """Add one episode of ``steps`` transitions (one environment); returns the applied actions."""
    applied = []
    for t in range(steps):
        obs = np.full((1, 3), offset + t / 10, dtype=np.float32)
        nxt = np.full((1, 3), offset + (t + 1) / 10, dtype=np.float32)
        proposed = np.full((1, 1), 0.9, dtype=np.float32)  # what the actor asked for
        a = np.array([-0.5 + 0.1 * t], dtype=np.float32)  # what the environment applied
        applied.append(float(a[0]))
        last = t == steps - 1
        reward = np.array([final_reward if last else 0.0], dtype=np.float32)
        buf.add(obs, nxt, proposed, reward, np.array([last]), [{"applied_action": a}])
    return applied


def test_buffer_holds_transitions_until_the_episode_ends():
    buf = make_buffer()
    for t in range(3):
        buf.add(
            np.zeros((1, 3), np.float32),
            np.zeros((1, 3), np.float32),
            np.zeros((1, 1), np.float32),
            np.zeros(1, np.float32),
            np.array([False]),
            [{"applied_action": np.array([0.1 * t], np.float32)}],
        )
        assert buf.size() == 0 and buf.pos == 0
        assert len(buf.pending[0]) == t + 1
    buf.add(
        np.zeros((1, 3), np.float32),
        np.zeros((1, 3), np.float32),
        np.zeros((1, 1), np.float32),
        np.array([-0.3], np.float32),
        np.array([True]),
        [{"applied_action": np.array([0.3], np.float32)}],
    )
    assert buf.size() == 4 and buf.pending[0] == [] and buf.episodes == 1


def test_buffer_stores_baseline_subtracted_rewards_applied_actions_and_dones():
    buf = make_buffer(alpha=0.5)
    applied = add_episode(buf, 4, final_reward=-0.4)
    assert buf.baseline == pytest.approx(-0.4)
    np.testing.assert_array_equal(buf.rewards[:4, 0], np.zeros(4))  # first episode: advantage 0
    np.testing.assert_allclose(buf.actions[:4, 0, 0], applied)  # not the proposed 0.9
    np.testing.assert_array_equal(buf.dones[:4, 0], [0, 0, 0, 1])
    np.testing.assert_allclose(buf.observations[:4, 0, 0], [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    np.testing.assert_allclose(buf.next_observations[:4, 0, 0], [0.1, 0.2, 0.3, 0.4], atol=1e-7)

    add_episode(buf, 4, final_reward=-0.2, offset=1.0)
    # baseline = 0.5 * (-0.4) + 0.5 * (-0.2) = -0.3, advantage = -0.2 - (-0.3) = 0.1
    assert buf.baseline == pytest.approx(-0.3)
    np.testing.assert_allclose(buf.rewards[4:8, 0], [0.1] * 4, rtol=1e-6)
    np.testing.assert_array_equal(buf.dones[4:8, 0], [0, 0, 0, 1])
    assert buf.pos == 8 and buf.episodes == 2

    add_episode(buf, 4, final_reward=-0.5, offset=2.0)
    # baseline = 0.5 * (-0.3) + 0.5 * (-0.5) = -0.4, advantage = -0.1
    np.testing.assert_allclose(buf.rewards[8:12, 0], [-0.1] * 4, rtol=1e-6)


def test_buffer_with_other_alpha():
    buf = make_buffer(alpha=0.9)
    add_episode(buf, 2, final_reward=1.0)
    add_episode(buf, 2, final_reward=2.0)
    # baseline = 0.9 * 1 + 0.1 * 2 = 1.1, advantage 0.9
    np.testing.assert_allclose(buf.rewards[2:4, 0], [0.9, 0.9], rtol=1e-6)


def test_buffer_falls_back_to_the_proposed_action_without_info():
    buf = make_buffer()
    for t in range(2):
        buf.add(
            np.zeros((1, 3), np.float32),
            np.zeros((1, 3), np.float32),
            np.array([[0.25 * (t + 1)]], np.float32),
            np.zeros(1, np.float32),
            np.array([t == 1]),
            [{}],
        )
    np.testing.assert_allclose(buf.actions[:2, 0, 0], [0.25, 0.5])


def test_buffer_keeps_episodes_of_parallel_envs_apart():
    buf = make_buffer(n_envs=2)
    for t in range(3):
        infos = [
            {"applied_action": np.array([0.1 * t], np.float32)},
            {"applied_action": np.array([-0.1 * t])},
        ]
        obs = np.array([[t, 0, 0], [10 + t, 0, 0]], np.float32)
        done = np.array([t == 2, False])
        buf.add(obs, obs + 1, np.zeros((2, 1), np.float32), np.array([-0.5, 0.0]), done, infos)
    assert buf.size() == 3 and len(buf.pending[1]) == 3
    np.testing.assert_array_equal(buf.observations[:3, 0, 0], [0, 1, 2])
    obs = np.array([[0, 0, 0], [13, 0, 0]], np.float32)
    buf.add(
        obs,
        obs + 1,
        np.zeros((2, 1), np.float32),
        np.array([0.0, -0.1]),
        np.array([False, True]),
        [{"applied_action": np.array([0.7])}, {"applied_action": np.array([-0.3])}],
    )
    assert buf.size() == 7 and buf.episodes == 2
    np.testing.assert_array_equal(buf.observations[3:7, 0, 0], [10, 11, 12, 13])
    np.testing.assert_allclose(buf.actions[3:7, 0, 0], [0.0, -0.1, -0.2, -0.3], atol=1e-7)
    # baseline after env 0's episode: -0.5; after env 1's: 0.5*-0.5 + 0.5*-0.1 = -0.3 -> advantage 0.2
    np.testing.assert_allclose(buf.rewards[3:7, 0], [0.2] * 4, rtol=1e-6)
    assert len(buf.pending[0]) == 1  # env 0's next episode is still in progress


def test_buffer_npz_round_trip(tmp_path):
    buf = make_buffer(alpha=0.5, size=10)
    for k in range(3):  # 12 transitions in a buffer of 10: wraps around
        add_episode(buf, 4, final_reward=-0.1 * k, offset=k)
    assert buf.full
    path = tmp_path / "buffer.npz"
    buf.save_npz(path)
    assert path.is_file() and not list(tmp_path.glob("*.tmp*"))
    other = make_buffer(alpha=0.5, size=10)
    other.load_npz(path)
    for name in EpisodeRewardReplayBuffer._ARRAYS:
        np.testing.assert_array_equal(getattr(other, name), getattr(buf, name), err_msg=name)
    assert (other.pos, other.full, other.episodes) == (buf.pos, buf.full, buf.episodes)
    assert other.baseline == buf.baseline
    # Sampling works on the loaded buffer and the next episode gets the same advantage in both.
    assert other.sample(4).observations.shape == (4, 3)
    add_episode(buf, 2, final_reward=0.3)
    add_episode(other, 2, final_reward=0.3)
    np.testing.assert_array_equal(other.rewards, buf.rewards)


def test_empty_buffer_npz_round_trip(tmp_path):
    buf = make_buffer()
    buf.save_npz(tmp_path / "b.npz")
    other = make_buffer()
    other.load_npz(tmp_path / "b.npz")
    assert other.baseline is None and other.pos == 0 and other.episodes == 0


# --- presets and overrides -----------------------------------------------------------------------


def test_load_preset_merges_default_and_overrides():
    hp = load_preset("ddpg")
    assert hp["learning_rate_actor"] == 1e-4 and hp["learning_rate_critic"] == 1e-3
    assert hp["warmup_episodes"] == 100 and hp["noise_sigma"] == 0.5 and hp["batch_size"] == 64
    hp = load_preset("ddpg", "resnet20", {"batch_size": 8, "noise_decay": 0.9, "extra": 1})
    assert hp["batch_size"] == 8 and hp["noise_decay"] == 0.9 and hp["extra"] == 1
    assert hp["tau"] == 0.01  # untouched defaults stay
    assert load_preset("td3")["policy_delay"] == 2
    assert "noise_sigma" not in load_preset("sac")


def test_load_preset_rejects_unknown_agents():
    with pytest.raises(ValueError, match="unknown agent 'ppo'; known agents: ddpg, td3, sac"):
        load_preset("ppo")


def test_parse_overrides():
    assert parse_overrides(["a=1", "b=[1,2]"]) == {"a": 1, "b": [1, 2]}
    assert parse_overrides(["lr=1e-3", " flag = true", "name=x=y", "s=abc"]) == {
        "lr": 1e-3,
        "flag": True,
        "name": "x=y",
        "s": "abc",
    }
    assert parse_overrides([]) == {}
    tau = parse_overrides(["tau=5e-3"])["tau"]  # YAML 1.1 alone would give the string '5e-3'
    assert isinstance(tau, float) and tau == 0.005
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["novalue"])


# --- ScaledAdam ----------------------------------------------------------------------------------


def test_scaled_adam_moves_like_adam_with_a_scaled_lr():
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    scaled = ScaledAdam(a.parameters(), scale=10.0, lr=1e-4)
    plain = torch.optim.Adam(b.parameters(), lr=1e-3)
    x = torch.randn(16, 5)
    for _ in range(5):
        for model, opt in ((a, scaled), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert scaled.param_groups[0]["lr"] == 1e-4  # the scheduled rate is left as it was
    assert scaled.scale == 10.0
    # ... and not like Adam at the unscaled rate.
    torch.manual_seed(0)
    c = torch.nn.Linear(5, 3)
    unscaled = torch.optim.Adam(c.parameters(), lr=1e-4)
    unscaled.zero_grad()
    c(x).pow(2).mean().backward()
    unscaled.step()
    assert not torch.allclose(c.weight, a.weight)


# --- make_agent ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env() -> PruningEnv:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3)).astype(np.uint8)
    ds = Dataset(
        "synthetic", list("abcd"), {"search": ImageArrays(images, np.arange(40) % 4)}, (0.5,) * 3, (0.25,) * 3
    )
    torch.manual_seed(0)
    backend = ChannelBackend(
        ChannelPruner(create_model("resnet20", 4, 0.25)),
        Scorer(ds, ScoringConfig(images=16, recalibrate=False)),
    )
    return PruningEnv(backend=backend, target=0.5)


@pytest.mark.parametrize(("algo", "cls"), [("ddpg", DDPG), ("td3", TD3), ("sac", SAC)])
def test_make_agent_builds_every_algorithm(env, algo, cls):
    hp = load_preset(algo, overrides={"warmup_episodes": 3, "batch_size": 8})
    agent, noise = make_agent(algo, env, hp, env.n, seed=1)
    assert isinstance(agent, cls)
    assert agent.learning_starts == 3 * env.n
    assert agent.batch_size == 8 and agent.gamma == 1.0 and agent.tau == 0.01
    assert agent.buffer_size == 2000
    assert agent.train_freq.frequency == 1 and agent.train_freq.unit.value == "episode"
    assert agent.replay_buffer_class is EpisodeRewardReplayBuffer
    assert isinstance(agent.replay_buffer, EpisodeRewardReplayBuffer)
    assert agent.replay_buffer.baseline_alpha == 0.5
    assert agent.device.type == "cpu"
    if algo == "sac":
        assert noise is None and agent.action_noise is None
        assert agent.policy.net_arch == [256, 256]
    else:
        assert isinstance(noise, DecayingTruncatedNormalNoise) and agent.action_noise is noise
        assert (noise.sigma, noise.decay, noise.warmup_episodes) == (0.5, 0.99, 3)
        assert isinstance(agent.policy, AMCPolicy)
        assert agent.policy.net_arch == [300, 300]
        assert [m.out_features for m in agent.actor.mu if isinstance(m, torch.nn.Linear)] == [300, 300, 1]
    if algo == "td3":
        assert agent.policy_delay == 2 and agent.target_policy_noise == 0.1


def test_ddpg_critic_learns_ten_times_faster(env):
    agent, _ = make_agent("ddpg", env, load_preset("ddpg"), env.n)
    assert agent.learning_starts == 100 * env.n
    assert agent.learning_rate == 1e-4
    critic_opt, actor_opt = agent.critic.optimizer, agent.actor.optimizer
    assert isinstance(critic_opt, ScaledAdam)
    assert critic_opt.scale == pytest.approx(10.0)
    assert critic_opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert actor_opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert not isinstance(actor_opt, ScaledAdam)
    assert {id(p) for p in critic_opt.param_groups[0]["params"]} == {id(p) for p in agent.critic.parameters()}
    # Other rates give other scales.
    hp = load_preset("ddpg", overrides={"learning_rate_actor": 2e-4, "learning_rate_critic": 1e-3})
    agent, _ = make_agent("ddpg", env, hp, env.n)
    assert agent.critic.optimizer.scale == pytest.approx(5.0)


def test_make_agent_with_vectorised_noise(env):
    _, noise = make_agent("ddpg", env, load_preset("ddpg"), env.n, n_envs=2)
    assert noise.n_envs == 2 and noise().shape == (2, 1)
