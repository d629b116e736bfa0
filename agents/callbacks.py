"""Recording a search: per-episode records, best policy, TensorBoard, and resumable checkpoints.

:class:`EpisodeRecorder` does the work for every searcher; :class:`SearchCallback` plugs it
into a stable-baselines3 agent's ``learn()`` loop and checkpoints the agent with it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from amc.agents.agent_file import AGENT_FILE, SPEC_FILE, AgentSpec, save_agent
from amc.agents.tensorboard import policy_bar_chart, policy_heatmap, policy_table
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam, Image, Logger, configure
from stable_baselines3.common.vec_env import VecEnv
from tqdm import tqdm

from amc.files import append_text, commit, temp_path, write_atomic
from amc.policy import Policy

log = logging.getLogger(__name__)
RATIOS = ("flops_ratio", "params_ratio", "latency_ratio")
HEATMAP_EVERY = 25
"""Episodes between two redraws of the sparsity heatmap (and at the end)."""


def episode_summary(ep: int | None, info: dict) -> dict:
    """Episode number, reward, accuracy and cost ratios of a finished episode's ``info``."""
    return {
        "episode": ep,
        "reward": info["reward"],
        "accuracy": info["accuracy"],
        **{k: info[k] for k in RATIOS if k in info},
    }


class EpisodeRecorder:
    """Record every finished episode of a search and checkpoint it.

    Files in ``run_dir``: ``episodes.csv`` (appended per episode), TensorBoard events
    (per-episode scalars, the best policy as a chart and a table, and a heatmap of every
    unit's sparsity over the episodes), and the checkpoint: ``state.json`` with
    ``best_policy.json`` and the searcher's own files, replaced together
    (:func:`amc.files.commit`), so they always describe the same episode.

    The events go through one stable-baselines3 :class:`~stable_baselines3.common.logger.Logger`
    per run (:meth:`open_logger`), which an RL agent logs through as well: a search process
    writes one event file, holding the episodes and the agent's ``train/*`` losses.

    Args:
        run_dir: The run folder.
        unit_names: Unit names, for the CSV header and the heatmap.
        total_episodes: Episodes the search will run in all.
        state: Restored state when resuming (``episodes``, ``best``, ``candidates``), else ``None``.
        progress: Show a progress bar.
        hparams: The run's flattened settings, shown in TensorBoard's text and HParams tabs.
        finalists: How many of the best episodes (by reward) to keep as final candidates.
    """

    def __init__(
        self,
        run_dir: Path,
        unit_names: list[str],
        total_episodes: int,
        state: dict | None = None,
        progress: bool = True,
        hparams: dict[str, Any] | None = None,
        finalists: int = 10,
    ):
        self.run_dir, self.unit_names, self.total_episodes = Path(run_dir), unit_names, total_episodes
        state = state or {}
        self.episodes = int(state.get("episodes", 0))
        self.best: dict = state.get("best", {})
        self.finalists = finalists
        self.candidates: list[dict] = state.get("candidates", [])
        self.raced = int(state.get("raced", 0))
        self._sent_bar: float | None = None
        self.progress = progress
        self.saved_episodes = self.episodes
        self.t0 = time.time()
        self.elapsed = float(state.get("elapsed", 0.0))
        self.hparams = hparams or {}
        self.logger: Logger | None = None
        self._records: Logger | None = None
        self.bar: tqdm | None = None
        self.pending_best: Policy | None = None

    def open_logger(self) -> Logger:
        """The run's TensorBoard logger (opened on the first call); give it to the agent too.

        Its one output (a TensorBoard event file in ``run_dir``) takes the agent's records at
        its timesteps and the recorder's at episode numbers. The recorder records through a
        second :class:`Logger` over that same output, so that dumping an episode never writes
        values the agent has recorded and not dumped yet (its losses) at the episode's step.
        """
        if self.logger is None:
            self.logger = configure(str(self.run_dir), ["tensorboard"])
            self._records = Logger(self.logger.dir, self.logger.output_formats)
        return self.logger

    def write(self, values: dict[str, Any], step: int) -> None:
        """Write ``values`` at ``step`` now, besides anything recorded since the last write.

        Numbers become scalars, text a text entry, arrays histograms; stable-baselines3's
        :class:`~stable_baselines3.common.logger.Image` and ``HParam`` wrappers images and hyper-parameters.
        """
        self.open_logger()
        for key, value in values.items():
            self._records.record(key, value)
        self._records.dump(step)

    def start(self) -> None:
        """Open the TensorBoard logger and the progress bar."""
        self.open_logger()
        if self.hparams:
            table = "\n".join(
                ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.hparams.items()]
            )
            self.write({"run/hparams": table}, self.episodes)
        self.bar = tqdm(
            total=self.total_episodes,
            initial=self.episodes,
            desc="search",
            unit="ep",
            disable=not self.progress,
            dynamic_ncols=True,
        )

    def record(self, info: dict, scalars: dict[str, float] | None = None) -> None:
        """Log one finished episode (its ``info`` from the environment's last step)."""
        self.episodes += 1
        ep = self.episodes
        self._append_csv(ep, info)
        values = {f"episode/{k}": float(v) for k, v in episode_summary(ep, info).items() if k != "episode"}
        values.update({f"episode/{k}": float(v) for k, v in (scalars or {}).items()})
        values["episode/actions"] = np.asarray(info["sparsities"], dtype=np.float64)  # a histogram
        if info.get("scored_images") is not None:  # stopped by its race: below every finalist
            self.raced += 1
        else:
            if not self.best or info["reward"] > self.best["reward"]:
                values.update(self._new_best(ep, info))
            self._keep_candidate(ep, info)
        best = {k: v for k, v in self.best.items() if k in ("reward", "accuracy", *RATIOS)}
        values.update({f"best/{k}": float(v) for k, v in best.items()})
        if ep % HEATMAP_EVERY == 0:
            values.update(self.heatmap())
        self.write(values, ep)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                reward=f"{info['reward']:.3f}",
                best_acc=f"{self.best['accuracy']:.2f}",
                flops=f"{info.get('flops_ratio', 0):.3f}",
            )

    def _append_csv(self, ep: int, info: dict) -> None:
        path = self.run_dir / "episodes.csv"
        text = io.StringIO()
        writer = csv.writer(text)
        if not path.exists() or path.stat().st_size == 0:
            writer.writerow(["episode", "reward", "accuracy", *RATIOS, *self.unit_names, "scored_images"])
        writer.writerow(
            [
                ep,
                f"{info['reward']:.6f}",
                f"{info['accuracy']:.4f}",
                *(f"{info[k]:.6f}" if k in info else "" for k in RATIOS),
                *(f"{s:.6f}" for s in info["sparsities"]),
                "" if info.get("scored_images") is None else info["scored_images"],
            ]
        )
        append_text(path, text.getvalue())

    def sparsity_history(self) -> np.ndarray:
        """Every recorded episode's per-unit sparsities (episodes x units), from ``episodes.csv``."""
        path = self.run_dir / "episodes.csv"
        if not path.exists():
            return np.zeros((0, len(self.unit_names)))
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return np.array([[float(r[u]) for u in self.unit_names] for r in rows]).reshape(
            -1, len(self.unit_names)
        )

    def heatmap(self) -> dict[str, Image]:
        """TensorBoard image ``search/sparsity_heatmap``: units (rows) over episodes (columns)."""
        history = self.sparsity_history()
        if not len(history):
            return {}
        title = f"per-unit sparsity over {len(history)} episodes"
        return {"search/sparsity_heatmap": Image(policy_heatmap(history.T, self.unit_names, title), "HWC")}

    def race_bar(self) -> float | None:
        """The reward an episode must beat to join the final candidates, once there are enough of them.

        That is the worst finalist's reward (with no finalists, the best episode's); ``None``
        until the finalists are complete, so the first episodes are scored in full.
        """
        if not self.finalists:
            return self.best["reward"] if self.best else None
        return self.candidates[-1]["reward"] if len(self.candidates) == self.finalists else None

    def update_race(self, vec_env: VecEnv) -> None:
        """Give the environments the current :meth:`race_bar`, when it changed."""
        bar = self.race_bar()
        if bar != self._sent_bar:
            vec_env.set_attr("race_bar", bar)
            self._sent_bar = bar

    def _keep_candidate(self, ep: int, info: dict) -> None:
        """Keep the ``finalists`` best episodes by reward (ties: the earlier episode)."""
        candidate = {**episode_summary(ep, info), "source": "episode", "sparsities": list(info["sparsities"])}
        self.candidates.append(candidate)
        self.candidates.sort(key=lambda c: (-c["reward"], c["episode"]))
        del self.candidates[self.finalists :]

    def _new_best(self, ep: int, info: dict) -> dict[str, Any]:
        """Take episode ``ep`` as the best so far; its pictures for TensorBoard."""
        self.best = episode_summary(ep, info)
        policy = Policy(**json.loads(info["policy_json"]))
        policy.metrics.update(episode=ep)
        self.pending_best = policy  # saved with the checkpoint that records this episode
        return self._best_pictures(policy, f"episode {ep}: accuracy {info['accuracy']:.2f} %")

    def show_best(self, policy: Policy, step: int, title: str, values: dict[str, Any] | None = None) -> None:
        """Save ``policy`` as ``best_policy.json``; draw it (bar chart and table) in TensorBoard.

        ``values``: further records written with the pictures at ``step`` (see :meth:`write`).
        """
        policy.save(self.run_dir / "best_policy.json")
        self.write({**(values or {}), **self._best_pictures(policy, title)}, step)

    @staticmethod
    def _best_pictures(policy: Policy, title: str) -> dict[str, Any]:
        title += f", FLOPs {policy.ratios().get('flops_ratio', 0):.3f}"
        return {
            "best/policy": Image(policy_bar_chart(policy.sparsities, title), "HWC"),
            "best/policy_table": policy_table(policy.sparsities, policy.kept),
        }

    def checkpoint(self, save_files: Callable[[Path], list[str]], extra_state: dict[str, Any]) -> None:
        """Save the searcher and the run's state, if an episode finished since the last save.

        ``save_files(run_dir)`` writes the searcher's files under their staged names
        (:func:`amc.files.temp_path`) and returns their final names. They, a new best policy
        and ``state.json`` are then replaced together (:func:`amc.files.commit`): after a kill,
        all of them describe the same episode.
        """
        if self.episodes == self.saved_episodes:
            return
        run = self.run_dir
        names = save_files(run)
        if self.pending_best is not None:
            self.pending_best.save(temp_path(run / "best_policy.json"))
            names.append("best_policy.json")
        state = {
            "episodes": self.episodes,
            "best": self.best,
            "candidates": self.candidates,
            "raced": self.raced,
            "elapsed": self.elapsed + time.time() - self.t0,
            **extra_state,
        }
        write_atomic(temp_path(run / "state.json"), json.dumps(state, indent=1))
        commit(run, [*names, "state.json"])
        self.saved_episodes = self.episodes
        self.pending_best = None

    def close(self) -> None:
        """Draw the final heatmap, log the hyper-parameters and close the bar (the logger stays open)."""
        if self.logger is None:
            return
        values: dict[str, Any] = self.heatmap()
        if self.hparams and self.best:
            metrics = {f"hparam/best_{k}": float(v) for k, v in self.best.items() if k != "episode"}
            values.update(metrics, hparams=HParam(self.hparams, metrics))  # the metrics as scalars too
        self.write(values, self.episodes)
        if self.bar is not None:
            self.bar.close()

    def release(self) -> None:
        """Close the run's logger (after the final selection has written to it)."""
        if self.logger is not None:
            self.logger.close()
            self.logger = self._records = None


