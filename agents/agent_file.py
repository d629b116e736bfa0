"""The agent file: an RL agent as data (tensors and JSON), which amc rebuilds itself.

A search saves its agent as two files in the run folder:

- ``agent.pt``: tensors only, written by ``torch.save`` and read with ``weights_only=True``:
  ``{"params": {name: state dict}, "variables": {name: tensor}}``, where the names are
  stable-baselines3's (``policy``, ``actor.optimizer``, ``critic.optimizer``, ...).
- ``agent.json``: how to rebuild it: the algorithm, its resolved hyper-parameters and the
  observation and action spaces (shapes and bounds).

Loading builds a fresh agent with :func:`amc.agents.factory.make_agent` and copies the
tensors in; nothing in either file is ever unpickled, so an agent file from anyone is data,
not code. stable-baselines3's own ``agent.zip`` (whose ``data`` entry pickles classes and
functions) is refused; a run folder checkpointed as ``agent.zip`` can still be resumed: only
its tensor entries are read, with ``weights_only=True``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from amc.agents.factory import ALGORITHMS, check_hp, make_agent
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_zip_file

from amc.files import WeightsError, atomic_path, load_weights, write_atomic

AGENT_FILE = "agent.pt"
"""The agent's tensors, in the run folder."""
SPEC_FILE = "agent.json"
"""How to rebuild the agent, beside :data:`AGENT_FILE`."""
LEGACY_FILE = "agent.zip"
"""stable-baselines3's format, which older runs checkpointed to."""
FORMAT = "amc-agent"
VERSION = 1


class AgentFileError(ValueError):
    """An agent file that is missing, unsafe, damaged or made for another agent."""


def _box(space: gym.spaces.Box) -> dict[str, Any]:
    return {"shape": list(space.shape), "low": space.low.tolist(), "high": space.high.tolist()}


def _from_box(data: dict[str, Any]) -> gym.spaces.Box:
    shape = tuple(int(n) for n in data["shape"])
    low = np.asarray(data["low"], dtype=np.float32).reshape(shape)
    high = np.asarray(data["high"], dtype=np.float32).reshape(shape)
    return gym.spaces.Box(low, high, shape, np.float32)


@dataclass
class AgentSpec:
    """What ``agent.json`` holds: everything needed to rebuild an agent before its tensors load.

    Attributes:
        algorithm: A key of :data:`~amc.agents.factory.ALGORITHMS` (``ddpg``, ``td3``, ``sac``).
        hp: The resolved hyper-parameters the agent was made with (preset and overrides).
        observation_space: The observation box: ``shape``, ``low`` and ``high``.
        action_space: The action box, alike.
        units: Steps per episode where it learned (one per pruning unit of that model).
        format: Always ``amc-agent``.
        version: The file format's version.
    """

    algorithm: str
    hp: dict[str, Any]
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    units: int = 1
    format: str = FORMAT
    version: int = VERSION

    @classmethod
    def of(cls, algorithm: str, agent: BaseAlgorithm, hp: dict[str, Any], units: int) -> AgentSpec:
        """The spec of ``agent``, made by ``make_agent(algorithm, ..., hp, units)``."""
        return cls(algorithm, dict(hp), _box(agent.observation_space), _box(agent.action_space), units)

    def to_json(self) -> str:
        """Serialise to indented JSON (values JSON cannot hold, such as dates, become text)."""
        return json.dumps(asdict(self), indent=1, default=str)

    @classmethod
    def read(cls, path: str | Path) -> AgentSpec:
        """Read and check an ``agent.json``.

        Raises:
            AgentFileError: The file is missing, not JSON, or not an amc agent description.
        """
        path = Path(path)
        if not path.is_file():
            raise AgentFileError(f"{path} does not exist: an agent file {AGENT_FILE} needs its {SPEC_FILE}")
        try:
            spec = cls(**json.loads(path.read_text()))
            _from_box(spec.observation_space), _from_box(spec.action_space)
        except (ValueError, TypeError, KeyError) as exc:
            raise AgentFileError(f"{path} is not an amc agent description ({exc})") from None
        units = isinstance(spec.units, int) and not isinstance(spec.units, bool) and spec.units >= 1
        if spec.format != FORMAT or spec.version != VERSION or spec.algorithm not in ALGORITHMS or not units:
            raise AgentFileError(
                f"{path} describes a {spec.format} v{spec.version} '{spec.algorithm}' agent; this amc reads "
                f"{FORMAT} v{VERSION} agents of {', '.join(ALGORITHMS)}"
            )
        try:
            check_hp(spec.algorithm, spec.hp)  # settings amc knows, of the right types: data, never code
        except (ValueError, AttributeError) as exc:
            raise AgentFileError(f"{path} holds settings amc does not take: {exc}") from None
        return spec


class _Spaces(gym.Env):
    """An environment that only has spaces: enough to build an agent that acts, not one that learns."""

    def __init__(self, spec: AgentSpec):
        self.observation_space = _from_box(spec.observation_space)
        self.action_space = _from_box(spec.action_space)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        """Not available: a rebuilt agent has no environment."""
        raise RuntimeError("a rebuilt agent only acts; it has no environment to reset")

    def step(self, action: Any) -> Any:
        """Not available: a rebuilt agent has no environment."""
        raise RuntimeError("a rebuilt agent only acts; it has no environment to step")


