"""Measure the speed-up of scoring episodes in parallel subprocess environments."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv


def episodes_per_second(config: EnvConfig, n_envs: int, episodes: int, seed: int = 0) -> float:
    """Random-action episodes per second with ``n_envs`` environments (subprocesses when > 1).

    Each subprocess uses ``total threads / n_envs`` CPU threads, so 1 x 2 threads is compared
    with 2 x 1 thread on a 2-core machine.
    """
    import os

    threads = max(1, (config.threads or os.cpu_count() or 1) // n_envs)
    cfg = EnvConfig(**{**asdict(config), "threads": threads})
    if n_envs == 1:
        vec = DummyVecEnv([lambda: PruningEnv(cfg)])
    else:
        vec = SubprocVecEnv([lambda: PruningEnv(cfg) for _ in range(n_envs)], start_method="spawn")
    rng = np.random.default_rng(seed)
    try:
        vec.reset()
        done_episodes, t0 = 0, None
        while done_episodes < episodes + n_envs:  # the first round warms up and is not timed
            _, _, dones, _ = vec.step(rng.uniform(-1, 1, (n_envs, 1)).astype(np.float32))
            if dones.any():
                done_episodes += int(dones.sum())
                if t0 is None:
                    t0, done_episodes = time.perf_counter(), 0
        return done_episodes / (time.perf_counter() - t0)
    finally:
        vec.close()
