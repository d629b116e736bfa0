"""``amc search``: run a searcher on the pruning environment, with resumable run folders.

Searchers are the RL agents (``ddpg``, ``td3``, ``sac``; stable-baselines3) and the ask/tell
searchers of :mod:`amc.agents.population` (``random``, ``cem``). All of them run in the same
environment with the same episode budget, are recorded the same way and end with the same
final selection. A run folder ``runs/<model>__<agent>__seed<k>__<time>/`` holds
``config.yaml`` (resolved settings), ``command.txt``, TensorBoard events, ``episodes.csv``,
``best_policy.json``, ``agent.pt`` with ``agent.json`` (RL agents: tensors and settings, see
:mod:`amc.agents.agent_file`) and the checkpoint (``state.json``, with ``buffer.npz`` for RL
agents). ``resume_search(run_dir)`` continues a killed run from its last episode. One process
at a time writes a run folder (:class:`amc.files.RunLock`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from amc.agents.agent_file import (
    AGENT_FILE,
    AgentFileError,
    AgentSpec,
    read_agent,
    restore,
    restore_checkpoint,
    save_agent,
)
from amc.agents.callbacks import EpisodeRecorder, SearchCallback, episode_summary
from amc.agents.factory import ALGORITHMS, check_hp, imitation_callback, load_preset, make_agent
from amc.agents.population import SEARCHERS
from amc.agents.runs import RunFolderError, check_run_name, log_command, read_state, repair_episodes
from amc.agents.summary import choice_label
from amc.agents.transfer import play_actions, play_episode
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from amc.files import claim_folder, write_atomic

log = logging.getLogger(__name__)
AGENTS = (*ALGORITHMS, *SEARCHERS)
LATENCY_TOLERANCE = 0.05
"""How far from a latency target the final policy's measured latency may be (a fraction)."""
LATENCY_CORRECTIONS = 4
"""Most budget corrections that bring the final policy's measured latency to its target."""
"""Every searcher ``amc search --agent`` takes: the RL agents, then the ask/tell searchers."""


@dataclass
class SearchConfig:
    """Settings of a search run.

    Attributes:
        env: The environment settings.
        agent: A name in :data:`AGENTS`: ``ddpg``, ``td3``, ``sac``, ``random`` or ``cem``.
        episodes: Episodes in all, warm-up included.
        seed: Seed of the agent and its noise.
        envs: Episodes scored in parallel (subprocess environments, or Ray actors with ``ray``).
        hp: Hyper-parameter overrides on top of the agent's preset (or the searcher's defaults).
        runs_dir: Parent folder of run folders.
        name: Run folder name (default ``<model>__<agent>__seed<k>__<time>``).
        finalists: The best episodes (by reward) re-scored on the selection images at the end;
            the best of them there becomes ``best_policy.json``.
        agent_init: An ``agent.pt`` of an earlier search (same RL algorithm) whose networks
            start this one (a warm start); its warm-up then defaults to 0 episodes.
        ray: Score the ``envs`` episodes on Ray actors (:mod:`amc.agents.ray_vec`): ``None``
            does not use Ray, ``""`` or ``"local"`` starts a local Ray instance, anything else
            is the address of a Ray cluster to join (``"auto"``, ``"ray://head:10001"``).
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
    agent_init: str = ""
    ray: str | None = None

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if self.ray is not None and not isinstance(self.ray, str):
            raise ValueError(f"ray must be a Ray address, 'local' or None, got {self.ray!r}")
        if self.agent_init and self.agent in SEARCHERS:
            raise ValueError(f"--agent-init warm-starts an RL agent; '{self.agent}' has no networks to start")
        for key, least in (("episodes", 1), ("envs", 1), ("finalists", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key} must be a whole number of at least {least}, got {value!r}")

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


EnvFactory = Callable[[EnvConfig], PruningEnv]
"""Builds a search's environment from its settings (in a subprocess too: it is cloudpickled)."""


