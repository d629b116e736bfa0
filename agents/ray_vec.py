"""Score a search's episodes on Ray actors: :class:`RayVecEnv`, a stable-baselines3 ``VecEnv``.

``amc search --envs N`` runs N environments side by side; with Ray (``SearchConfig.ray``,
``amc.search(..., ray=...)``) each of them lives in a Ray actor instead of a subprocess,
so the replicas can spread over the machines of a cluster (one GPU each, when the
environment runs on ``cuda``). The agent, the recorder and the run folder stay in the
driver process, exactly as with subprocess environments.

Each actor builds its own environment replica (model, scoring data, reconstruction
statistics) from the factory it is given (cloudpickled, stored once in Ray's object store
and shared by every actor built from it), uses as many torch threads as it has CPUs, and answers the
same commands as stable-baselines3's ``SubprocVecEnv`` worker: ``step`` (with auto-reset:
the finished episode's last observation goes to ``info["terminal_observation"]`` and the
returned observation is the next episode's first), ``reset`` with the seeds and options of
:meth:`VecEnv.seed` / :meth:`VecEnv.set_options` (used once), ``get_attr``, ``set_attr``,
``env_method``, ``env_is_wrapped``, ``has_attr`` and ``render``.

Fault tolerance (replay). An actor can die at any time: its process is killed, runs out of
memory, or its node goes away (``ray.exceptions.RayActorError``). The driver keeps, for
every environment, the log of its current episode: the reset's seed and options, every
action since that reset, and the observations it handed out. When a call fails because
the actor died, the driver kills what is left of it, starts a fresh actor from the same
factory, re-applies the attributes set through :meth:`set_attr`, resets it with the
episode's seed and options and replays the logged actions one by one, then repeats the
call that failed. The replica is then in exactly the state the dead one was in before that
call, so the search sees the step it asked for, once:

* A step's result reaches the driver only from a live actor, and the replayed steps' results
  are dropped (they were delivered before, from the dead actor). A finished episode is
  therefore returned, and recorded, exactly once, whether the actor died during the
  expensive last step (pruning, reconstruction, scoring), after it, or between steps.
* An episode in flight is re-run from its reset, never lost: the actions the agent chose
  are kept, so the transitions already in the replay buffer stay those of this episode.

Replaying is exact for environments whose episode is a function of the reset's seed and
the actions (:class:`~amc.envs.pruning_env.PruningEnv` draws no random numbers; an
environment that does would replay an episode begun by an auto-reset from a fresh random
state). A replacement costs the actor's start-up (loading model and data) and a replay of
the intermediate steps, which only update costs and observations (well under a second);
only the step that was cut short, often the expensive last one, runs again. Each replayed
observation is compared with the one the driver handed out and a difference is logged as
a warning. Calls made through :meth:`env_method` are not replayed (they are not part of an
episode). An environment whose actor dies more than ``max_restarts`` times in a row within
one call raises ``RuntimeError`` (a replica that always crashes, e.g. runs out of memory,
would otherwise be restarted forever). The recovery is the driver's own, not Ray's
``max_restarts``: a restarted actor would lose its episode anyway, and only the driver
knows which calls to replay.

Ray is an optional extra (``pip install 'amc-pruner[ray]'``). Without an address a private
local Ray instance is started with exactly the CPUs the actors reserve (quiet logging, no
dashboard; GPUs it does not have are refused at once) and shut down by
:meth:`RayVecEnv.close`; with one (``"auto"``, ``"ray://head:10001"``, ...) the driver joins
that cluster, whose nodes need the same ``amc-pruner`` (and model code) installed. A Ray
session the caller opened already is used as it is and left open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.subproc_vec_env import _stack_obs

from amc.plots import MissingExtraError

log = logging.getLogger(__name__)
RAY_INSTALL_HINT = "pip install 'amc-pruner[ray]'"
LOCAL = ("", "local")
"""Addresses (``SearchConfig.ray``) that mean a private local Ray instance."""
FORWARDED_ENV = ("AMC_",)
"""Prefixes of the driver's environment variables every actor gets (e.g. ``AMC_CACHE_DIR``)."""


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the install command.

    Raises:
        MissingExtraError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError(f"parallel episodes on Ray need ray: {RAY_INSTALL_HINT}") from exc
    return ray


