"""The search callback: per-episode records, best policy, TensorBoard, and resumable checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from amc.agents.tensorboard import policy_bar_chart, policy_table
from stable_baselines3.common.callbacks import BaseCallback
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from amc.policy import Policy

log = logging.getLogger(__name__)
RATIOS = ("flops_ratio", "params_ratio", "latency_ratio")


def episode_summary(ep: int | None, info: dict) -> dict:
    """Episode number, reward, accuracy and cost ratios of a finished episode's ``info``."""
    return {
        "episode": ep,
        "reward": info["reward"],
        "accuracy": info["accuracy"],
        **{k: info[k] for k in RATIOS if k in info},
    }


class SearchCallback(BaseCallback):
    """Record every finished episode and checkpoint the search after each one.

    Files in ``run_dir``: ``episodes.csv`` (appended per episode), ``best_policy.json``,
    ``agent.zip`` + ``buffer.npz`` + ``state.json`` (the checkpoint, written once the episode
    is in the replay buffer; ``state.json`` last, atomically), TensorBoard events.

    Args:
        run_dir: The run folder.
        unit_names: Unit names, for the CSV header.
        total_episodes: Episodes the search will run in all.
        state: Restored state when resuming (``episodes``, ``best``), else ``None``.
        noise: The agent's exploration noise (its state is checkpointed), if any.
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
        noise: Any = None,
        progress: bool = True,
        hparams: dict[str, Any] | None = None,
        finalists: int = 10,
    ):
        super().__init__()
        self.run_dir, self.unit_names, self.total_episodes = Path(run_dir), unit_names, total_episodes
        state = state or {}
        self.episodes = int(state.get("episodes", 0))
        self.best: dict = state.get("best", {})
        self.finalists = finalists
        self.candidates: list[dict] = state.get("candidates", [])
        self.noise, self.progress = noise, progress
        self.noise_state = noise.state() if noise is not None else None
        self.saved_episodes = self.episodes
        self.t0 = time.time()
        self.elapsed = float(state.get("elapsed", 0.0))
        self.hparams = hparams or {}
        self.writer: SummaryWriter | None = None
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        if self.noise is not None:
            # learn() resets the noise once before the first episode: that is no episode's end,
            # so undo it (otherwise sigma decays one episode early, and once more per resume).
            self.noise.load_state(self.noise_state)
        self.writer = SummaryWriter(str(self.run_dir))
        if self.hparams:
            table = "\n".join(
                ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.hparams.items()]
            )
            self.writer.add_text("run/hparams", table, self.episodes)
        self.bar = tqdm(
            total=self.total_episodes,
            initial=self.episodes,
            desc="search",
            unit="ep",
            disable=not self.progress,
            dynamic_ncols=True,
        )

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done and "accuracy" in info:
                self._record(info)
        return True

    def _record(self, info: dict) -> None:
        self.episodes += 1
        ep = self.episodes
        self._append_csv(ep, info)
        w = self.writer
        w.add_scalar("episode/reward", info["reward"], ep)
        w.add_scalar("episode/accuracy", info["accuracy"], ep)
        for key in RATIOS:
            if key in info:
                w.add_scalar(f"episode/{key}", info[key], ep)
        w.add_histogram("episode/actions", np.asarray(info["sparsities"]), ep)
        if self.noise is not None:
            w.add_scalar("episode/noise_sigma", self.noise.sigma, ep)
        if not self.best or info["reward"] > self.best["reward"]:
            self._new_best(ep, info)
        self._keep_candidate(ep, info)
        for key in ("reward", "accuracy", *RATIOS):
            if key in self.best:
                w.add_scalar(f"best/{key}", self.best[key], ep)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                reward=f"{info['reward']:.3f}",
                best_acc=f"{self.best['accuracy']:.2f}",
                flops=f"{info.get('flops_ratio', 0):.3f}",
            )

    def _append_csv(self, ep: int, info: dict) -> None:
        path = self.run_dir / "episodes.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["episode", "reward", "accuracy", *RATIOS, *self.unit_names])
            writer.writerow(
                [
                    ep,
                    f"{info['reward']:.6f}",
                    f"{info['accuracy']:.4f}",
                    *(f"{info[k]:.6f}" if k in info else "" for k in RATIOS),
                    *(f"{s:.6f}" for s in info["sparsities"]),
                ]
            )
            f.flush()
            os.fsync(f.fileno())

    def _keep_candidate(self, ep: int, info: dict) -> None:
        """Keep the ``finalists`` best episodes by reward (ties: the earlier episode)."""
        candidate = {**episode_summary(ep, info), "source": "episode", "sparsities": list(info["sparsities"])}
        self.candidates.append(candidate)
        self.candidates.sort(key=lambda c: (-c["reward"], c["episode"]))
        del self.candidates[self.finalists :]

    def _new_best(self, ep: int, info: dict) -> None:
        self.best = episode_summary(ep, info)
        policy = Policy(**json.loads(info["policy_json"]))
        policy.metrics.update(episode=ep)
        self.show_best(policy, ep, f"episode {ep}: accuracy {info['accuracy']:.2f} %")

    def show_best(self, policy: Policy, step: int, title: str) -> None:
        """Save ``policy`` as ``best_policy.json`` and draw it (bar chart and table) in TensorBoard."""
        policy.save(self.run_dir / "best_policy.json")
        title += f", FLOPs {policy.ratios().get('flops_ratio', 0):.3f}"
        self.writer.add_image(
            "best/policy", policy_bar_chart(policy.sparsities, title), step, dataformats="HWC"
        )
        self.writer.add_text("best/policy_table", policy_table(policy.sparsities, policy.kept), step)

    def checkpoint(self) -> None:
        """Save agent, replay buffer and state: all three written aside, then renamed in a row."""
        if self.episodes == self.saved_episodes:
            return
        run = self.run_dir
        self.model.save(run / "agent.tmp.zip")
        self.model.replay_buffer.save_npz(run / "buffer.tmp.npz")
        state = {
            "episodes": self.episodes,
            "best": self.best,
            "candidates": self.candidates,
            "num_timesteps": self.model.num_timesteps,
            "noise": self.noise.state() if self.noise is not None else None,
            "elapsed": self.elapsed + time.time() - self.t0,
        }
        (run / "state.tmp.json").write_text(json.dumps(state, indent=1))
        for name in ("agent.zip", "buffer.npz", "state.json"):  # state last: it vouches for the others
            (run / name.replace(".", ".tmp.", 1)).replace(run / name)
        self.saved_episodes = self.episodes
        if self.writer is not None:
            self.writer.flush()

    def _on_rollout_end(self) -> None:
        # The finished episode is in the replay buffer now (stored after on_step).
        self.checkpoint()

    def _on_training_end(self) -> None:
        self.checkpoint()
        if self.hparams and self.best:
            metrics = {f"hparam/best_{k}": float(v) for k, v in self.best.items() if k != "episode"}
            self.writer.add_hparams(self.hparams, metrics, run_name=".")
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
