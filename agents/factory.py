"""Build DDPG / TD3 / SAC agents for the AMC environment from YAML presets.

Presets live in ``agents/presets/<algo>.yaml`` with a ``default:`` entry (and optionally one
per model name), as in rl-baselines3-zoo; ``overrides`` (``--hp key=value``) win. AMC's
actor and critic learning rates differ (1e-4 / 1e-3); stable-baselines3 has one learning
rate, so :class:`AMCPolicy` gives the critic an optimiser whose steps are scaled.
"""

from __future__ import annotations

import inspect
from importlib import resources
from typing import Any

import torch
import yaml
from amc.agents.buffer import EpisodeRewardReplayBuffer
from amc.agents.elite import EliteImitation
from amc.agents.noise import DecayingTruncatedNormalNoise
from amc.agents.population import SEARCHERS
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.td3.policies import TD3Policy

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ddpg": DDPG, "td3": TD3, "sac": SAC}
AMC_KEYS = (
    "warmup_episodes",
    "noise_sigma",
    "noise_decay",
    "baseline_alpha",
    "buffer_transitions",
    "net_arch",
    "learning_rate_actor",
    "learning_rate_critic",
    "elite_episodes",
    "imitation_steps",
    "imitation_lr",
)
_AMC_DEFAULTS: dict[str, Any] = {
    "warmup_episodes": 100,
    "noise_sigma": 0.5,
    "noise_decay": 0.99,
    "baseline_alpha": 0.5,
    "buffer_transitions": 2000,
    "net_arch": [300, 300],
    "learning_rate_actor": 1e-4,
    "learning_rate_critic": 1e-3,
    "elite_episodes": 0,
    "imitation_steps": 0,
    "imitation_lr": 1e-3,
}
"""The AMC keys' defaults in :func:`make_agent`; their types are what ``--hp`` must give."""
_SET_BY_AMC = ("self", "policy", "env", "action_noise", "replay_buffer_class", "replay_buffer_kwargs")
_SET_BY_AMC += ("policy_kwargs", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model")
_FREE = ("train_freq", "ent_coef", "target_entropy")
"""Settings whose values take several forms (a number, a list or a word): not type-checked."""


class ScaledAdam(torch.optim.Adam):
    """Adam whose step uses ``scale`` times the scheduled learning rate."""

    def __init__(self, params: Any, scale: float = 1.0, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.scale = scale

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam step at the scaled learning rate."""
        saved = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * self.scale
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, saved, strict=True):
                g["lr"] = lr


class AMCPolicy(TD3Policy):
    """TD3/DDPG policy whose critic learns ``critic_lr_scale`` times faster than the actor."""

    def __init__(self, *args: Any, critic_lr_scale: float = 10.0, **kwargs: Any):
        self.critic_lr_scale = critic_lr_scale
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.critic.optimizer = ScaledAdam(
            self.critic.parameters(), scale=self.critic_lr_scale, lr=lr_schedule(1), **self.optimizer_kwargs
        )


def load_preset(algo: str, model: str = "", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hyper-parameters of ``algo``: the preset's ``default``, its ``model`` entry, then ``overrides``."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown agent '{algo}'; known agents: {', '.join(ALGORITHMS)}")
    text = (resources.files("amc.agents") / "presets" / f"{algo}.yaml").read_text()
    presets = yaml.safe_load(text)
    hp = dict(presets["default"])
    hp.update(presets.get(model, {}) or {})
    hp.update(overrides or {})
    return hp


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML (numbers, lists, booleans)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"hyper-parameter override '{pair}' must look like key=value")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _settings(agent: str) -> dict[str, Any]:
    """The settings ``--hp`` may override for ``agent``, with their defaults."""
    if agent in SEARCHERS:
        return dict(SEARCHERS[agent].defaults)
    if agent not in ALGORITHMS:
        raise ValueError(f"unknown agent '{agent}'; known agents: {', '.join([*ALGORITHMS, *SEARCHERS])}")
    params = inspect.signature(ALGORITHMS[agent].__init__).parameters
    return {**{k: p.default for k, p in params.items() if k not in _SET_BY_AMC}, **_AMC_DEFAULTS}


def _expected(default: Any, value: Any) -> str:
    """What ``value`` should be, given the setting's default; empty when it fits."""
    if isinstance(default, bool):
        return "" if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return "" if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return "" if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return "" if ok else "a list of whole numbers, e.g. [300,300]"
    return ""


def check_hp(agent: str, hp: dict[str, Any]) -> None:
    """Refuse ``--hp`` overrides that ``agent`` does not have or whose values have the wrong type.

    Called before a run folder is made, so a typo costs nothing but the message.

    Raises:
        ValueError: Names the key, the value and what it should be.
    """
    settings = _settings(agent)
    for key, value in hp.items():
        if key not in settings:
            known = ", ".join(sorted(settings)) or "none"
            raise ValueError(f"--hp {key}: '{agent}' has no setting '{key}'; its settings: {known}")
        expected = "" if key in _FREE else _expected(settings[key], value)
        if expected:
            raise ValueError(f"--hp {key}={value!r}: {key} must be {expected}")


def make_agent(
    algo: str, env: Any, hp: dict[str, Any], n_units: int, seed: int = 0, n_envs: int = 1
) -> tuple[BaseAlgorithm, DecayingTruncatedNormalNoise | None]:
    """Create the agent and its exploration noise (``None`` for SAC) for a (vectorised) env."""
    hp = dict(hp)
    amc = {k: hp.pop(k) for k in AMC_KEYS if k in hp}
    warmup = int(amc.get("warmup_episodes", 100))
    kwargs: dict[str, Any] = {
        "learning_starts": warmup * n_units,
        "buffer_size": int(amc.get("buffer_transitions", 2000)),
        # After every episode; parallel envs run in lockstep (same unit count), and SB3 allows
        # episode-based frequencies with one env only, so count their steps instead.
        "train_freq": (1, "episode") if n_envs == 1 else (n_units, "step"),
        "gradient_steps": -1,
        "replay_buffer_class": EpisodeRewardReplayBuffer,
        "replay_buffer_kwargs": {
            "baseline_alpha": float(amc.get("baseline_alpha", 0.5)),
            "elite_episodes": int(amc.get("elite_episodes", 0)),
        },
        "seed": seed,
        "verbose": 0,
        "device": "cpu",
    }
    policy_kwargs: dict[str, Any] = {"net_arch": list(amc.get("net_arch", [300, 300]))}
    noise = None
    if algo == "sac":
        policy: Any = "MlpPolicy"
    else:
        policy = AMCPolicy
        actor_lr = float(amc.get("learning_rate_actor", 1e-4))
        kwargs["learning_rate"] = actor_lr
        policy_kwargs["critic_lr_scale"] = float(amc.get("learning_rate_critic", 1e-3)) / actor_lr
        noise = DecayingTruncatedNormalNoise(
            float(amc.get("noise_sigma", 0.5)),
            float(amc.get("noise_decay", 0.99)),
            warmup,
            size=1,
            seed=seed,
            n_envs=n_envs,
        )
        kwargs["action_noise"] = noise
    kwargs.update(hp)
    agent = ALGORITHMS[algo](policy, env, policy_kwargs=policy_kwargs, **kwargs)
    return agent, noise


def imitation_callback(hp: dict[str, Any]) -> EliteImitation | None:
    """The elite-imitation plug-in the preset asks for (``elite_episodes`` and ``imitation_steps``)."""
    if not int(hp.get("elite_episodes", 0)) or not int(hp.get("imitation_steps", 0)):
        return None
    return EliteImitation(
        int(hp["imitation_steps"]), float(hp.get("imitation_lr", 1e-3)), int(hp.get("warmup_episodes", 100))
    )