def _make_vec_env(config: SearchConfig, first: PruningEnv, factory: EnvFactory) -> VecEnv:
    if config.envs <= 1 and config.ray is None:
        return DummyVecEnv([lambda: first])
    env_config = EnvConfig(**{**asdict(config.env), "threads": max(1, config.env.threads)})
    if config.ray is not None:
        from amc.agents.ray_vec import RayVecEnv

        cuda = env_config.device.startswith("cuda")
        if cuda:  # Ray shows each actor its own GPU(s) only, as device 0
            env_config.device = "cuda"
        return RayVecEnv(
            [lambda: factory(env_config) for _ in range(config.envs)],
            address=config.ray,
            num_cpus_per_actor=env_config.threads,
            num_gpus_per_actor=None if cuda else 0,
        )
    return SubprocVecEnv([lambda: factory(env_config) for _ in range(config.envs)], start_method="spawn")


def _config_yaml(config: SearchConfig) -> str:
    """``config.yaml`` text of ``config`` (tuples, such as ``env.nm``, written as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return yaml.safe_dump(plain(asdict(config)), sort_keys=False)


def _hparams(config: SearchConfig, hp: dict[str, Any]) -> dict[str, Any]:
    """The run's flattened settings, for TensorBoard's text and HParams tabs."""
    settings = {
        **asdict(config.env),
        "agent": config.agent,
        "episodes": config.episodes,
        "seed": config.seed,
        "envs": config.envs,
        "ray": None if config.ray is None else config.ray or "local",
        **hp,
    }
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in settings.items()
        if v is not None
    }


def _start(
    config: SearchConfig, run_dir: Path, state: dict | None, progress: bool, factory: EnvFactory
) -> dict:
    env = factory(config.env)
    rl = config.agent in ALGORITHMS
    if config.agent_init and not rl:
        raise ValueError(f"--agent-init warm-starts an RL agent; '{config.agent}' has no networks to start")
    overrides = {"warmup_episodes": 0, **config.hp} if config.agent_init else config.hp
    hp = load_preset(config.agent, config.env.model, overrides) if rl else dict(config.hp)
    recorder = EpisodeRecorder(
        run_dir,
        [u.name for u in env.units],
        config.episodes,
        state,
        progress,
        _hparams(config, hp),
        config.finalists,
    )
    vec_env = _make_vec_env(config, env, factory)
    try:
        if rl:
            propose = _learn(config, vec_env, env.n, hp, recorder, state)
        else:
            propose = _ask_tell(config, vec_env, env.n, hp, recorder, state)
    finally:
        vec_env.close()
    env.race_bar = None  # the final selection scores its candidates in full
    best = recorder.best
    if env.backend.scorer.has_selection and recorder.candidates:
        best = select_final(env, recorder, propose)
    recorder.release()
    warmup = min(int(hp.get("warmup_episodes", 100)), config.episodes) if rl else 0
    return {
        "run_dir": str(run_dir),
        "agent": config.agent,
        "episodes": recorder.episodes,
        "raced": recorder.raced,
        "warmup": warmup,
        "best": best,
        "seconds": recorder.elapsed + time.time() - recorder.t0,
        "env": env,
    }


Proposal = Callable[[PruningEnv], dict | None]
"""Plays the searcher's own noise-free policy in an env (a final-selection candidate)."""