class SearchCallback(BaseCallback):
    """Plug an :class:`EpisodeRecorder` into a stable-baselines3 agent's training loop.

    After every episode (once it is in the replay buffer) the agent is checkpointed:
    ``agent.pt`` with ``agent.json`` (:mod:`amc.agents.agent_file`) and ``buffer.npz`` beside
    the recorder's ``state.json``, which also holds the exploration noise's state.

    Args:
        recorder: Records the episodes.
        spec: How to rebuild the agent (written as ``agent.json``).
        noise: The agent's exploration noise (its state is checkpointed), if any.
    """

    def __init__(self, recorder: EpisodeRecorder, spec: AgentSpec, noise: Any = None):
        super().__init__()
        self.recorder, self.spec, self.noise = recorder, spec, noise
        self.noise_state = noise.state() if noise is not None else None

    def _on_training_start(self) -> None:
        if self.noise is not None:
            # learn() resets the noise once before the first episode: that is no episode's end,
            # so undo it (otherwise sigma decays one episode early, and once more per resume).
            self.noise.load_state(self.noise_state)
        self.recorder.start()
        self.recorder.update_race(self.training_env)

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done and "accuracy" in info:
                scalars = {"noise_sigma": self.noise.sigma} if self.noise is not None else None
                self.recorder.record(info, scalars)
                self.recorder.update_race(self.training_env)
        return True

    def _save_agent(self, run: Path) -> list[str]:
        save_agent(self.model, self.spec, temp_path(run / AGENT_FILE))
        self.model.replay_buffer.save_npz(temp_path(run / "buffer.npz"))
        return [AGENT_FILE, SPEC_FILE, "buffer.npz"]

    def checkpoint(self) -> None:
        """Save agent, replay buffer and state (see :meth:`EpisodeRecorder.checkpoint`)."""
        extra = {
            "num_timesteps": self.model.num_timesteps,
            "n_updates": self.model._n_updates,
            "noise": self.noise.state() if self.noise is not None else None,
        }
        self.recorder.checkpoint(self._save_agent, extra)

    def _on_rollout_end(self) -> None:
        # The finished episode is in the replay buffer now (stored after on_step).
        self.checkpoint()

    def _on_training_end(self) -> None:
        self.checkpoint()
        self.recorder.close()
