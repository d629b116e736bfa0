"""The AMC environment: walk the pruning units in execution order, one sparsity per unit.

Observation: the unit's embedding (:mod:`amc.envs.embedding`), a ``Box`` in [0, 1].
Action: one number in [-1, 1], mapped linearly to a sparsity in [0, max_sparsity], then
clamped by the action wall (when a target is set) and rounded to whole channels. The applied
action is reported in ``info["applied_action"]`` (same [-1, 1] scale) so that agents learn
from what was done. The reward arrives at the last unit, with ``info`` holding the policy,
the accuracy on the search split, the cost ratios, and the applied sparsities and actions.

Racing: while :attr:`PruningEnv.race_bar` holds a reward (a search sets it through
``VecEnv.set_attr`` to the reward of its worst finalist), an episode's scoring stops as soon
as its reward can no longer beat it (:class:`~amc.scoring.Race`); ``info["scored_images"]``
then says how many images it was scored on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from amc.envs.config import EnvConfig, build_backend, object_backend
from amc.envs.embedding import FEATURES, kind_flags, observation, rest_fractions, static_table
from amc.envs.rewards import get_reward
from amc.envs.wall import ActionWall
from torch import nn

from amc.backends import ChannelBackend, FineGrainedBackend
from amc.baselines import TargetError, uniform_policy
from amc.scoring import Evaluate, Race


class PruningEnv(gym.Env):
    """Gymnasium environment of the AMC search (structured or fine-grained).

    Args:
        config: Environment settings; keyword arguments override its fields.
        backend: A ready backend (skips loading model and data from ``config``).
        example_inputs: With ``model=<nn.Module>``: an input batch of the model.
        evaluate: With ``model=<nn.Module>``: the model -> a score, higher is better.
        selection: With ``model=<nn.Module>``: the final selection's evaluation (optional).
        calibration: With ``model=<nn.Module>``: inputs for reconstruction and BatchNorm
            recalibration (a tensor or an iterable of batches; optional).
        **overrides: Fields of :class:`EnvConfig`, e.g. ``model="plain20"``, ``target=0.3``;
            ``model`` may also be an ``nn.Module`` (see :func:`~amc.envs.config.object_backend`).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    race_bar: float | None = None
    """The reward an episode must beat to be scored on all its images (``None``: no race)."""

    def __init__(
        self,
        config: EnvConfig | None = None,
        backend: ChannelBackend | FineGrainedBackend | None = None,
        *,
        example_inputs: torch.Tensor | None = None,
        evaluate: Evaluate | None = None,
        selection: Evaluate | None = None,
        calibration: torch.Tensor | Iterable | None = None,
        **overrides: Any,
    ):
        super().__init__()
        module = overrides.pop("model", None) if isinstance(overrides.get("model"), nn.Module) else None
        if module is not None:
            overrides.update(model=type(module).__name__, checkpoint=None, dataset="python")
        self.config = replace(config or EnvConfig(), **overrides)
        if module is not None:
            if example_inputs is None or evaluate is None:
                raise ValueError(
                    "a model object needs example_inputs=<input batch> and evaluate=<model -> score>"
                )
            backend = object_backend(module, example_inputs, evaluate, self.config, selection, calibration)
        self.backend = backend if backend is not None else build_backend(self.config)
        self.units = self.backend.units
        self.n = len(self.units)
        self.reward_fn = get_reward(self.config.reward)
        self.static = static_table(self.units)
        self.flags = kind_flags(self.units)
        self.rest = rest_fractions(self.units, self.backend.dense["flops"])
        self.wall = None
        if self.config.target is not None:
            metric = self.config.metric
            self.wall = ActionWall(
                lambda s: self.backend.costs(s)[metric], self.n, self.config.target, self.config.max_sparsity
            )
            floor = self.backend.costs([self.config.max_sparsity] * self.n)[metric]
            if floor > self.config.target:
                raise ValueError(
                    f"target {metric}={self.config.target} is unreachable: pruning every unit to "
                    f"max_sparsity={self.config.max_sparsity} leaves {floor:.3f}; raise the target "
                    "or --max-sparsity"
                )
        self.observation_space = gym.spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._decided: list[float] = []

    def _observe(self) -> np.ndarray:
        reduced = 1.0 - self.backend.costs(self._decided + [0.0] * (self.n - len(self._decided)))["flops"]
        prev = self._decided[-1] / self.config.max_sparsity if self._decided else 0.0
        return observation(self.static, self.flags, self.rest, len(self._decided), reduced, prev)

    def to_sparsity(self, action: float) -> float:
        """Map an action in [-1, 1] to a sparsity in [0, max_sparsity].

        In ``nm`` mode the action is a decision: above 0 applies the pattern (sparsity
        ``1 - N/M``), otherwise the layer stays dense (0).
        """
        if self.backend.mode == "nm":
            return self.backend.nm_sparsity if float(action) > 0 else 0.0
        return (float(np.clip(action, -1.0, 1.0)) + 1.0) / 2.0 * self.config.max_sparsity

    def to_action(self, sparsity: float) -> float:
        """Inverse of :meth:`to_sparsity` (``nm`` mode: 1 for an applied pattern, -1 for dense)."""
        if self.backend.mode == "nm":
            return 1.0 if sparsity > 0 else -1.0
        return 2.0 * sparsity / self.config.max_sparsity - 1.0

    def uniform_sparsities(self) -> list[float] | None:
        """The uniform policy at the budget (one sparsity for every unit, the least that meets it).

        ``None`` where it is not defined: fine-grained mode, no target, a latency budget, or a
        target the uniform policy cannot meet.
        """
        config = self.config
        if self.backend.mode != "channel" or config.target is None or config.metric == "latency":
            return None
        try:
            policy = uniform_policy(self.backend, config.target, config.metric)
        except TargetError:
            return None
        return self.backend.pruner.sparsities_by_name(policy.sparsities)

    def rebudget(self, sparsities: list[float], target: float) -> list[float]:
        """``sparsities`` clamped unit by unit by an action wall at another ``target`` ratio.

        The same walk as an episode's, so the result meets ``target`` of the budgeted metric
        exactly and moves each unit only as far as the new budget needs.
        """
        if self.wall is None:
            raise ValueError("rebudget needs an environment with a target")
        wall = ActionWall(self.wall.cost, self.n, target, self.config.max_sparsity)
        decided: list[float] = []
        for sparsity in sparsities:
            decided.append(wall.clamp(decided, sparsity))
        return decided

    def evaluate(
        self, sparsities: list[float], on: str = "search", bar: float | None = None
    ) -> dict[str, Any]:
        """Accuracy, reward and cost ratios (``flops_ratio``, ...) of a full set of sparsities.

        ``on="search"`` scores the images every episode is scored on; ``on="selection"`` the
        search-split images no episode sees, on which the best of many episodes can be
        re-ranked without the optimism of having been picked on them. With a ``bar`` (a
        reward) scoring races against it (see the module notes); ``scored_images`` is the
        number of images scored if the race stopped early, else ``None``.
        """
        costs = self.backend.costs(sparsities)
        race = None
        if bar is not None and self.config.race_slice:
            race = Race(lambda accuracy: self.reward_fn(accuracy, costs) > bar, self.config.race_slice)
        accuracy = self.backend.score(sparsities, on, race)
        return {
            "accuracy": accuracy,
            "reward": float(self.reward_fn(accuracy, costs)),
            **{f"{k}_ratio": v for k, v in costs.items() if not k.endswith("_absolute")},
            "scored_images": None if race is None else race.scored,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first unit."""
        super().reset(seed=seed)
        self._decided = []
        return self._observe(), {"unit": self.units[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Prune the current unit by ``action``; score the network after the last unit."""
        if len(self._decided) >= self.n:
            raise RuntimeError("episode is over; call reset()")
        sparsity = self.to_sparsity(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if self.wall is not None:
            sparsity = self.wall.clamp(self._decided, sparsity)
        if self.backend.mode == "nm":  # the wall may ask for a tiny sparsity: that means "apply"
            sparsity = self.backend.quantize(len(self._decided), sparsity)
        self._decided.append(sparsity)
        info: dict[str, Any] = {
            "unit": self.units[len(self._decided) - 1].name,
            "sparsity": sparsity,
            "applied_action": np.array([self.to_action(sparsity)], dtype=np.float32),
        }
        if len(self._decided) < self.n:
            return self._observe(), 0.0, False, False, info
        result = self.evaluate(self._decided, bar=self.race_bar)
        policy = self.backend.policy(self._decided, accuracy=result["accuracy"], reward=result["reward"])
        info.update(
            **result,
            sparsities=list(self._decided),
            actions=[self.to_action(s) for s in self._decided],
            policy=policy.sparsities,
            policy_json=policy.to_json(),
        )
        obs = observation(self.static, self.flags, self.rest, self.n - 1, 1.0 - result["flops_ratio"], 1.0)
        return obs, result["reward"], True, False, info
