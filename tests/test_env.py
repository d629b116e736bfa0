"""The Gymnasium pruning environment: API conformance, budgets, the action wall, rewards, infos."""

from __future__ import annotations

import json
import math
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from amc.envs.config import EnvConfig
from amc.envs.embedding import FEATURES
from amc.envs.pruning_env import PruningEnv
from amc.envs.rewards import REWARDS, get_reward, register_reward
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from amc.backends import ChannelBackend, FineGrainedBackend
from amc.data import Dataset, ImageArrays
from amc.models import MODELS, create_model
from amc.policy import Policy
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer, ScoringConfig


def synthetic_dataset(n_search: int = 100, n_test: int = 40, classes: int = 10, seed: int = 0) -> Dataset:
    """Random 32x32 RGB images: enough to score untrained networks quickly."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> ImageArrays:
        labels = (np.arange(n) % classes).astype(np.int64)
        return ImageArrays(rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), labels)

    splits = {"search": make(n_search), "test": make(n_test)}
    return Dataset("synthetic", [f"c{i}" for i in range(classes)], splits, (0.5,) * 3, (0.25,) * 3)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return synthetic_dataset()


def channel_backend(dataset: Dataset, model: str = "resnet20", width: float = 0.25, latency=None):
    torch.manual_seed(0)
    net = create_model(model, dataset.num_classes, width)
    scorer = Scorer(dataset, ScoringConfig(images=32, recalibrate=False))
    return ChannelBackend(ChannelPruner(net), scorer, latency, model)


def finegrained_backend(dataset: Dataset, model: str = "resnet20", width: float = 0.25):
    torch.manual_seed(0)
    net = create_model(model, dataset.num_classes, width)
    return FineGrainedBackend(
        net, Scorer(dataset, ScoringConfig(images=32, recalibrate=False)), (1, 3, 32, 32), model
    )


@pytest.fixture(scope="module")
def backend(dataset) -> ChannelBackend:
    return channel_backend(dataset)


@pytest.fixture(scope="module")
def fg_backend(dataset) -> FineGrainedBackend:
    return finegrained_backend(dataset)


def fake_latency(kept) -> float:
    """A monotone stand-in for a latency table: ms proportional to the kept channels."""
    return 0.01 * float(sum(kept)) + 0.5


def run_episode(env: PruningEnv, actions=None, seed: int | None = None):
    """Play one episode; returns observations, rewards and infos (the reset observation first)."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    for t in range(env.n):
        action = env.action_space.sample() if actions is None else actions[t]
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert terminated == (t == env.n - 1)
        assert not truncated
    return observations, rewards, infos


