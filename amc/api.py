"""Prune your own model from Python: :func:`search`, :func:`prune` and an evaluator to go with them.

>>> import amc
>>> evaluate = amc.classification_evaluator(val_loader, max_images=2000)
>>> result = amc.search(model, torch.randn(1, 3, 224, 224), evaluate, target="flops=0.5",
...                     calibration=train_loader, episodes=300)
>>> small = amc.prune(model, result.policy, calibration=train_loader)  # a smaller nn.Module

This is the same search as ``amc search``: run folder (``config.yaml``, TensorBoard events,
``episodes.csv``, ``best_policy.json``), progress bar, resume after a kill, the final
selection and parallel environments. The command line is one adapter in front of it that
turns model names, checkpoints and datasets into a model and its evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from amc.agents.search import SearchConfig, resume_search, run_search
from amc.budget import Budget
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from amc.policy import Policy, apply_policy
from amc.scoring import Evaluate

log = logging.getLogger(__name__)

__all__ = ["SearchResult", "classification_evaluator", "prune", "search"]


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        policy: The final policy (``best_policy.json`` of the run).
        run_dir: The run folder.
        best: The final choice's scores and cost ratios (``accuracy`` is the normalised
            score, the dense model's being 100).
        episodes: Episodes run in all.
        seconds: Wall time of the search.
    """

    policy: Policy
    run_dir: Path
    best: dict[str, Any]
    episodes: int
    seconds: float


def search(
    model: nn.Module,
    example_inputs: Tensor,
    evaluate: Evaluate,
    target: str | Budget = "flops=0.5",
    selection: Evaluate | None = None,
    calibration: Tensor | Iterable | None = None,
    agent: str = "ddpg",
    episodes: int = 300,
    run_dir: str | Path | None = None,
    *,
    seed: int = 0,
    envs: int = 1,
    ray: str | None = None,
    hp: dict[str, Any] | None = None,
    progress: bool = True,
    **env_settings: Any,
) -> SearchResult:
    """Search a per-layer pruning policy for ``model`` under ``target``.

    Args:
        model: The trained network; it is never changed (the search prunes copies).
        example_inputs: One input batch of the model (its shape is recorded in the policy).
        evaluate: The model -> a score, higher is better, in any unit (top-1 %, mAP, minus a
            loss). Scores are normalised against the dense model's so that rewards read them
            as percentages: ``100 * (1 + (v - v_dense) / |v_dense|)``.
        target: The budget: ``"flops=0.5"``, ``"params=0.3"``, ``"latency=0.6"`` or a
            :class:`~amc.budget.Budget`.
        selection: A second evaluation on other data, used to re-rank the best candidates
            at the end (recommended: the best of hundreds of episodes on one set of images
            is partly the luckiest); ``None`` keeps the best episode.
        calibration: Inputs for least-squares reconstruction and BatchNorm recalibration:
            a tensor or an iterable of batches (e.g. a training ``DataLoader``); ``None``
            prunes without either.
        agent: ``ddpg`` (default), ``td3``, ``sac``, ``random`` or ``cem``.
        episodes: Episodes in all, warm-up included.
        run_dir: The run folder; one that holds an unfinished search resumes it. ``None``:
            a new folder under ``runs/``.
        seed: Seed of the agent and its noise.
        envs: Episodes scored in parallel (subprocesses; model and functions are cloudpickled).
        ray: Score the ``envs`` episodes on Ray actors instead (``pip install 'amc-pruner[ray]'``):
            ``"local"`` starts a local Ray instance, an address (``"auto"``,
            ``"ray://head:10001"``) joins a cluster; model and functions are cloudpickled
            to the actors the same way. ``None``: no Ray. A resumed search keeps its own.
        hp: Hyper-parameter overrides of the agent's preset.
        progress: Show a progress bar.
        **env_settings: Other :class:`~amc.envs.config.EnvConfig` fields, e.g.
            ``round_to=8``, ``max_sparsity=0.7``, ``reward="acc_flops"``.

    Returns:
        The final policy, the run folder and the final choice's scores.
    """
    budget = target if isinstance(target, Budget) else Budget.parse(target)
    factory = _env_factory(model, example_inputs, evaluate, selection, calibration)
    folder = Path(run_dir) if run_dir is not None else None
    started = time.time()
    if folder is not None and (folder / "state.json").is_file():
        log.info("resuming the search in %s", folder)
        result = resume_search(folder, episodes, progress, env_factory=factory)
    else:
        env = EnvConfig(
            model=type(model).__name__,
            checkpoint=None,
            dataset="python",
            metric=budget.metric,
            target=budget.ratio,
            reward=env_settings.pop("reward", "acc" if budget.ratio is not None else "acc_flops"),
            **env_settings,
        )
        config = SearchConfig(
            env=env,
            agent=agent,
            episodes=episodes,
            seed=seed,
            envs=envs,
            hp=dict(hp or {}),
            ray=ray,
            runs_dir=str(folder.parent) if folder is not None else "runs",
            name=folder.name if folder is not None else "",
        )
        result = run_search(config, progress, env_factory=factory)
    folder = Path(result["run_dir"])
    log.info("search finished in %.0f s: %s", time.time() - started, folder)
    return SearchResult(
        Policy.load(folder / "best_policy.json"),
        folder,
        dict(result["best"]),
        int(result["episodes"]),
        float(result["seconds"]),
    )


