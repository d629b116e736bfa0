"""Episodes per second: one env, 2 subprocess envs, 1 and 2 Ray actors, and the agent's update.

All in one run, on one machine (the Ray actors in a local instance of 2 CPUs). The setups
take turns in ``--rounds`` rounds, each building its environments afresh and timing
``--episodes / --rounds`` episodes, the order rotating from round to round, so that a shared
machine's changing load falls on all of them alike; the record keeps every round and the
1-minute load average around it.

The environment is ``amc search``'s default (the shipped ResNet-20 on the bundled CIFAR-10
sample, 50 % FLOPs, 1,000 search images, reconstruction and BatchNorm recalibration), one
torch thread per environment, random actions (:func:`amc.agents.parallel.episodes_per_second`:
the first round of episodes, start-up included, is not timed). The agent's update is the
DDPG preset's (one gradient step per unit on 64 transitions, and the elite-imitation steps),
timed by :func:`amc.agents.overhead.episode_overhead` (median of ``--repeats`` episodes).

Run from the repository root (``pip install -e '.[ray]'``)::

    python docs/evidence/ray/measure.py --episodes 24 --rounds 6

It also times a Ray actor's round trip per step on a trivial environment (CartPole), the
Ray overhead of a search step apart from the episode's work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import gymnasium as gym
import numpy as np
import torch
from amc.agents.overhead import episode_overhead
from amc.agents.parallel import episodes_per_second
from amc.agents.ray_vec import RayVecEnv
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv

SETUPS = (
    ("1 env (in process)", 1, None),
    ("2 subprocess envs", 2, None),
    ("1 Ray actor", 1, "local"),
    ("2 Ray actors", 2, "local"),
)


def roundtrip_ms(steps: int = 300) -> float:
    """Median milliseconds of one ``step`` of a 1-actor :class:`RayVecEnv` over CartPole."""
    vec = RayVecEnv([lambda: gym.make("CartPole-v1")], num_cpus_per_actor=1)
    try:
        vec.reset()
        action = np.zeros((1,), dtype=np.int64)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            vec.step(action)
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times[10:]))
    finally:
        vec.close()


def main() -> None:
    """Measure every setup, then the update; write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=24, help="timed episodes per setup, in all")
    parser.add_argument("--rounds", type=int, default=6, help="turns each setup takes")
    parser.add_argument("--repeats", type=int, default=7, help="timed episodes of the update benchmark")
    parser.add_argument("--out", default="docs/evidence/ray/episodes_per_second.json", help="JSON record")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = EnvConfig(threads=1)
    import ray

    record: dict = {
        "command": " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "env": {k: v for k, v in vars(config).items() if not k.startswith("_")},
        "episodes_timed": args.episodes,
        "rounds": [],
    }
    per_round = max(1, args.episodes // args.rounds)
    for r in range(args.rounds):
        for label, n_envs, address in SETUPS[r % len(SETUPS) :] + SETUPS[: r % len(SETUPS)]:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            stats: dict = {}
            rate = episodes_per_second(config, n_envs, per_round, ray=address, stats=stats)
            row = {
                "round": r,
                "setup": label,
                "envs": n_envs,
                "ray": address,
                "threads_per_env": 1,
                "episodes": stats["episodes"],
                "episodes_per_s": rate,
                "env_cpu_s_per_episode": stats["env_cpu_s"] / stats["episodes"],
                "driver_cpu_s_per_episode": stats["driver_cpu_s"] / stats["episodes"],
                "wall_s_with_startup": time.perf_counter() - start,
                "load_1min_before": load,
                "load_1min_after": os.getloadavg()[0],
            }
            print(json.dumps(row), flush=True)
            record["rounds"].append(row)
    record["setups"] = []
    for label, n_envs, address in SETUPS:
        rows = [row for row in record["rounds"] if row["setup"] == label]
        seconds = sum(row["episodes"] / row["episodes_per_s"] for row in rows)
        episodes = sum(row["episodes"] for row in rows)
        record["setups"].append(
            {
                "setup": label,
                "envs": n_envs,
                "ray": address,
                "episodes": episodes,
                "episodes_per_s": episodes / seconds,
                "seconds_per_episode": seconds / episodes,
                "per_round_episodes_per_s": [row["episodes_per_s"] for row in rows],
                "env_cpu_s_per_episode": sum(r["env_cpu_s_per_episode"] * r["episodes"] for r in rows)
                / episodes,
                "driver_cpu_s_per_episode": sum(r["driver_cpu_s_per_episode"] * r["episodes"] for r in rows)
                / episodes,
            }
        )
    record["ray_step_roundtrip_ms"] = roundtrip_ms()
    load = os.getloadavg()[0]
    overhead = episode_overhead(PruningEnv(config), repeats=args.repeats, algo="ddpg")
    record["agent_update"] = {
        "algo": "ddpg (preset: 1 gradient step per unit on 64 transitions, elite imitation)",
        "update_s_per_episode": overhead["parts_s"]["agent update"],
        "episode_s_in_process": overhead["episode_s"],
        "parts_s": overhead["parts_s"],
        "repeats": args.repeats,
        "load_1min_before": load,
        "load_1min_after": os.getloadavg()[0],
    }
    print(json.dumps(record["agent_update"]), flush=True)
    rates = {row["setup"]: row["episodes_per_s"] for row in record["setups"]}
    cpu = {row["setup"]: row["env_cpu_s_per_episode"] for row in record["setups"]}
    update = record["agent_update"]["update_s_per_episode"]
    episode = record["agent_update"]["episode_s_in_process"] - update  # the environment's work
    units = PruningEnv(config).n
    ray_step = record["ray_step_roundtrip_ms"] / 1000
    actor_episode = episode + units * ray_step
    # A search steps its N environments in lockstep, then updates the agent in the driver by
    # one gradient step per collected transition: a round of N episodes takes
    # (the slowest episode) + N x (update per episode), the update being serial.
    one_env = episode + update

    def rate(n: int) -> float:
        return n / (actor_episode + n * update)

    record["projection"] = {
        "model": "episodes/s = N / (T_episode + units * T_roundtrip + N * T_update)",
        "T_episode_s": episode,
        "T_update_s": update,
        "units": units,
        "T_roundtrip_s": ray_step,
        "one_env_episodes_per_s": 1 / one_env,
        **{f"N={n} episodes_per_s": rate(n) for n in (2, 4, 8)},
        **{f"N={n} speedup_vs_1_env": rate(n) * one_env for n in (2, 4, 8)},
        "ceiling_episodes_per_s (1 / T_update)": 1 / update,
        "wall_ray_overhead_s_per_episode (1 Ray actor - 1 env)": 1 / rates["1 Ray actor"]
        - 1 / rates["1 env (in process)"],
        "cpu_ray_overhead_s_per_episode (1 Ray actor - 1 env, env processes)": cpu["1 Ray actor"]
        - cpu["1 env (in process)"],
    }
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(json.dumps(record["projection"], indent=1))


if __name__ == "__main__":
    main()
