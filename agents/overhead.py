"""Time the default search episode against a dense forward pass (``amc benchmark overhead``).

An episode is what ``amc search`` does once per episode after its warm-up: walk the units of
the real :class:`~amc.envs.pruning_env.PruningEnv` with random actions (the action wall keeps
the budget), prune to the resulting policy with least-squares reconstruction, recalibrate
BatchNorm, score the search images, and run the agent's update (stable-baselines3's
``train`` with one gradient step per unit, as after every episode of a search, and the
preset's elite-imitation steps, if any). The
baseline is one plain forward pass of the dense model over the same images. The two
alternate; the record holds their medians, the median ratio, and where the episode's time
went (see :func:`amc.benchmark.summarize_overhead`).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
from amc.agents.factory import imitation_callback, load_preset, make_agent
from amc.envs.pruning_env import PruningEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from amc.benchmark import PartTimer, alternate, dense_forward, summarize_overhead

PARTS = ("pruning", "reconstruction", "recalibration", "scoring", "agent update", "environment")
"""The parts of an episode, in the order reported. ``pruning`` selects and removes the
channels (without the least-squares refit, which is ``reconstruction``); ``environment`` is
the rest of the episode: observations, the action wall, costs, the policy record."""


def _instrument(timer: PartTimer, env: PruningEnv, agent: Any) -> None:
    backend = env.backend
    pruner = backend.pruner
    for method in ("apply", "export"):
        timer.wrap(pruner, method, "pruning")
    if pruner.reconstructor is not None:
        timer.wrap(pruner.reconstructor, "refit", "reconstruction")
    timer.wrap(backend.scorer, "recalibrate", "recalibration")
    timer.wrap(backend.scorer, "accuracy", "scoring")
    timer.wrap(agent, "train", "agent update")


def episode_overhead(
    env: PruningEnv, repeats: int = 7, seed: int = 0, algo: str = "ddpg", hp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Median time of a default search episode over a dense forward pass on the same images.

    Args:
        env: A channel-pruning environment, e.g. ``PruningEnv(EnvConfig(...))`` as
            ``amc search`` builds it (reconstruction and recalibration as configured there).
        repeats: Timed (episode, dense pass) rounds, after one untimed round.
        seed: Seed of the random actions and the agent.
        algo: The agent whose per-episode update is timed (``ddpg``, ``td3``, ``sac``).
        hp: Hyper-parameter overrides on top of the agent's preset.

    Returns:
        ``dense_s``, ``episode_s`` (medians, seconds), ``ratio`` (median of the per-round
        ratios), ``images``, ``parts_s`` (median seconds per part, see :data:`PARTS`),
        ``shares`` (each part's fraction of all episode time) and ``calls`` (how often each
        part ran, untimed round included).

    Raises:
        ValueError: For a fine-grained environment (this times channel pruning).
    """
    if env.backend.mode != "channel":
        raise ValueError("the overhead benchmark times channel-pruning episodes (mode 'channel')")
    preset = load_preset(algo, env.config.model, hp)
    agent, _ = make_agent(algo, DummyVecEnv([lambda: env]), preset, env.n, seed)
    agent.set_logger(Logger(None, []))  # the updates record their losses; keep them nowhere
    # The search imitates only after its warm-up; here every timed episode is a learned one.
    imitation = imitation_callback({**preset, "warmup_episodes": 0})
    if imitation is not None:
        imitation.init_callback(agent)
        imitation.on_training_start({}, {})
    scorer = env.backend.scorer
    dense_model = copy.deepcopy(env.backend.pruner.model)  # the env's model is dense before any episode
    images = scorer.sets["search"][0]
    rng = np.random.default_rng(seed)

    def episode() -> None:
        obs, _ = env.reset()
        done = False
        while not done:
            action = rng.uniform(-1.0, 1.0, (1,)).astype(np.float32)
            next_obs, reward, done, _, info = env.step(action)
            agent.replay_buffer.add(
                obs[None], next_obs[None], action[None], np.array([reward]), np.array([done]), [info]
            )
            obs = next_obs
        if imitation is not None:  # stable-baselines3 calls the callbacks before training
            imitation.on_rollout_end()
        agent.train(gradient_steps=env.n, batch_size=agent.batch_size)

    parts: list[dict[str, float]] = []
    times: list[float] = []
    timer = PartTimer()
    calls: dict[str, int] = {}

    def timed_episode() -> None:
        timer.reset()
        start = time.perf_counter()
        episode()
        elapsed = time.perf_counter() - start
        for k, v in timer.calls.items():
            calls[k] = calls.get(k, 0) + v
        split = {k: timer.seconds.get(k, 0.0) for k in PARTS if k != "environment"}
        split["environment"] = max(0.0, elapsed - sum(split.values()))
        parts.append(split)
        times.append(elapsed)

    with timer:
        _instrument(timer, env, agent)
        if imitation is not None:
            timer.wrap(imitation, "on_rollout_end", "agent update")
        dense, _, _ = alternate(
            lambda: dense_forward(dense_model, images, scorer.batch_size), timed_episode, repeats
        )
    env.backend.pruner.reset()
    # alternate() ran one untimed round first: drop its episode from the times and parts.
    result = summarize_overhead(dense, times[1:], parts[1:], len(images))
    result["calls"] = calls
    return result
