"""``amc search``: train an agent on the pruning environment, with resumable run folders.

A run folder ``runs/<model>__<agent>__seed<k>__<time>/`` holds ``config.yaml`` (resolved
settings), ``command.txt``, TensorBoard events, ``episodes.csv``, ``best_policy.json``,
``agent.zip`` (stable-baselines3 format) and the checkpoint (``buffer.npz``,
``state.json``). ``resume_search(run_dir)`` continues a killed run from its last episode.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from amc.agents.callbacks import SearchCallback, episode_summary
from amc.agents.factory import ALGORITHMS, load_preset, make_agent
from amc.agents.transfer import play_episode
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from amc.baselines import TargetError, uniform_policy

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Settings of a search run.

    Attributes:
        env: The environment settings.
        agent: ``ddpg``, ``td3`` or ``sac``.
        episodes: Episodes in all, warm-up included.
        seed: Seed of the agent and its noise.
        envs: Episodes scored in parallel (subprocess environments).
        hp: Hyper-parameter overrides on top of the agent's preset.
        runs_dir: Parent folder of run folders.
        name: Run folder name (default ``<model>__<agent>__seed<k>__<time>``).
        finalists: The best episodes (by reward) re-scored on the selection images at the end;
            the best of them there becomes ``best_policy.json``.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: str = "ddpg"
    episodes: int = 300
    seed: int = 0
    envs: int = 1
    hp: dict[str, Any] = field(default_factory=dict)
    runs_dir: str = "runs"
    name: str = ""
    finalists: int = 10

    def run_name(self) -> str:
        """The run folder's name."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = self.env.model.replace(":", "_").replace(".", "_")
        return self.name or f"{model}__{self.agent}__seed{self.seed}__{stamp}"

    @classmethod
    def from_dict(cls, data: dict) -> SearchConfig:
        """Rebuild from :func:`dataclasses.asdict` output (``config.yaml``)."""
        data = dict(data)
        data["env"] = EnvConfig(**data.get("env", {}))
        return cls(**data)


def _make_vec_env(config: SearchConfig, first: PruningEnv) -> VecEnv:
    if config.envs <= 1:
        return DummyVecEnv([lambda: first])
    env_config = EnvConfig(**{**asdict(config.env), "threads": max(1, config.env.threads)})
    return SubprocVecEnv(
        [lambda c=env_config: PruningEnv(c) for _ in range(config.envs)], start_method="spawn"
    )