def _learn(
    config: SearchConfig,
    vec_env: VecEnv,
    n_units: int,
    hp: dict,
    recorder: EpisodeRecorder,
    state: dict | None,
) -> Proposal:
    """Train a stable-baselines3 agent for the remaining episodes; returns its actor's proposal."""
    run_dir = recorder.run_dir
    agent, noise = make_agent(config.agent, vec_env, hp, n_units, config.seed, config.envs)
    spec = AgentSpec.of(config.agent, agent, hp, n_units)
    if state is not None:
        restore_checkpoint(agent, run_dir)  # tensors only: nothing in the run folder is unpickled
        agent.replay_buffer.load_npz(run_dir / "buffer.npz")
        agent._n_updates = int(state.get("n_updates", 0))
        if noise is not None:
            noise.load_state(state["noise"])
            agent.action_noise = noise
        agent.num_timesteps = int(state["num_timesteps"])
    elif config.agent_init:
        warm_start(agent, config.agent_init)
    agent.set_logger(recorder.open_logger())  # one event stream for the agent's and the recorder's records
    remaining = max(0, config.episodes - recorder.episodes)
    callbacks = [imitation_callback(hp), SearchCallback(recorder, spec, noise)]  # imitate, then checkpoint
    agent.learn(
        total_timesteps=remaining * n_units,
        callback=CallbackList([c for c in callbacks if c is not None]),
        reset_num_timesteps=state is None,
        log_interval=1,
    )
    save_agent(agent, spec, run_dir / AGENT_FILE)
    return lambda env: {
        **play_episode(env, lambda obs: agent.predict(obs, deterministic=True)[0]),
        "source": "actor",
    }


def _ask_tell(
    config: SearchConfig,
    vec_env: VecEnv,
    n_units: int,
    hp: dict,
    recorder: EpisodeRecorder,
    state: dict | None,
) -> Proposal:
    """Run an ask/tell searcher for the remaining episodes, ``config.envs`` episodes at a time."""
    searcher = SEARCHERS[config.agent](n_units, config.seed, **hp)
    if state is not None:
        searcher.load_state(state["searcher"])
    recorder.start()
    recorder.update_race(vec_env)
    while recorder.episodes < config.episodes:
        count = min(config.envs, config.episodes - recorder.episodes)
        actions = [searcher.ask() for _ in range(count)]
        for info in _play_round(vec_env, actions, n_units)[:count]:
            searcher.tell(np.asarray(info["actions"]), info["reward"])
            recorder.record(info)
        recorder.update_race(vec_env)
        recorder.checkpoint(lambda _: [], {"searcher": searcher.state()})
    recorder.close()

    def propose(env: PruningEnv) -> dict | None:
        actions = searcher.proposal()
        return None if actions is None else {**play_actions(env, actions), "source": f"{config.agent} mean"}

    return propose


def _play_round(vec_env: VecEnv, actions: list[np.ndarray], n_units: int) -> list[dict]:
    """One episode per environment in lockstep; environments beyond ``actions`` act at random."""
    rng = np.random.default_rng(len(actions))
    rows = [actions[i] if i < len(actions) else rng.uniform(-1, 1, n_units) for i in range(vec_env.num_envs)]
    batch = np.array(rows, dtype=np.float32)
    for t in range(n_units):
        _, _, dones, infos = vec_env.step(batch[:, t : t + 1])
    if not dones.all():
        raise RuntimeError("parallel environments must end their episodes together (same unit count)")
    return list(infos)


def warm_start(agent: Any, path: str | Path) -> None:
    """Load the networks (and their optimisers' states) of an earlier search's ``agent.pt`` into ``agent``.

    Only tensors are read (``weights_only``); the replay buffer, noise and counters start fresh.

    Raises:
        AgentFileError: The file is unsafe or damaged, or its networks do not fit ``agent``.
        FileNotFoundError: There is no agent file at ``path``.
    """
    spec, tensors = read_agent(path)
    try:
        if ALGORITHMS[spec.algorithm] is not type(agent):
            kind = type(agent).__name__.lower()
            raise AgentFileError(
                f"its networks (a {spec.algorithm} agent's) do not fit this {kind} agent; use an "
                f"{AGENT_FILE} saved by the same --agent and net_arch"
            )
        restore(agent, tensors)
    except AgentFileError as exc:
        raise AgentFileError(f"cannot warm-start from {path}: {exc}") from None


