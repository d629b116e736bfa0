"""Searchers without a neural network: uniform random sampling and the cross-entropy method.

They run in the same :class:`~amc.envs.pruning_env.PruningEnv` as the RL agents (same action
wall, same scoring, same episode budget, same final selection), so a comparison between them
isolates how the per-unit actions are chosen. Both follow an ask/tell interface over whole
episodes: :meth:`ask` proposes one action per unit, the environment applies them (clamping
through the action wall), and :meth:`tell` receives the actions it really applied and the
episode's reward. Their state is plain JSON, so a search resumes exactly after a kill.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class Searcher:
    """Base of the ask/tell searchers: a seeded generator and JSON state.

    Args:
        n_units: Actions per episode (one per pruning unit).
        seed: Seed of the generator.
        **hp: Searcher settings (see the subclasses).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, n_units: int, seed: int = 0, **hp: Any):
        unknown = set(hp) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"unknown {self.name} setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(self.defaults) or 'none'}"
            )
        self.n = n_units
        self.hp = {**self.defaults, **hp}
        self.rng = np.random.default_rng(seed)

    def ask(self) -> np.ndarray:
        """Actions in [-1, 1] for the next episode, one per unit."""
        raise NotImplementedError

    def tell(self, applied: np.ndarray, reward: float) -> None:
        """Learn from a finished episode: the actions the environment applied and the reward."""

    def proposal(self) -> np.ndarray | None:
        """The searcher's noise-free proposal (a final-selection candidate), if it has one."""
        return None

    def state(self) -> dict[str, Any]:
        """JSON-able state, for resuming."""
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.rng.bit_generator.state = state["rng"]


class RandomSearcher(Searcher):
    """Uniform random actions for every unit: the honest baseline (an RL agent's warm-up, throughout)."""

    name = "random"

    def ask(self) -> np.ndarray:
        """Uniform actions in [-1, 1]."""
        return self.rng.uniform(-1.0, 1.0, self.n)


class CEMSearcher(Searcher):
    """The cross-entropy method over per-unit actions.

    The first generation is uniform random. Each later generation samples a Gaussian (per-unit
    mean and standard deviation); after a generation the Gaussian moves towards the elite
    episodes (the best ``elite_frac`` by reward among the generation and the elites kept
    from earlier generations), smoothed by ``smoothing`` and with its deviation kept at or
    above ``min_std``. Keeping earlier elites makes the method robust to noisy scores: a
    lucky episode stays an elite only until better ones replace it.

    Settings (``hp``): ``population`` episodes per generation (20), ``elite_frac`` (0.25),
    ``smoothing`` weight of the new estimate (0.7), ``init_std`` (0.5), ``min_std`` (0.05).
    """

    name = "cem"
    defaults: ClassVar[dict[str, Any]] = {
        "population": 20,
        "elite_frac": 0.25,
        "smoothing": 0.7,
        "init_std": 0.5,
        "min_std": 0.05,
    }

    def __init__(self, n_units: int, seed: int = 0, **hp: Any):
        super().__init__(n_units, seed, **hp)
        self.mean: np.ndarray | None = None
        self.std = np.full(n_units, float(self.hp["init_std"]))
        self.generation: list[tuple[float, list[float]]] = []
        self.elites: list[tuple[float, list[float]]] = []

    def ask(self) -> np.ndarray:
        """Uniform actions in the first generation, then a draw from the current Gaussian."""
        if self.mean is None:
            return self.rng.uniform(-1.0, 1.0, self.n)
        return np.clip(self.mean + self.std * self.rng.standard_normal(self.n), -1.0, 1.0)

    def tell(self, applied: np.ndarray, reward: float) -> None:
        """Collect the episode; refit the Gaussian once a generation is complete."""
        self.generation.append((float(reward), [float(a) for a in applied]))
        if len(self.generation) < int(self.hp["population"]):
            return
        n_elite = max(2, round(float(self.hp["elite_frac"]) * len(self.generation)))
        pool = sorted(self.elites + self.generation, key=lambda e: -e[0])
        self.elites, self.generation = pool[:n_elite], []
        actions = np.array([a for _, a in self.elites])
        mean, std = actions.mean(0), actions.std(0)
        w = float(self.hp["smoothing"])
        self.mean = mean if self.mean is None else w * mean + (1 - w) * self.mean
        self.std = np.maximum(w * std + (1 - w) * self.std, float(self.hp["min_std"]))

    def proposal(self) -> np.ndarray | None:
        """The Gaussian's mean (``None`` before the first generation is complete)."""
        return None if self.mean is None else self.mean.copy()

    def state(self) -> dict[str, Any]:
        """JSON-able state, for resuming."""
        return {
            **super().state(),
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": self.std.tolist(),
            "generation": self.generation,
            "elites": self.elites,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        super().load_state(state)
        self.mean = None if state["mean"] is None else np.asarray(state["mean"])
        self.std = np.asarray(state["std"])
        self.generation = [(r, list(a)) for r, a in state["generation"]]
        self.elites = [(r, list(a)) for r, a in state["elites"]]


SEARCHERS: dict[str, type[Searcher]] = {s.name: s for s in (RandomSearcher, CEMSearcher)}