def agent_tensors(agent: BaseAlgorithm) -> dict[str, Any]:
    """The agent's networks, optimisers and tensor variables: what :data:`AGENT_FILE` holds."""
    _, variables = agent._get_torch_save_params()
    tensors = {name: _getattr(agent, name) for name in variables}
    return {
        "params": agent.get_parameters(),
        "variables": {k: v.detach().cpu() for k, v in tensors.items() if v is not None},
    }


def _getattr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def save_agent(agent: BaseAlgorithm, spec: AgentSpec, path: str | Path) -> list[Path]:
    """Write ``agent`` to ``path`` (tensors) and ``spec`` beside it (``.json``), each atomically.

    ``path`` may be a staged name (see :func:`amc.files.commit`); the spec goes beside it
    with the suffix changed to ``.json``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(agent_tensors(agent), tmp)
    return [path, write_atomic(path.with_suffix(".json"), spec.to_json())]


def restore(agent: BaseAlgorithm, tensors: dict[str, Any]) -> None:
    """Copy saved tensors (:func:`agent_tensors`) into ``agent``, which must be of the same make.

    Raises:
        AgentFileError: The tensors do not fit ``agent`` (another algorithm or network size).
    """
    try:
        agent.set_parameters(tensors["params"], exact_match=True, device=agent.device)
        for name, value in tensors.get("variables", {}).items():
            _getattr(agent, name).data = value.data.to(agent.device)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        kind = type(agent).__name__.lower()
        raise AgentFileError(
            f"its networks do not fit this {kind} agent ({type(exc).__name__}); use an {AGENT_FILE} "
            "saved by the same --agent and net_arch"
        ) from None


def agent_path(path: str | Path) -> Path:
    """The ``agent.pt`` that ``path`` names: itself, the one in a run folder, or the one beside a ``.json``.

    Raises:
        AgentFileError: ``path`` is a stable-baselines3 zip.
        FileNotFoundError: There is no agent file there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / AGENT_FILE
    elif path.suffix == ".json":
        path = path.with_suffix(".pt")
    if path.suffix == ".zip":
        raise AgentFileError(
            f"{path} is a stable-baselines3 zip, which can carry pickled code, so amc does not load it; "
            f"use the run's {AGENT_FILE} (with {SPEC_FILE}), or resume that run once to write them"
        )
    if not path.is_file():
        raise FileNotFoundError(f"agent file {path} does not exist (expected runs/<run>/{AGENT_FILE})")
    return path


def read_agent(path: str | Path) -> tuple[AgentSpec, dict[str, Any]]:
    """Read an agent file and its spec (see :func:`agent_path` for what ``path`` may be).

    Raises:
        AgentFileError: The file is unsafe, damaged, or its spec is missing or wrong.
        FileNotFoundError: There is no agent file.
    """
    path = agent_path(path)
    spec = AgentSpec.read(path.with_suffix(".json"))
    try:
        tensors = load_weights(path, "agent file")
    except WeightsError as exc:
        raise AgentFileError(str(exc)) from None
    if not isinstance(tensors, dict) or not isinstance(tensors.get("params"), dict):
        raise AgentFileError(f"{path} is not an amc agent file (no 'params' entry)")
    return spec, tensors


def build_agent(spec: AgentSpec, tensors: dict[str, Any], source: str | Path = "") -> BaseAlgorithm:
    """Rebuild the agent that ``spec`` and ``tensors`` (:func:`read_agent`) describe.

    The agent acts; it has no environment to learn in.
    """
    agent, _ = make_agent(spec.algorithm, _Spaces(spec), spec.hp, n_units=int(spec.units))
    try:
        restore(agent, tensors)
    except AgentFileError as exc:
        raise AgentFileError(f"cannot load agent {source}: {exc}") from None
    return agent


def load_agent(path: str | Path) -> tuple[AgentSpec, BaseAlgorithm]:
    """Read an agent file and rebuild its agent (see :func:`read_agent` and :func:`build_agent`)."""
    spec, tensors = read_agent(path)
    return spec, build_agent(spec, tensors, path)


def restore_checkpoint(agent: BaseAlgorithm, run_dir: str | Path) -> None:
    """Load a run folder's checkpointed agent into ``agent`` (rebuilt from the run's settings).

    Reads ``agent.pt``; a run checkpointed by an older amc as ``agent.zip`` is read too, but
    only its tensor entries (``weights_only``): its pickled ``data`` entry is never opened.

    Raises:
        AgentFileError: The agent file is missing, unsafe or does not fit.
    """
    run = Path(run_dir)
    path = run / AGENT_FILE
    if path.is_file():
        try:
            tensors = load_weights(path, "agent file")
        except WeightsError as exc:
            raise AgentFileError(str(exc)) from None
    elif (run / LEGACY_FILE).is_file():
        path = run / LEGACY_FILE
        try:
            _, params, variables = load_from_zip_file(path, load_data=False, device="cpu")
        except pickle.UnpicklingError:
            raise AgentFileError(
                f"{path} holds pickled objects other than tensors; refused unread, since loading them "
                "could run code"
            ) from None
        except Exception as exc:  # damaged zips
            raise AgentFileError(f"{path} is damaged or truncated ({type(exc).__name__})") from None
        variables = {k: v for k, v in (variables or {}).items() if v is not None}
        tensors = {"params": params, "variables": variables}
    else:
        raise AgentFileError(f"{run} holds a checkpoint but no {AGENT_FILE}: it cannot be resumed")
    try:
        restore(agent, tensors)
    except AgentFileError as exc:
        raise AgentFileError(f"cannot resume from {path}: {exc}") from None
