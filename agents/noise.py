"""Exploration noise of the AMC agent: truncated normal, sigma decaying once per episode."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise


class DecayingTruncatedNormalNoise(VectorizedActionNoise):
    """Zero-mean normal noise truncated at ``±bound`` sigmas, whose sigma shrinks per episode.

    Stable-baselines3 adds the sample to the actor's action and clips to the action space;
    :meth:`reset` is called at the end of every episode and multiplies sigma by ``decay``
    once the ``warmup_episodes`` (uniform random actions, no noise) are over.

    One object serves all ``n_envs`` parallel environments (independent samples, one shared
    sigma that decays once per finished episode). It derives from
    :class:`~stable_baselines3.common.noise.VectorizedActionNoise` so that stable-baselines3
    does not wrap it in per-environment copies, whose state the search could not checkpoint.

    Args:
        sigma: Initial standard deviation (in the [-1, 1] action scale).
        decay: Factor applied per episode after the warm-up.
        warmup_episodes: Episodes before decaying starts.
        bound: Truncation in standard deviations.
        size: Action dimension.
        seed: Seed of the noise generator.
        n_envs: Parallel environments (one independent sample each).
    """

    def __init__(
        self,
        sigma: float = 0.5,
        decay: float = 0.95,
        warmup_episodes: int = 100,
        bound: float = 2.0,
        size: int = 1,
        seed: int | None = None,
        n_envs: int = 1,
    ):
        ActionNoise.__init__(self)  # not VectorizedActionNoise's: no per-env copies
        self.n_envs = n_envs
        self.sigma0, self.sigma, self.decay = sigma, sigma, decay
        self.warmup_episodes, self.bound, self.size = warmup_episodes, bound, size
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        """One noise sample, resampling any component beyond the truncation."""
        shape = (self.n_envs, self.size) if self.n_envs > 1 else (self.size,)
        x = self.rng.standard_normal(shape)
        bad = np.abs(x) > self.bound
        while bad.any():
            x[bad] = self.rng.standard_normal(int(bad.sum()))
            bad = np.abs(x) > self.bound
        return (self.sigma * x).astype(np.float32)

    def reset(self, indices: list[int] | None = None) -> None:
        """End of an episode: decay sigma (after the warm-up)."""
        self.episodes += 1
        if self.episodes > self.warmup_episodes:
            self.sigma *= self.decay

    def state(self) -> dict:
        """JSON-able state, for resuming."""
        return {"sigma": self.sigma, "episodes": self.episodes}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`."""
        self.sigma, self.episodes = float(state["sigma"]), int(state["episodes"])

    def __repr__(self) -> str:
        return f"DecayingTruncatedNormalNoise(sigma={self.sigma:.4f}, decay={self.decay})"