def _env_factory(
    model: nn.Module,
    example_inputs: Tensor,
    evaluate: Evaluate,
    selection: Evaluate | None,
    calibration: Tensor | Iterable | None,
):
    """Builds the search's environment over the user's objects from an :class:`EnvConfig`."""

    def factory(config: EnvConfig) -> PruningEnv:
        return PruningEnv(
            config,
            model=model,
            example_inputs=example_inputs,
            evaluate=evaluate,
            selection=selection,
            calibration=calibration,
        )

    return factory


def prune(
    model: nn.Module,
    policy: Policy | str | Path,
    example_inputs: Tensor | None = None,
    calibration: Tensor | Iterable | None = None,
    strict: bool = False,
) -> nn.Module:
    """A physically smaller copy of ``model`` pruned by ``policy`` (a :class:`Policy` or its JSON file).

    ``example_inputs`` gives the input shape (default: the one recorded in the policy);
    ``calibration`` inputs (a tensor or an iterable of batches) are needed when the policy
    uses reconstruction, as search policies do by default. ``strict`` refuses a model with
    a layer that cannot be pruned instead of leaving it dense.
    """
    policy = policy if isinstance(policy, Policy) else Policy.load(policy)
    shape = None if example_inputs is None else (1, *example_inputs.shape[1:])
    return apply_policy(model, policy, shape, calibration, strict=strict)


def classification_evaluator(
    loader: Iterable, max_images: int | None = None, device: str | torch.device = "cpu"
) -> Evaluate:
    """An evaluation function: top-1 accuracy (%) over ``loader``'s ``(inputs, labels)`` batches.

    Args:
        loader: Iterable of ``(inputs, labels)`` batches, e.g. a validation ``DataLoader``
            (keep its order fixed, i.e. ``shuffle=False``, so every policy sees the same images).
        max_images: Stop after this many images (``None``: all of them).
        device: Where the model runs.
    """
    device = torch.device(device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        model.eval().to(device)
        correct = seen = 0
        for inputs, labels, *_ in loader:
            if max_images is not None and seen >= max_images:
                break
            take = len(labels) if max_images is None else min(len(labels), max_images - seen)
            logits = model(inputs[:take].to(device))
            correct += (logits.argmax(1).cpu() == labels[:take].cpu()).sum().item()
            seen += take
        if not seen:
            raise ValueError("the evaluation loader yielded no images")
        return 100.0 * correct / seen

    return evaluate
