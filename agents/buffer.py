"""AMC's replay buffer: applied actions, and the terminal reward for every transition.

Stable-baselines3 calls :meth:`EpisodeRewardReplayBuffer.add` once per step. This buffer
keeps an episode's transitions aside (per environment) until it ends, then stores them all
with reward ``R - b``: the episode's terminal reward minus a moving-average baseline ``b``.
The stored action is the one the environment applied (after the action wall), read from
``info["applied_action"]``. It also remembers the ``elite_episodes`` best whole episodes
(observations and applied actions) by final reward, long after the ring buffer has
overwritten them, for :class:`~amc.agents.elite.EliteImitation`. The buffer saves and loads
itself as ``.npz`` (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer

from amc.files import atomic_path


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """Replay buffer giving each transition its episode's baseline-subtracted final reward.

    Args:
        *args: As for :class:`stable_baselines3.common.buffers.ReplayBuffer`.
        n_envs: Number of parallel environments (transitions are stored one by one).
        baseline_alpha: Weight of the old baseline in ``b <- a*b + (1-a)*R``.
        elite_episodes: How many of the best episodes to remember (0: none).
        **kwargs: As for the base class.
    """

    def __init__(
        self,
        *args: Any,
        n_envs: int = 1,
        baseline_alpha: float = 0.5,
        elite_episodes: int = 0,
        **kwargs: Any,
    ):
        super().__init__(*args, n_envs=1, **kwargs)
        self.source_envs = n_envs
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self.pending: list[list[tuple]] = [[] for _ in range(n_envs)]
        self.episodes = 0
        self.elite_episodes = elite_episodes
        self.elites: list[tuple[float, np.ndarray, np.ndarray]] = []

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Hold one step per environment; store a whole episode when it ends."""
        for i in range(len(infos)):
            applied = infos[i].get("applied_action", action[i])
            self.pending[i].append((obs[i], next_obs[i], np.asarray(applied, dtype=np.float32).reshape(-1)))
            if done[i]:
                self._flush(i, float(reward[i]))

    def _flush(self, env: int, final_reward: float) -> None:
        if self.baseline is None:
            self.baseline = final_reward
        else:
            self.baseline = self.baseline_alpha * self.baseline + (1 - self.baseline_alpha) * final_reward
        advantage = final_reward - self.baseline
        steps = self.pending[env]
        for j, (o, o2, a) in enumerate(steps):
            last = j == len(steps) - 1
            super().add(o[None], o2[None], a[None], np.array([advantage]), np.array([last]), [{}])
        self.pending[env] = []
        self.episodes += 1
        self._keep_elite(final_reward, steps)

    def _keep_elite(self, reward: float, steps: list[tuple]) -> None:
        """Remember the episode if it is among the ``elite_episodes`` best (ties: the earlier)."""
        if not self.elite_episodes:
            return
        obs = np.stack([o.reshape(-1) for o, _, _ in steps]).astype(np.float32)
        actions = np.stack([a for _, _, a in steps]).astype(np.float32)
        self.elites.append((reward, obs, actions))
        self.elites.sort(key=lambda e: -e[0])
        del self.elites[self.elite_episodes :]

    def elite_transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Observations and applied actions of every remembered elite step, stacked."""
        return np.concatenate([o for _, o, _ in self.elites]), np.concatenate([a for _, _, a in self.elites])

    _ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    def save_npz(self, path: str | Path) -> None:
        """Write the stored transitions and the baseline to ``path`` (``.npz``), atomically."""
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k, None) is not None}
        meta = np.array(
            [self.pos, int(self.full), self.episodes, np.nan if self.baseline is None else self.baseline]
        )
        if self.elites:
            arrays["elite_rewards"] = np.array([r for r, _, _ in self.elites])
            arrays["elite_obs"] = np.stack([o for _, o, _ in self.elites])
            arrays["elite_actions"] = np.stack([a for _, _, a in self.elites])
        with atomic_path(path) as tmp:
            np.savez(tmp, meta=meta, **arrays)

    def load_npz(self, path: str | Path) -> None:
        """Restore what :meth:`save_npz` wrote (episodes in progress are not kept)."""
        with np.load(path, allow_pickle=False) as z:
            for k in self._ARRAYS:
                if k in z.files and getattr(self, k, None) is not None:
                    getattr(self, k)[...] = z[k]
            pos, full, episodes, baseline = z["meta"]
            if "elite_rewards" in z.files:
                self.elites = [
                    (float(r), o, a)
                    for r, o, a in zip(z["elite_rewards"], z["elite_obs"], z["elite_actions"], strict=True)
                ]
        self.pos, self.full, self.episodes = int(pos), bool(full), int(episodes)
        self.baseline = None if np.isnan(baseline) else float(baseline)
