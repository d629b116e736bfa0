"""Transfer: roll a trained agent out on another model to get that model's policy.

An actor trained on one network proposes sparsities for any other (the unit embedding has
the same shape everywhere), but what it learned may not suit the new network's sensitivities.
So the rollout also tries blends of its actions with the uniform policy's and keeps the one
that scores best on the search images: zero-shot (no search episodes), a few scorings, and
never worse there than the uniform policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from amc.agents.agent_file import AgentFileError, build_agent, read_agent
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv

from amc.policy import Policy

log = logging.getLogger(__name__)


def play_episode(env: PruningEnv, act: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Run one episode with ``act(observation) -> action``; return the last step's ``info``."""
    obs, _ = env.reset(seed=0)
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        if terminated or truncated:
            return info


def play_actions(env: PruningEnv, actions: np.ndarray) -> dict:
    """Run one episode with the given per-unit actions; return the last step's ``info``."""
    steps = iter(np.asarray(actions, dtype=np.float32).reshape(-1, 1))
    return play_episode(env, lambda obs: next(steps))


BLENDS = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Weights of the actor's actions (the rest: the uniform policy's) that a rollout tries."""


def rollout_policy(
    agent_path: str | Path,
    config: EnvConfig,
    algo: str | None = None,
    blends: tuple[float, ...] = BLENDS,
    env: PruningEnv | None = None,
) -> Policy:
    """Run the agent's deterministic actor on the model in ``config``; keep the best blend with uniform.

    The agent is rebuilt from its ``agent.pt`` and ``agent.json`` (tensors and settings only;
    see :mod:`amc.agents.agent_file`); ``algo``, if given, must be the one it was saved by. The
    actor's actions, blended with the uniform policy's by each weight in ``blends``, are
    played (the action wall keeps the budget) and scored on the search images, as is the bare
    actor's; the best becomes the policy, its weight recorded as ``metrics["actor_weight"]``
    (0: the uniform policy). ``blends=()`` keeps the bare actor. ``env``: an environment
    already built for ``config`` (default: one is built from it).

    Raises:
        AgentFileError: The agent file is unsafe, damaged, of another algorithm than ``algo``,
            or made for other observations.
        FileNotFoundError: There is no agent file at ``agent_path``.
    """
    spec, tensors = read_agent(agent_path)  # checked before the environment is built
    if algo and algo != spec.algorithm:
        raise AgentFileError(f"cannot load agent {agent_path}: it holds a {spec.algorithm} agent, not {algo}")
    env = env if env is not None else PruningEnv(config)
    agent = build_agent(spec, tensors, agent_path)
    if env.observation_space.shape != agent.observation_space.shape:
        raise AgentFileError(
            f"cannot roll out {agent_path}: it observes {agent.observation_space.shape}, this environment "
            f"{env.observation_space.shape}"
        )
    info = play_episode(env, lambda obs: agent.predict(obs, deterministic=True)[0])
    results = {1.0: info}
    uniform = env.uniform_sparsities()
    if uniform is not None:
        actor, towards = np.asarray(info["actions"]), np.array([env.to_action(s) for s in uniform])
        for weight in blends:
            if weight == 0.0:  # the uniform policy itself, not clamped by the action wall
                results[weight] = {**env.evaluate(uniform), "sparsities": uniform}
            elif weight != 1.0:
                results[weight] = play_actions(env, weight * actor + (1 - weight) * towards)
    weight = max(results, key=lambda w: results[w]["reward"])  # ties: the actor, then larger weights
    best = results[weight]
    log.info("rollout: actor weight %.2f (search accuracy %.2f %%)", weight, best["accuracy"])
    return env.backend.policy(
        best["sparsities"], accuracy=best["accuracy"], reward=best["reward"], actor_weight=weight
    )