def _extra_candidates(env: PruningEnv, propose: Proposal) -> list[dict]:
    """The searcher's noise-free proposal, and the uniform policy in channel mode with a budget.

    The uniform policy is exactly the one ``amc search`` compares against at the end.
    """
    rows = []
    proposal = propose(env)
    if proposal is not None:
        rows.append(
            {
                **episode_summary(None, proposal),
                "source": proposal["source"],
                "sparsities": proposal["sparsities"],
            }
        )
    uniform = env.uniform_sparsities()
    if uniform is not None:
        rows.append(
            {**episode_summary(None, env.evaluate(uniform)), "source": "uniform", "sparsities": uniform}
        )
    return rows


def _meet_measured_latency(env: PruningEnv, row: dict) -> dict:
    """``row``'s policy with its *measured* latency ratio brought within tolerance of the target.

    The search budgets the latency table's prediction, which is a few per cent off the
    latency of the physically pruned model. This times the pruned model against the dense
    one and, while the ratio is more than :data:`LATENCY_TOLERANCE` off the target, moves
    the budget the policy is clamped to (:meth:`PruningEnv.rebudget`) by the measured error
    and measures again, at most :data:`LATENCY_CORRECTIONS` times. The row records
    ``measured_latency`` and, when the policy changed, its new scores.
    """
    target, budget = env.config.target, env.config.target
    sparsities = row["sparsities"]
    measured = env.backend.measured_latency(sparsities)
    for _ in range(LATENCY_CORRECTIONS):
        if abs(measured / target - 1) <= LATENCY_TOLERANCE:
            break
        budget *= target / measured
        sparsities = env.rebudget(sparsities, budget)
        measured = env.backend.measured_latency(sparsities)
    if abs(measured / target - 1) > LATENCY_TOLERANCE:
        log.warning(
            "measured latency %.3f is more than %.0f %% off the target %.2f",
            measured,
            100 * LATENCY_TOLERANCE,
            target,
        )
    if sparsities == row["sparsities"]:
        return {**row, "measured_latency": measured}
    log.info("latency budget moved to %.3f of the table's prediction: measured %.3f", budget, measured)
    selection = env.evaluate(sparsities, on="selection")
    return {
        **row,
        **env.evaluate(sparsities),
        "selection_accuracy": selection["accuracy"],
        "selection_reward": selection["reward"],
        "sparsities": sparsities,
        "measured_latency": measured,
        "latency_budget": budget,
    }


def select_final(env: PruningEnv, recorder: EpisodeRecorder, propose: Proposal) -> dict:
    """Re-score the finalists on the selection images; the best there becomes ``best_policy.json``.

    The best of hundreds of episodes, each scored on the same few thousand images, is the
    luckiest as much as the best (its score is biased upwards). Re-ranking the top few on
    images that no episode was scored on removes that bias from the choice. The finalists are
    the best episodes by reward, the searcher's noise-free proposal (the RL agent's actor,
    the CEM mean) and the uniform policy (so a search never hands back a policy that does
    worse than uniform there). Under a latency budget the winner's measured latency is then
    brought within tolerance of the target (:func:`_meet_measured_latency`). The ranking goes to
    ``finalists.json``; TensorBoard gets ``final/*`` scalars and the chosen policy.
    """
    rows = []
    for candidate in recorder.candidates + _extra_candidates(env, propose):
        selection = env.evaluate(candidate["sparsities"], on="selection")
        rows.append(
            {
                **candidate,
                "selection_accuracy": selection["accuracy"],
                "selection_reward": selection["reward"],
            }
        )
    rows.sort(key=lambda r: -r["selection_reward"])  # stable: ties keep the episodes' order
    if env.config.metric == "latency" and env.config.target is not None:
        rows[0] = _meet_measured_latency(env, rows[0])
    run_dir = recorder.run_dir
    write_atomic(run_dir / "finalists.json", json.dumps(rows, indent=1))
    final = {k: v for k, v in rows[0].items() if k != "sparsities"}
    keys = (
        "accuracy",
        "reward",
        "selection_accuracy",
        "source",
        "episode",
        "measured_latency",
        "latency_budget",
    )
    metrics = {k: final[k] for k in keys if k in final}
    policy = env.backend.policy(rows[0]["sparsities"], **metrics)
    title = f"final: {choice_label(final)}, selection accuracy {final['selection_accuracy']:.2f} %"
    scalars = {f"final/{key}": float(final[key]) for key in ("selection_accuracy", "accuracy")}
    recorder.show_best(policy, recorder.episodes, title, scalars)
    log.info("final policy: %s", title)
    return final