class EnvActor:
    """One environment replica inside a Ray actor (the body of ``SubprocVecEnv``'s worker)."""

    def __init__(self, env_fn: bytes, threads: int, env_vars: dict[str, str]):
        import torch
        from stable_baselines3.common.vec_env.patch_gym import _patch_env

        os.environ.update(env_vars)
        torch.set_num_threads(max(1, int(threads)))
        self.error: Exception | None = None
        try:
            self.env = _patch_env(cloudpickle.loads(env_fn)())
        except Exception as exc:  # raised to the driver by spaces(), as it is
            self.error = exc

    def pid(self) -> int:
        """The actor's process id (tests kill it)."""
        return os.getpid()

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        """Observation and action space (or the factory's error, which a restart would repeat)."""
        if self.error is not None:
            raise self.error
        return self.env.observation_space, self.env.action_space

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict]:
        """Reset with the vector env's seed and options for this environment."""
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, dict, dict]:
        """One step; a finished episode is reset at once (its last observation goes to ``info``)."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict = {}
        if done:
            info["terminal_observation"] = observation
            observation, reset_info = self.env.reset()
        return observation, reward, done, info, reset_info

    def get_attr(self, name: str) -> Any:
        """An attribute of the environment (or of a wrapper)."""
        return self.env.get_wrapper_attr(name)

    def has_attr(self, name: str) -> bool:
        """Whether the environment (or a wrapper) has the attribute."""
        try:
            self.env.get_wrapper_attr(name)
        except AttributeError:
            return False
        return True

    def set_attr(self, name: str, value: Any) -> None:
        """Set an attribute of the environment."""
        setattr(self.env, name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict) -> Any:
        """Call a method of the environment."""
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        """Whether the environment is wrapped by ``wrapper_class``."""
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)

    def render(self) -> Any:
        """The environment's rendering."""
        return self.env.render()

    def close(self) -> None:
        """Close the environment."""
        self.env.close()