def _truncate_csv(path: Path, episodes: int) -> None:
    """Keep the header and the first ``episodes`` rows (rows beyond the checkpoint are redone)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows[: episodes + 1])


def _start(config: SearchConfig, run_dir: Path, state: dict | None, progress: bool) -> dict:
    env = PruningEnv(config.env)
    n_units = env.n
    hp = load_preset(config.agent, config.env.model, config.hp)
    vec_env = _make_vec_env(config, env)
    agent, noise = make_agent(config.agent, vec_env, hp, n_units, config.seed, config.envs)
    if state is not None:
        agent = ALGORITHMS[config.agent].load(run_dir / "agent.zip", env=vec_env, device="cpu")
        agent.replay_buffer.load_npz(run_dir / "buffer.npz")
        if noise is not None:
            noise.load_state(state["noise"])
            agent.action_noise = noise
        agent.num_timesteps = int(state["num_timesteps"])
    agent.set_logger(configure(str(run_dir), ["tensorboard"]))
    done = state["episodes"] if state else 0
    settings = {
        **asdict(config.env),
        "agent": config.agent,
        "episodes": config.episodes,
        "seed": config.seed,
        "envs": config.envs,
        **hp,
    }
    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in settings.items()
        if v is not None
    }
    callback = SearchCallback(
        run_dir,
        [u.name for u in env.units],
        config.episodes,
        state,
        noise,
        progress,
        hparams,
        config.finalists,
    )
    remaining = max(0, config.episodes - done)
    try:
        agent.learn(
            total_timesteps=remaining * n_units,
            callback=callback,
            reset_num_timesteps=state is None,
            log_interval=1,
        )
    finally:
        vec_env.close()
    agent.save(run_dir / "agent.zip")
    best = callback.best
    if config.env.selection_images and callback.candidates:
        best = select_final(env, callback, agent)
    return {
        "run_dir": str(run_dir),
        "episodes": callback.episodes,
        "best": best,
        "seconds": callback.elapsed + time.time() - callback.t0,
        "env": env,
    }


def _extra_candidates(env: PruningEnv, agent: Any) -> list[dict]:
    """The trained actor's noise-free episode, and the uniform policy in channel mode with a budget.

    The uniform policy is exactly the one ``amc search`` compares against at the end.
    """
    actor = play_episode(env, lambda obs: agent.predict(obs, deterministic=True)[0])
    rows = [{**episode_summary(None, actor), "source": "actor", "sparsities": actor["sparsities"]}]
    config = env.config
    if env.backend.mode == "channel" and config.target is not None and config.metric != "latency":
        pruner = env.backend.pruner
        try:
            uniform = pruner.sparsities_by_name(
                uniform_policy(pruner, config.target, config.metric).sparsities
            )
        except TargetError:
            return rows
        rows.append(
            {**episode_summary(None, env.evaluate(uniform)), "source": "uniform", "sparsities": uniform}
        )
    return rows


def choice_label(choice: dict) -> str:
    """``episode N``, or ``the actor policy`` / ``the uniform policy`` for the other finalists."""
    source = choice.get("source", "episode")
    return f"episode {choice.get('episode')}" if source == "episode" else f"the {source} policy"


def select_final(env: PruningEnv, callback: SearchCallback, agent: Any) -> dict:
    """Re-score the finalists on the selection images; the best there becomes ``best_policy.json``.

    The best of hundreds of episodes, each scored on the same few thousand images, is the
    luckiest as much as the best (its score is biased upwards). Re-ranking the top few on
    images that no episode was scored on removes that bias from the choice. The finalists are
    the best episodes by reward, the trained actor's noise-free episode and the uniform policy
    (so a search never hands back a policy that does worse than uniform there). The ranking
    goes to ``finalists.json``; TensorBoard gets ``final/*`` scalars and the chosen policy.
    """
    rows = []
    for candidate in callback.candidates + _extra_candidates(env, agent):
        selection = env.evaluate(candidate["sparsities"], on="selection")
        rows.append(
            {
                **candidate,
                "selection_accuracy": selection["accuracy"],
                "selection_reward": selection["reward"],
            }
        )
    rows.sort(key=lambda r: -r["selection_reward"])  # stable: ties keep the episodes' order
    run_dir = callback.run_dir
    (run_dir / "finalists.json").write_text(json.dumps(rows, indent=1))
    final = {k: v for k, v in rows[0].items() if k != "sparsities"}
    metrics = {k: final[k] for k in ("accuracy", "reward", "selection_accuracy", "source", "episode")}
    policy = env.backend.policy(rows[0]["sparsities"], **metrics)
    step = callback.episodes
    for key in ("selection_accuracy", "accuracy"):
        callback.writer.add_scalar(f"final/{key}", final[key], step)
    title = f"final: {choice_label(final)}, selection accuracy {final['selection_accuracy']:.2f} %"
    callback.show_best(policy, step, title)
    callback.writer.flush()
    log.info("final policy: %s", title)
    return final


def run_search(config: SearchConfig, progress: bool = True) -> dict:
    """Start a new search; returns the run folder, episode count, best result and wall time."""
    if config.agent not in ALGORITHMS:
        raise ValueError(f"unknown agent '{config.agent}'; known agents: {', '.join(ALGORITHMS)}")
    run_dir = Path(config.runs_dir) / config.run_name()
    if (run_dir / "state.json").exists() or (run_dir / "episodes.csv").exists():
        raise FileExistsError(f"{run_dir} already holds a search; resume it with --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.name = run_dir.name
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    (run_dir / "command.txt").write_text(" ".join(sys.argv) + "\n")
    return _start(config, run_dir, None, progress)


def resume_search(run_dir: str | Path, episodes: int | None = None, progress: bool = True) -> dict:
    """Continue the search in ``run_dir`` from its last checkpoint (optionally to more episodes)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a search run folder (no config.yaml)")
    config = SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if episodes is not None:
        config.episodes = episodes
        (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    state_file = run_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    _truncate_csv(run_dir / "episodes.csv", state["episodes"] if state else 0)
    with (run_dir / "command.txt").open("a") as f:
        f.write(" ".join(sys.argv) + "\n")
    log.info("resuming %s at episode %d", run_dir, state["episodes"] if state else 0)
    return _start(config, run_dir, state, progress)