def run_search(config: SearchConfig, progress: bool = True, env_factory: EnvFactory = PruningEnv) -> dict:
    """Start a new search; returns the run folder, episode count, best result and wall time.

    ``env_factory`` builds the environment from ``config.env``; the default loads the zoo
    model and dataset named there (:func:`amc.search` passes one over the user's objects).
    """
    if config.agent not in AGENTS:
        raise ValueError(f"unknown agent '{config.agent}'; known agents: {', '.join(AGENTS)}")
    check_hp(config.agent, config.hp)
    _check_ray(config)
    run_dir = Path(config.runs_dir) / config.run_name()
    # One writer per run folder; a search that fails before its first episode leaves no folder.
    with claim_folder(run_dir, unused=lambda run: not (run / "episodes.csv").exists()):
        if (run_dir / "state.json").exists() or (run_dir / "episodes.csv").exists():
            raise FileExistsError(f"{run_dir} already holds a search; resume it with --resume {run_dir}")
        config.name = run_dir.name
        write_atomic(run_dir / "config.yaml", _config_yaml(config))
        write_atomic(run_dir / "command.txt", "")
        log_command(run_dir)
        return _start(config, run_dir, None, progress, env_factory)


def _check_ray(config: SearchConfig) -> None:
    """Fail at once, before any model is loaded, when the run asks for Ray and it is not installed."""
    if config.ray is not None:
        from amc.agents.ray_vec import require_ray

        require_ray()


_KEEP: Any = object()


def resume_search(
    run_dir: str | Path,
    episodes: int | None = None,
    progress: bool = True,
    env_factory: EnvFactory | None = None,
    *,
    ray: str | None = _KEEP,
) -> dict:
    """Continue the search in ``run_dir`` from its last checkpoint (optionally to more episodes).

    A search over Python objects (``dataset: python`` in its config) needs ``env_factory``
    to rebuild its environment, i.e. it resumes through :func:`amc.search`. The run keeps
    its own settings, Ray included; ``ray`` (an address, ``"local"``, or ``None`` for
    subprocess environments) scores the remaining episodes elsewhere, e.g. when the cluster
    that started the run is gone (it is written to ``config.yaml``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a search run folder (no config.yaml)")
    config = SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    moved = ray is not _KEEP and ray != config.ray
    if moved:
        config = dataclasses.replace(config, ray=ray)
    _check_ray(config)
    if env_factory is None:
        if config.env.dataset == "python":
            raise ValueError(
                f"{run_dir} searched a model object from Python: resume it with "
                f"amc.search(model, example_inputs, evaluate, ..., run_dir='{run_dir}')"
            )
        env_factory = PruningEnv
    with claim_folder(run_dir):  # refused while another process runs it; repairs what a kill left
        state = read_state(run_dir)
        done = state["episodes"] if state else 0
        if episodes is not None:
            if episodes < done:
                raise RunFolderError(f"{run_dir} has run {done} episodes already; ask for {done} or more")
            config = dataclasses.replace(config, episodes=episodes)
        if episodes is not None or moved:
            write_atomic(run_dir / "config.yaml", _config_yaml(config))
        repair_episodes(run_dir / "episodes.csv", done)
        log_command(run_dir)
        log.info("resuming %s at episode %d", run_dir, done)
        return _start(config, run_dir, state, progress, env_factory)
