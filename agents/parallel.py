"""Measure the speed-up of scoring episodes in parallel subprocess environments or Ray actors."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds the processes ``pids`` have used (Linux ``/proc``; else ``None``)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _env_pids(vec: Any) -> list[int]:
    if isinstance(vec, SubprocVecEnv):
        return [p.pid for p in vec.processes]
    if hasattr(vec, "actor_pids"):
        return vec.actor_pids()
    return [os.getpid()]


def episodes_per_second(
    config: EnvConfig,
    n_envs: int,
    episodes: int,
    seed: int = 0,
    ray: str | None = None,
    stats: dict[str, Any] | None = None,
) -> float:
    """Random-action episodes per second with ``n_envs`` environments (subprocesses when > 1).

    Each subprocess uses ``total threads / n_envs`` CPU threads, so 1 x 2 threads is compared
    with 2 x 1 thread on a 2-core machine. With ``ray`` (an address, or ``"local"``) the
    environments are Ray actors (:class:`~amc.agents.ray_vec.RayVecEnv`, one CPU per thread),
    one actor included. The first round of episodes (start-up) is not timed.

    ``stats``, if given, receives the timed ``episodes``, wall ``seconds``, ``env_cpu_s`` (CPU
    seconds of the environments' processes, the caller's own for one in-process env; ``None``
    where they cannot be read, e.g. on other machines) and ``driver_cpu_s`` (this process's).
    """
    threads = max(1, (config.threads or os.cpu_count() or 1) // n_envs)
    cfg = EnvConfig(**{**asdict(config), "threads": threads})
    if ray is not None:
        from amc.agents.ray_vec import RayVecEnv

        vec = RayVecEnv([lambda: PruningEnv(cfg) for _ in range(n_envs)], ray, num_cpus_per_actor=threads)
    elif n_envs == 1:
        vec = DummyVecEnv([lambda: PruningEnv(cfg)])
    else:
        vec = SubprocVecEnv([lambda: PruningEnv(cfg) for _ in range(n_envs)], start_method="spawn")
    rng = np.random.default_rng(seed)
    try:
        vec.reset()
        pids = _env_pids(vec)
        done_episodes, t0 = 0, None
        while done_episodes < episodes + n_envs:  # the first round warms up and is not timed
            _, _, dones, _ = vec.step(rng.uniform(-1, 1, (n_envs, 1)).astype(np.float32))
            if dones.any():
                done_episodes += int(dones.sum())
                if t0 is None:
                    t0, done_episodes = time.perf_counter(), 0
                    cpu0, driver0 = _cpu_seconds(pids), time.process_time()
        seconds = time.perf_counter() - t0
        if stats is not None:
            cpu = _cpu_seconds(pids)
            stats.update(
                episodes=done_episodes,
                seconds=seconds,
                env_cpu_s=None if cpu is None or cpu0 is None else cpu - cpu0,
                driver_cpu_s=time.process_time() - driver0,
            )
        return done_episodes / seconds
    finally:
        vec.close()
