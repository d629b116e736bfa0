"""Transfer: roll a trained agent out on another model to get that model's policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from amc.agents.factory import ALGORITHMS
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv

from amc.policy import Policy


def play_episode(env: PruningEnv, act: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Run one episode with ``act(observation) -> action``; return the last step's ``info``."""
    obs, _ = env.reset(seed=0)
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        if terminated or truncated:
            return info


def rollout_policy(agent_path: str | Path, config: EnvConfig, algo: str | None = None) -> Policy:
    """Run the agent's deterministic actor for one episode on the model in ``config``.

    The observation (unit embedding) has the same shape for every architecture, so an agent
    trained on one network proposes sparsities for any other; the action wall still keeps the
    budget.
    """
    path = Path(agent_path)
    if not path.is_file():
        raise FileNotFoundError(f"agent file {path} does not exist (expected runs/<run>/agent.zip)")
    env = PruningEnv(config)
    errors = []
    for name in [algo] if algo else list(ALGORITHMS):
        try:
            agent = ALGORITHMS[name].load(path, device="cpu")
            break
        except Exception as exc:  # SB3 raises various errors for a mismatched class
            errors.append(f"{name}: {exc}")
    else:
        raise ValueError(f"cannot load agent {path}: {'; '.join(errors)}")
    info = play_episode(env, lambda obs: agent.predict(obs, deterministic=True)[0])
    return Policy(**json.loads(info["policy_json"]))