def same_info(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
        elif x != y:
            return False
    return True


def checked(fn, env) -> None:
    """Run an env checker and fail on any warning except gymnasium's note about a missing spec."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(env)
    problems = [str(w.message) for w in caught if "spec" not in str(w.message)]
    assert not problems, problems


# --- API conformance -----------------------------------------------------------------------------


def test_channel_env_passes_gymnasium_and_sb3_checkers(backend):
    env = PruningEnv(backend=backend, target=0.5)
    checked(gym_check_env, env)
    checked(sb3_check_env, env)


def test_finegrained_env_passes_gymnasium_and_sb3_checkers(fg_backend):
    env = PruningEnv(backend=fg_backend, mode="finegrained", reward="acc_params", target=None)
    checked(gym_check_env, env)
    checked(sb3_check_env, env)
    _, _, infos = run_episode(env, seed=0)
    assert infos[-1]["flops_ratio"] < 1.0
    assert Policy(**json.loads(infos[-1]["policy_json"])).mode == "finegrained"


def test_finegrained_env_with_a_budget_meets_it(fg_backend):
    env = PruningEnv(backend=fg_backend, mode="finegrained", target=0.5)
    env.action_space.seed(1)
    for _ in range(5):
        _, _, infos = run_episode(env)
        assert infos[-1]["flops_ratio"] <= 0.5 + 1e-12


def test_gymnasium_make_with_a_backend(backend, fg_backend):
    env = gym.make("amc/ChannelPruning-v0", backend=backend)
    assert env.unwrapped.backend is backend
    assert env.unwrapped.config.target == 0.5
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    _, reward, terminated, _, info = env.step(env.action_space.sample())
    assert not terminated and reward == 0.0 and "applied_action" in info
    env.close()

    env = gym.make("amc/FineGrainedPruning-v0", backend=fg_backend)
    assert env.unwrapped.config.mode == "finegrained" and env.unwrapped.wall is None
    assert env.unwrapped.config.reward == "acc_params"
    env.reset(seed=0)
    env.close()


def test_gymnasium_make_builds_from_the_bundled_sample():
    start = time.time()
    env = gym.make("amc/ChannelPruning-v0", checkpoint="none", width=0.25, search_images=32)
    inner = env.unwrapped
    assert isinstance(inner.backend, ChannelBackend)
    assert inner.config.model == "resnet20" and inner.config.dataset == "sample"
    assert len(inner.backend.scorer.sets["search"][1]) == 32
    env.action_space.seed(0)
    env.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, info = env.step(env.action_space.sample())
    assert info["flops_ratio"] <= 0.5
    assert 0.0 <= info["accuracy"] <= 100.0
    assert time.time() - start < 60


# --- observations --------------------------------------------------------------------------------


def test_observations_are_float32_inside_the_box(backend):
    env = PruningEnv(backend=backend, target=0.5)
    assert env.observation_space.shape == (len(FEATURES),)
    assert env.action_space.shape == (1,)
    env.action_space.seed(3)
    for seed in range(3):
        observations, _, _ = run_episode(env, seed=seed)
        assert len(observations) == env.n + 1
        for obs in observations:
            assert obs.dtype == np.float32
            assert obs.shape == (len(FEATURES),)
            assert env.observation_space.contains(obs), obs
    # The first observation describes unit 0 with nothing pruned yet.
    first = observations[0]
    assert first[FEATURES.index("index")] == 0.0
    assert first[FEATURES.index("reduced")] == 0.0
    assert first[FEATURES.index("prev_action")] == 0.0
    flags = first[len(FEATURES) - 4 :]
    assert flags.sum() == 1.0


def test_same_seed_and_actions_give_identical_episodes(backend):
    env = PruningEnv(backend=backend, target=0.5)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (env.n, 1)).astype(np.float32)
    other = rng.uniform(-1, 1, (env.n, 1)).astype(np.float32)
    first = run_episode(env, actions, seed=7)
    run_episode(env, other, seed=8)  # a different episode in between must leave no trace
    second = run_episode(env, actions, seed=7)
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1]
    for a, b in zip(first[2], second[2], strict=True):
        assert same_info(a, b), (a, b)


# --- budgets and the action wall -----------------------------------------------------------------


def assert_budget_met(env: PruningEnv, episodes: int, metric: str = "flops") -> None:
    env.action_space.seed(0)
    target = env.config.target
    for _ in range(episodes):
        _, _, infos = run_episode(env)
        final = infos[-1]
        assert final[f"{metric}_ratio"] <= target + 1e-12, (env.config.model, final[f"{metric}_ratio"])
        exact = env.backend.costs(final["sparsities"])[metric]
        assert exact == pytest.approx(final[f"{metric}_ratio"])


@pytest.mark.parametrize("model", ["resnet20", "mobilenet_v2"])
def test_flops_budget_met_on_every_random_episode(dataset, model):
    env = PruningEnv(backend=channel_backend(dataset, model), target=0.5)
    assert_budget_met(env, 30)


@pytest.mark.slow
@pytest.mark.parametrize(("metric", "target"), [("flops", 0.5), ("params", 0.6)])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_budget_met_on_every_random_episode_all_models(dataset, model, metric, target):
    env = PruningEnv(backend=channel_backend(dataset, model), metric=metric, target=target)
    assert_budget_met(env, 30, metric)


@pytest.mark.parametrize(("model", "width", "target"), [("resnet20", 0.5, 0.3), ("plain20", 0.25, 0.7)])
def test_other_flops_targets_and_widths(dataset, model, width, target):
    env = PruningEnv(backend=channel_backend(dataset, model, width), target=target)
    assert_budget_met(env, 15)


@pytest.mark.parametrize("model", ["resnet20", "mobilenet_v2"])
def test_params_budget_met_on_every_random_episode(dataset, model):
    env = PruningEnv(backend=channel_backend(dataset, model), metric="params", target=0.6)
    assert_budget_met(env, 30, "params")


def test_latency_budget_met(dataset):
    env = PruningEnv(backend=channel_backend(dataset, latency=fake_latency), metric="latency", target=0.6)
    assert_budget_met(env, 15, "latency")


def test_applied_action_is_the_clamped_sparsity(backend):
    env = PruningEnv(backend=backend, target=0.4)
    rng = np.random.default_rng(5)
    clamped = 0
    for _ in range(10):
        env.reset()
        for _ in range(env.n):
            action = rng.uniform(-1.5, 1.5, (1,)).astype(np.float32)  # also beyond the Box
            low, high = env.wall.bounds(env._decided)
            raw = (float(np.clip(action[0], -1, 1)) + 1) / 2 * env.config.max_sparsity
            assert env.to_sparsity(action[0]) == pytest.approx(raw)
            expected = min(max(raw, low), high)
            clamped += expected != raw
            _, _, _, _, info = env.step(action)
            applied = info["applied_action"]
            assert applied.shape == (1,) and applied.dtype == np.float32
            assert -1.0 <= applied[0] <= 1.0
            assert info["sparsity"] == pytest.approx(expected)
            assert applied[0] == pytest.approx(2 * expected / env.config.max_sparsity - 1, abs=1e-6)
            assert env.to_sparsity(applied[0]) == pytest.approx(expected, abs=1e-6)
    assert clamped > 0  # the wall really acted in these episodes


def test_mapping_endpoints(backend):
    env = PruningEnv(backend=backend, target=None, max_sparsity=0.8)
    assert env.to_sparsity(-1.0) == 0.0
    assert env.to_sparsity(1.0) == pytest.approx(0.8)
    assert env.to_sparsity(0.0) == pytest.approx(0.4)
    assert env.to_sparsity(5.0) == pytest.approx(0.8)
    assert env.to_action(env.to_sparsity(0.3)) == pytest.approx(0.3)
    # Without a target nothing clamps: the applied action is the action itself.
    env.reset()
    _, _, _, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert info["applied_action"][0] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_wall_bounds_are_ordered_and_keep_the_target_reachable(backend, metric):
    env = PruningEnv(backend=backend, metric=metric, target=0.55)
    wall, top, target = env.wall, env.config.max_sparsity, env.config.target
    cost = lambda s: env.backend.costs(s)[metric]  # noqa: E731
    rng = np.random.default_rng(11)
    for _ in range(8):
        env.reset()
        for t in range(env.n):
            low, high = wall.bounds(env._decided)
            later = env.n - t - 1
            assert 0.0 <= low <= high <= top
            assert cost([*env._decided, low, *[top] * later]) <= target + 1e-12
            if high < top and high > low:
                # high is where this unit alone meets the target with the later units dense
                assert cost([*env._decided, high, *[0.0] * later]) <= target + 1e-12
            env.step(rng.uniform(-1, 1, (1,)).astype(np.float32))


def test_wall_never_overshoots_when_the_budget_is_met_early(backend):
    """Once the decided units meet the target, the wall lets the rest stay dense."""
    env = PruningEnv(backend=backend, target=0.5)
    env.reset()
    while len(env._decided) < env.n:
        *_, info = env.step(np.array([1.0], dtype=np.float32))
    # Pruning everything as much as allowed stops at the budget instead of going further.
    assert 0.4 < info["flops_ratio"] <= 0.5


def test_unreachable_target_raises(backend):
    with pytest.raises(ValueError, match=r"target flops=0\.01 is unreachable.*max_sparsity=0\.8"):
        PruningEnv(backend=backend, target=0.01)
    with pytest.raises(ValueError, match="unreachable"):
        PruningEnv(backend=backend, target=0.3, max_sparsity=0.2)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown budget metric 'energy'"):
        EnvConfig(metric="energy")
    with pytest.raises(ValueError, match="unknown mode"):
        EnvConfig(mode="blocks")
    with pytest.raises(ValueError, match="max_sparsity"):
        EnvConfig(max_sparsity=1.0)
    with pytest.raises(ValueError, match=r"budget ratio must be in \(0, 1\]"):
        EnvConfig(target=1.5)


def test_stepping_after_the_end_raises(backend):
    env = PruningEnv(backend=backend, target=0.5)
    run_episode(env, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, dtype=np.float32))


# --- rewards -------------------------------------------------------------------------------------


def test_reward_registry_formulas():
    assert {"acc", "acc_flops", "acc_params", "acc_latency"} <= set(REWARDS)
    costs = {
        "flops": 0.5,
        "params": 0.4,
        "latency": 0.7,
        "flops_absolute": 2.0e6,
        "params_absolute": 3.0e4,
        "latency_absolute": 1.5,
    }
    assert get_reward("acc")(75.0, costs) == pytest.approx(-0.25)
    assert get_reward("acc")(100.0, costs) == pytest.approx(0.0)
    assert get_reward("acc_flops")(80.0, costs) == pytest.approx(-0.2 * math.log(2.0e6))
    assert get_reward("acc_params")(90.0, costs) == pytest.approx(-0.1 * math.log(3.0e4))
    assert get_reward("acc_latency")(60.0, costs) == pytest.approx(-0.4 * math.log(1.5))
    # More accuracy is always better; for acc_flops fewer FLOPs are better too.
    assert get_reward("acc_flops")(81.0, costs) > get_reward("acc_flops")(80.0, costs)
    fewer = {**costs, "flops_absolute": 1.0e6}
    assert get_reward("acc_flops")(80.0, fewer) > get_reward("acc_flops")(80.0, costs)


def test_unknown_reward_lists_the_known_ones(backend):
    with pytest.raises(ValueError, match="unknown reward 'nope'; known rewards: acc, acc_flops") as err:
        get_reward("nope")
    for name in REWARDS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="known rewards"):
        PruningEnv(backend=backend, reward="nope")


def test_register_reward_adds_a_named_reward():
    @register_reward("test_half_acc")
    def half(accuracy, costs):
        return accuracy / 200.0

    try:
        assert get_reward("test_half_acc") is half
        assert get_reward("test_half_acc")(50.0, {}) == 0.25
    finally:
        REWARDS.pop("test_half_acc")


@pytest.mark.parametrize("name", ["acc", "acc_flops", "acc_params", "acc_latency"])
def test_env_reward_uses_the_registry(dataset, name):
    backend = channel_backend(dataset, latency=fake_latency)
    env = PruningEnv(backend=backend, reward=name, target=0.5)
    _, rewards, infos = run_episode(env, seed=0)
    final = infos[-1]
    assert rewards[:-1] == [0.0] * (env.n - 1)
    expected = get_reward(name)(final["accuracy"], backend.costs(final["sparsities"]))
    assert rewards[-1] == pytest.approx(expected)
    assert final["reward"] == rewards[-1]


# --- the terminal info ---------------------------------------------------------------------------


def test_terminal_info(backend):
    env = PruningEnv(backend=backend, target=0.5)
    _, _, infos = run_episode(env, seed=0)
    for info in infos[1:-1]:
        assert {"unit", "sparsity", "applied_action"} <= info.keys()
        assert "accuracy" not in info
    final = infos[-1]
    for key in ("accuracy", "reward", "flops_ratio", "params_ratio", "sparsities", "policy", "policy_json"):
        assert key in final, key
    assert 0.0 <= final["accuracy"] <= 100.0
    assert final["reward"] == pytest.approx(-(1 - final["accuracy"] / 100))
    assert 0.0 < final["flops_ratio"] <= 0.5
    assert 0.0 < final["params_ratio"] <= 1.0
    assert len(final["sparsities"]) == env.n
    assert final["sparsities"] == [i["sparsity"] for i in infos[1:]]
    names = [u.name for u in env.units]
    assert list(final["policy"]) == names
    policy = Policy(**json.loads(final["policy_json"]))
    assert policy.sparsities == final["policy"]
    assert list(policy.kept) == names
    assert policy.model == "resnet20" and policy.mode == "channel"
    assert policy.ratios()["flops_ratio"] == pytest.approx(final["flops_ratio"])
    assert policy.ratios()["params_ratio"] == pytest.approx(final["params_ratio"])
    assert policy.metrics["accuracy"] == final["accuracy"]
    assert policy.metrics["reward"] == final["reward"]


def test_rebudget_meets_another_target_moving_units_no_further_than_needed(dataset):
    env = PruningEnv(backend=channel_backend(dataset, latency=fake_latency), metric="latency", target=0.6)
    env.action_space.seed(3)
    _, _, infos = run_episode(env)
    sparsities = infos[-1]["sparsities"]
    assert env.rebudget(sparsities, 0.6) == sparsities  # already within its own budget
    for target in (0.5, 0.7):
        moved = env.rebudget(sparsities, target)
        assert env.backend.costs(moved)["latency"] <= target + 1e-12
        if target < 0.6:
            assert all(m >= s for m, s in zip(moved, sparsities, strict=True))