class _Episode:
    """What a fresh replica needs to reach an environment's current state: reset, then actions.

    ``observations`` holds the reset's observation (``None`` while unknown: an environment
    stepped before any reset, as the ask/tell searchers do) and every step's after it.
    """

    def __init__(self, seed: int | None, options: dict | None, observation: Any = None):
        self.seed, self.options = seed, options
        self.actions: list[np.ndarray] = []
        self.observations: list[Any] = [observation]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return (
            isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    return np.array_equal(np.asarray(a), np.asarray(b))


class RayVecEnv(VecEnv):
    """A ``VecEnv`` whose environments live in Ray actors, one replica per actor.

    Semantics are those of stable-baselines3's ``SubprocVecEnv`` (auto-reset, ``terminal_observation``,
    ``TimeLimit.truncated``, seeds and options used at the next :meth:`reset` only), plus the
    recovery of dead actors described in :mod:`amc.agents.ray_vec`.

    Args:
        env_fns: Functions that build the environments (cloudpickled; run inside the actors).
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ...); ``None``, ``""``
            or ``"local"`` start a private local instance (unless Ray is initialised already).
        num_cpus_per_actor: CPUs each actor reserves; also its torch threads.
        num_gpus_per_actor: GPUs each actor reserves; ``None``: one (or an equal share when there
            are fewer GPUs than environments) if the cluster has GPUs, else none.
        max_restarts: Consecutive deaths of one environment's actor within a call before
            :meth:`step_wait` (or any other call) gives up with ``RuntimeError``.

    Raises:
        MissingExtraError: Ray is not installed.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        address: str | None = None,
        num_cpus_per_actor: float = 1,
        num_gpus_per_actor: float | None = None,
        max_restarts: int = 3,
    ):
        ray = require_ray()
        self._ray = ray
        self.closed, self.waiting = True, False
        n = len(env_fns)
        if n < 1:
            raise ValueError("RayVecEnv needs at least one environment function")
        if num_cpus_per_actor <= 0:
            raise ValueError(f"num_cpus_per_actor must be positive, got {num_cpus_per_actor}")
        self.started_ray = False
        if not ray.is_initialized():
            if address is None or address in LOCAL:
                self._start_local(ray, n * num_cpus_per_actor)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if num_gpus_per_actor is None:
            num_gpus_per_actor = min(1.0, gpus / n) if gpus else 0.0
        self.num_cpus_per_actor, self.num_gpus_per_actor = num_cpus_per_actor, num_gpus_per_actor
        self.max_restarts = max_restarts
        try:
            self._check_resources(ray, n)
        except ValueError:
            self.close()
            raise
        # One object-store copy per distinct factory, shared by all actors and their restarts.
        blobs: dict[bytes, Any] = {}
        self._env_refs = []
        for fn in env_fns:
            blob = cloudpickle.dumps(fn)
            self._env_refs.append(blobs.setdefault(blob, ray.put(blob)))
        self._env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        self._remote = ray.remote(EnvActor).options(
            num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor, max_restarts=0, max_task_retries=0
        )
        self.closed = False
        self.actors = [self._new_actor(i) for i in range(n)]
        self._attrs: list[dict[str, Any]] = [{} for _ in range(n)]
        self._episodes = [_Episode(None, None) for _ in range(n)]
        self._pending: list[Any] = []
        self._actions: np.ndarray | None = None
        self.restarts = 0
        """Actors replaced so far (all environments)."""
        try:
            observation_space, action_space = self._call(0, "spaces")
            super().__init__(n, observation_space, action_space)
        except BaseException:
            self.close()
            raise

    # --- Ray -------------------------------------------------------------------------------------

    def _start_local(self, ray: Any, cpus: float) -> None:
        """A private local instance with the CPUs the actors reserve (whole CPUs, at least one)."""
        ray.init(
            num_cpus=max(1, int(np.ceil(cpus))),
            include_dashboard=False,
            logging_level=logging.ERROR,
        )
        self.started_ray = True

    def _check_resources(self, ray: Any, n: int) -> None:
        """Refuse what a local instance cannot give; warn when a cluster would have to grow."""
        total = ray.cluster_resources()
        for key, each in (("CPU", self.num_cpus_per_actor), ("GPU", self.num_gpus_per_actor)):
            if each and n * each > total.get(key, 0):
                has = total.get(key, 0)
                message = f"{n} Ray actors need {n * each:g} {key} in all, the Ray instance has {has:g}"
                if self.started_ray:
                    raise ValueError(message)
                log.warning("%s: some actors wait until the cluster grows", message)

    def _new_actor(self, i: int) -> Any:
        return self._remote.remote(self._env_refs[i], max(1, int(self.num_cpus_per_actor)), self._env_vars)

    def _replace(self, i: int, error: BaseException | None) -> None:
        """A fresh actor for environment ``i`` in the state the dead one had (see the module doc)."""
        ray = self._ray
        self.restarts += 1
        reason = str(error).splitlines()[0] if error is not None else "unknown"
        log.warning("environment %d: its Ray actor died (%s); replaying its episode on a new one", i, reason)
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        actor = self.actors[i] = self._new_actor(i)
        for name, value in self._attrs[i].items():
            actor.set_attr.remote(name, value)
        episode = self._episodes[i]
        refs = [actor.reset.remote(episode.seed, episode.options)]
        refs += [actor.step.remote(action) for action in episode.actions]
        results = ray.get(refs)  # a death here raises RayActorError: the caller tries again
        observations = [results[0][0]] + [r[0] for r in results[1:]]
        if not all(
            seen is None or _same(again, seen)
            for again, seen in zip(observations, episode.observations, strict=True)
        ):
            log.warning(
                "environment %d: the replayed episode's observations differ from the first run's "
                "(the environment is not deterministic given its seed and actions)",
                i,
            )

    def _resolve(self, i: int, ref: Any, resubmit: Callable[[], Any]) -> Any:
        """The result of ``ref``, a call on environment ``i``'s actor; if it died, replace it and resubmit."""
        ray = self._ray
        deaths, error = 0, None
        while True:
            try:
                if ref is None:
                    self._replace(i, error)  # a death during the replay counts as one more
                    ref = resubmit()
                return ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if exc.actor_init_failed:  # the factory's own errors come from spaces(), as they are
                    raise RuntimeError(f"environment {i}: its Ray actor failed to start: {exc}") from None
                deaths += 1
                if deaths > self.max_restarts:
                    raise RuntimeError(
                        f"environment {i}: its Ray actor died {deaths} times in a row: {exc}"
                    ) from exc
                error, ref = exc, None
            except ray.exceptions.RayTaskError as exc:  # the environment itself raised: re-raise that
                cause = exc.cause
                raise (cause if isinstance(cause, Exception) else exc.as_instanceof_cause()) from exc

    def _call(self, i: int, method: str, *args: Any) -> Any:
        def submit() -> Any:
            return getattr(self.actors[i], method).remote(*args)

        return self._resolve(i, submit(), submit)

    def _calls(self, indices: VecEnvIndices, method: str, *args: Any) -> list[Any]:
        targets = list(self._get_indices(indices))
        refs = [getattr(self.actors[i], method).remote(*args) for i in targets]

        def again(i: int) -> Callable[[], Any]:
            return lambda: getattr(self.actors[i], method).remote(*args)

        return [self._resolve(i, ref, again(i)) for i, ref in zip(targets, refs, strict=True)]

    # --- the VecEnv API --------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        """Reset every environment (with the seeds and options set since the last reset)."""
        refs = []
        for i, actor in enumerate(self.actors):
            options = self._options[i] or None
            self._episodes[i] = _Episode(self._seeds[i], options)
            refs.append(actor.reset.remote(self._seeds[i], options))
        results = []
        for i, ref in enumerate(refs):
            episode = self._episodes[i]

            def again(i: int = i, episode: _Episode = episode) -> Any:
                return self.actors[i].reset.remote(episode.seed, episode.options)

            results.append(self._resolve(i, ref, again))
            episode.observations = [results[-1][0]]
        observations, self.reset_infos = zip(*results, strict=True)
        self._reset_seeds()
        self._reset_options()
        return _stack_obs(observations, self.observation_space)

    def step_async(self, actions: np.ndarray) -> None:
        """Send each environment its action."""
        self._actions = np.asarray(actions)
        self._pending = [actor.step.remote(a) for actor, a in zip(self.actors, self._actions, strict=True)]
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Every environment's step (an actor that died is replaced and its episode replayed)."""
        results = []
        for i, ref in enumerate(self._pending):
            action = self._actions[i]
            result = self._resolve(i, ref, lambda i=i, a=action: self.actors[i].step.remote(a))
            observation, _, done, _, _ = result
            if done:  # the actor reset itself: a new episode begins, without a seed
                self._episodes[i] = _Episode(None, None, observation)
            else:
                self._episodes[i].actions.append(action)
                self._episodes[i].observations.append(observation)
            results.append(result)
        self.waiting, self._pending = False, []
        observations, rewards, dones, infos, self.reset_infos = zip(*results, strict=True)
        return _stack_obs(observations, self.observation_space), np.stack(rewards), np.stack(dones), infos

    def close(self) -> None:
        """Close the environments, end the actors, and shut down a Ray instance this started."""
        ray = self._ray
        if self.closed:
            if self.started_ray:  # failed before any actor started
                ray.shutdown()
                self.started_ray = False
            return
        self.closed = True
        refs = []
        for actor in self.actors:
            try:
                refs.append(actor.close.remote())
            except Exception:  # the actor is gone
                pass
        try:
            ray.wait(refs, num_returns=len(refs), timeout=30)
        except Exception:
            pass
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Every environment's ``rgb_array`` rendering."""
        if self.render_mode != "rgb_array":
            log.warning("render mode is %s, not rgb_array: no images", self.render_mode)
            return [None for _ in self.actors]
        return self._calls(None, "render")

    def has_attr(self, attr_name: str) -> bool:
        """Whether every environment has the attribute."""
        return all(self._calls(None, "has_attr", attr_name))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of each environment."""
        return self._calls(indices, "get_attr", attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute in environments (kept, and set again in an actor that replaces a dead one)."""
        for i in self._get_indices(indices):
            self._attrs[i][attr_name] = value
        self._calls(indices, "set_attr", attr_name, value)

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        """Call a method of environments (not replayed on a replacement actor)."""
        return self._calls(indices, "env_method", method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether environments are wrapped by ``wrapper_class``."""
        return self._calls(indices, "is_wrapped", wrapper_class)

    def actor_pids(self) -> list[int]:
        """Each actor's process id."""
        return self._calls(None, "pid")
