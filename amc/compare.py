"""Pruning methods side by side at equal budgets, before and after the same fine-tuning.

An *entry* is one method at one budget: a given policy (e.g. a search's ``best_policy.json``)
or a baseline built here (uniform, sensitivity analysis, random search; see
:mod:`amc.baselines`). Every entry is pruned with the same channel selection, reconstruction
and BatchNorm recalibration, evaluated on the test split, optionally fine-tuned with one
recipe (same seed, optionally distilling the dense model) and evaluated again.

The output folder is resumable: ``comparison.json`` records the settings (a folder that holds
another comparison is refused); each entry's policy (``policies/<key>.json``) and result
(``results/<key>.json``) are written atomically as they finish, and each fine-tune saves its
state every epoch (``finetune/<key>/last.pt``). A re-run with the same folder skips finished
entries and continues an interrupted fine-tune. :func:`amc.compare_report.write_report` rebuilds
the reports (``compare.md``, ``compare.csv``, TensorBoard events, PNG figures) from the results.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from torch import nn

from amc.backends import ChannelBackend
from amc.baselines import (
    SENSITIVITY_LEVELS,
    TargetError,
    random_search_policy,
    sensitivity_drops,
    sensitivity_policy,
    uniform_policy,
)
from amc.budget import MAX_SPARSITY
from amc.compare_report import Report, Result
from amc.data import Dataset
from amc.files import LOCK, write_json
from amc.policy import Policy, PolicyError, model_signature
from amc.pruning.channel import ChannelPruner
from amc.report import pruned_model
from amc.scoring import Scorer
from amc.train import TrainConfig, evaluate, train

log = logging.getLogger(__name__)
BASELINES = ("uniform", "sensitivity", "random")
"""Baselines :class:`Comparison` can build at any budget."""


class CompareError(ValueError):
    """An output folder that holds another comparison, or a policy that does not fit it."""


@dataclass
class CompareConfig:
    """Settings of a comparison.

    Attributes:
        metric: Budgeted resource, ``flops`` or ``params``.
        target: The main budget (a ratio of the dense cost); the profiles are drawn there.
        targets: Further budgets at which the baselines are built (accuracy against FLOPs).
        baselines: Baselines to build, among :data:`BASELINES`.
        trials: Random-search trials (give a search's episode count for equal terms).
        max_sparsity: Largest per-unit sparsity of random search and sensitivity analysis.
        seed: Seed of random search and of fine-tuning.
        finetune_epochs: Fine-tuning epochs per entry (0: compare without fine-tuning).
        finetune_lr: Peak learning rate of fine-tuning (cosine decay, no warm-up).
        distill: Fine-tune by distilling the dense model.
        threads: CPU threads of fine-tuning (0: every core).
        progress: Show fine-tuning progress bars.
        device: Torch device.
        model: Model name recorded in the baselines' policies.
    """

    metric: str = "flops"
    target: float = 0.5
    targets: tuple[float, ...] = ()
    baselines: tuple[str, ...] = BASELINES
    trials: int = 30
    max_sparsity: float = MAX_SPARSITY
    seed: int = 0
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    distill: bool = False
    threads: int = 0
    progress: bool = False
    device: str = "cpu"
    model: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; use {', '.join(BASELINES)}")
        if self.metric not in ("flops", "params"):
            raise TargetError(f"compare needs a flops or params budget, got '{self.metric}'")
        if not all(0.0 < t <= 1.0 for t in (self.target, *self.targets)):
            raise TargetError(f"budgets must be ratios in (0, 1], got {[self.target, *self.targets]}")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be 0 or more, got {self.finetune_epochs}")
        if self.distill and not self.finetune_epochs:
            raise ValueError("--distill acts on fine-tuning; add --finetune-epochs N (e.g. 3)")

    @property
    def budgets(self) -> list[float]:
        """The main budget and the further ones, ascending."""
        return sorted({self.target, *self.targets})

    def recipe(self) -> dict:
        """The settings that change results: part of the output folder's identity.

        ``trials`` is not: it labels the random-search entry instead, so a later run that adds
        ``--search`` (and so changes the trials) reuses every other finished entry.
        """
        keys = ("metric", "max_sparsity", "seed", "finetune_epochs", "finetune_lr", "distill")
        return {k: getattr(self, k) for k in keys}


@dataclass
class Entry:
    """One method at one budget.

    Attributes:
        method: Name in tables and plots: ``search``, a baseline, or a policy file's stem.
        target: Budget the entry was made for.
        policy: The policy when given; baselines are built (or reloaded) when run.
        label: Tells entries of one method apart: a search run's folder name, random search's
            trial count.
    """

    method: str
    target: float
    policy: Policy | None = None
    label: str = ""

    @property
    def name(self) -> str:
        """Display name: the method, with the label in brackets when there is one."""
        return f"{self.method} ({self.label})" if self.label else self.method

    @property
    def key(self) -> str:
        """File-name-safe identifier of the entry in the output folder."""
        text = "@".join([self.method, f"{self.target:g}", *([self.label] if self.label else [])])
        return re.sub(r"[^A-Za-z0-9._@-]", "_", text)


@dataclass
class SearchRun:
    """A finished search's policy as an entry, and the episodes it used."""

    entry: Entry
    episodes: int | None


def policy_digest(kept: dict[str, int]) -> str:
    """A short hash of a policy's kept channels (tells two policies apart)."""
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def given_entry(path: str | Path, metric: str = "flops", method: str = "", label: str = "") -> Entry:
    """A policy file as an entry; its budget is its own cost ratio, rounded to 2 decimals."""
    policy = Policy.load(path)
    if policy.mode != "channel":
        raise CompareError(f"{path} is a {policy.mode} policy; compare takes channel policies")
    ratio = policy.ratios().get("flops_ratio" if metric == "flops" else "params_ratio", 1.0)
    return Entry(method or Path(path).stem, round(ratio, 2), policy, label)


def read_search_run(run_dir: str | Path, metric: str = "flops") -> SearchRun:
    """A search run folder's ``best_policy.json`` (method ``search``) and its episode count.

    The budget is the run's own target (``config.yaml``) when it budgeted ``metric``; the
    episode count comes from ``state.json`` (``None`` when the folder has none).
    """
    run = Path(run_dir)
    if not (run / "best_policy.json").is_file():
        raise FileNotFoundError(f"{run} is not a finished search run (no best_policy.json)")
    entry = given_entry(run / "best_policy.json", metric, "search", run.name)
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    env = (config or {}).get("env", {})
    if env.get("target") and env.get("metric") == metric:
        entry.target = float(env["target"])
    state = run / "state.json"
    episodes = json.loads(state.read_text()).get("episodes") if state.is_file() else None
    return SearchRun(entry, episodes)


def parse_ratios(text: str) -> tuple[float, ...]:
    """Parse comma-separated budgets such as ``0.3,0.5,0.7`` (empty text: none).

    Raises:
        TargetError: A value is not a ratio in (0, 1].
    """
    try:
        ratios = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        ratios = (-1.0,)
    if not all(0.0 < r <= 1.0 for r in ratios):
        raise TargetError(f"bad targets '{text}': use ratios in (0, 1] like 0.3,0.5,0.7")
    return ratios


def random_trials(runs: Sequence[SearchRun], default: int) -> int:
    """Random-search trials: the searches' episode count (the largest, if they differ), else ``default``."""
    episodes = sorted({r.episodes for r in runs if r.episodes})
    if len(episodes) > 1:
        log.warning("the search runs used %s episodes; random search gets %d", episodes, episodes[-1])
    if runs and not episodes:
        log.warning("no state.json in the search runs: random search gets %d trials", default)
    return episodes[-1] if episodes else default


def prepare_out(out: Path, settings: dict) -> None:
    """Claim ``out`` for a comparison with ``settings``, or check it holds the same one.

    Raises:
        CompareError: ``out`` holds another comparison, or other files and no comparison.
    """
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    manifest = out / "comparison.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text()).get("settings", {})
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise CompareError(
                f"{out} holds a different comparison ({k}: {old.get(k)} there, {settings.get(k)} here); "
                "choose another --out or delete that folder"
            )
        return
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise CompareError(f"{out} holds other files and no comparison.json; choose another --out")
    write_json(manifest, {"settings": settings})


class Comparison:
    """Run the entries of a comparison into an output folder (resumably).

    Args:
        pruner: The analysed dense model; its selection and reconstruction apply to every entry.
        scorer: Scores baselines on the search split; its recalibration images recalibrate
            BatchNorm after pruning.
        config: The comparison's settings.
        out: Output folder.
        given: Given policies (a search's best policy, policy files).
        settings: Model and data settings that identify the comparison (with ``config.recipe()``).

    Attributes:
        backend: The :class:`~amc.backends.ChannelBackend` over ``pruner`` and ``scorer``,
            as a search has it: the baselines' and the results' costs, policies and scores.
    """

    def __init__(
        self,
        pruner: ChannelPruner,
        scorer: Scorer,
        config: CompareConfig,
        out: str | Path,
        given: Sequence[Entry] = (),
        settings: dict | None = None,
    ):
        self.pruner, self.scorer, self.config = pruner, scorer, config
        self.backend = ChannelBackend(pruner, scorer, model_name=config.model)  # costs, policies, scores
        self.dataset: Dataset = scorer.dataset
        self.out = Path(out)
        self.given = list(given)
        self.settings = {**(settings or {}), **config.recipe()}
        self._drops = None
        self._teacher: nn.Module | None = None

    def entries(self) -> list[Entry]:
        """The given policies, then each baseline at each budget (random search labelled by its trials)."""
        c = self.config
        label = {"random": f"{c.trials} trials"}
        return self.given + [Entry(b, t, None, label.get(b, "")) for t in c.budgets for b in c.baselines]

    def run(self, title: str = "") -> Report:
        """Measure every entry not measured in an earlier run; return the report of all of them."""
        if self.config.finetune_epochs:
            self.dataset.split("train")  # no training split: fail now, before anything is pruned
        prepare_out(self.out, self.settings)
        dense = self.dense_top1()
        results = [self.result(e) for e in self.entries()]
        units = [(u.name, u.channels) for u in self.pruner.units]
        c = self.config
        return Report(title, c.metric, c.target, c.finetune_epochs, dense, results, units)

    def dense_top1(self) -> float:
        """Test top-1 of the dense model (cached in ``results/dense.json``)."""
        path = self.out / "results" / "dense.json"
        if path.is_file():
            return json.loads(path.read_text())["top1"]
        self.pruner.reset()
        top1 = evaluate(self.pruner.model, self.dataset, "test", device=self.config.device)["top1"]
        write_json(path, {"top1": top1})
        return top1

    def policy(self, entry: Entry) -> Policy:
        """The entry's policy: given, built in an earlier run (``policies/<key>.json``) or built now."""
        if entry.policy is not None:
            self._check_fits(entry)
            return entry.policy
        path = self.out / "policies" / f"{entry.key}.json"
        if path.is_file():
            self._log(entry, "policy built in an earlier run (%s)", path, level=logging.DEBUG)
            return Policy.load(path)
        self._log(entry, "building the policy")
        policy = self._build(entry.method, entry.target)
        policy.save(path)
        return policy

    def _build(self, method: str, target: float) -> Policy:
        c, backend = self.config, self.backend
        if method == "uniform":
            return uniform_policy(backend, target, c.metric, backend.scorer)
        if method == "sensitivity":
            # The same cap as the search and random search, so no method may prune deeper.
            levels = tuple(v for v in SENSITIVITY_LEVELS if v <= c.max_sparsity + 1e-9)
            if self._drops is None:
                self._drops = sensitivity_drops(backend, levels=levels)
            return sensitivity_policy(
                backend, backend.scorer, target, c.metric, levels=levels, drops=self._drops
            )
        log.info("random search: %d trials", c.trials)
        return random_search_policy(
            backend, backend.scorer, target, c.metric, c.trials, c.max_sparsity, c.seed
        )

    def _check_fits(self, entry: Entry) -> None:
        policy, pruner = entry.policy, self.pruner
        if policy.signature and policy.signature != model_signature(pruner):
            raise PolicyError(
                f"{entry.name}: policy made for model '{policy.model}' does not fit this model "
                f"(signature {policy.signature} vs {model_signature(pruner)})"
            )
        mine = (pruner.criterion, pruner.reconstructor is not None)
        if (policy.criterion, policy.reconstruct) != mine:
            log.warning(
                "%s: made with criterion %s, reconstruction %s; applied here with %s, %s like every method",
                entry.name,
                policy.criterion,
                policy.reconstruct,
                *mine,
            )

    def kept(self, policy: Policy) -> dict[str, int]:
        """Kept channels per unit name (the policy's own counts, else from its sparsities)."""
        pruner = self.pruner
        derived = pruner.kept_for(pruner.sparsities_by_name(policy.sparsities))
        return {u.name: int(policy.kept.get(u.name, k)) for u, k in zip(pruner.units, derived, strict=True)}

    def result(self, entry: Entry) -> Result:
        """Measure one entry, or read its result from an earlier run."""
        path = self.out / "results" / f"{entry.key}.json"
        kept = self.kept(self.policy(entry))
        digest = policy_digest(kept)
        if path.is_file():
            done = Result(**json.loads(path.read_text()))
            if done.digest != digest:
                raise CompareError(
                    f"{path} holds the result of another {entry.name} policy; "
                    "choose another --out or delete that file"
                )
            self._log(entry, "done in an earlier run, skipped (%s)", path)
            return done
        result = self._measure(entry, kept, digest)
        write_json(path, asdict(result))
        return result

    def _measure(self, entry: Entry, kept: dict[str, int], digest: str) -> Result:
        t0, c = time.time(), self.config
        counts = [kept[u.name] for u in self.pruner.units]
        costs = self.backend.kept_costs(counts)
        ratio = costs["flops"], costs["params"]
        model = pruned_model(self.pruner, counts, self.scorer)
        before = evaluate(model, self.dataset, "test", device=c.device)["top1"]
        self._log(entry, "FLOPs %.3f, params %.3f, test top-1 %.2f %% before fine-tuning", *ratio, before)
        after = None
        if c.finetune_epochs:
            after = self.finetune(model, entry.key)
            self._log(entry, "test top-1 %.2f %% after fine-tuning (%.0f s)", after, time.time() - t0)
        result = Result(
            entry.key, entry.method, entry.label, entry.target, *ratio, before, after, kept, digest
        )
        result.seconds = round(time.time() - t0, 1)
        return result

    def finetune(self, model: nn.Module, key: str) -> float:
        """Fine-tune a pruned model with the comparison's recipe; its test top-1 afterwards.

        The state is saved every epoch in ``finetune/<key>``; an interrupted fine-tune continues.
        """
        c = self.config
        out = self.out / "finetune" / key
        resume = (out / "last.pt").is_file()
        if resume:
            log.info("%s: continuing the interrupted fine-tune in %s", key, out)
        recipe = TrainConfig(
            epochs=c.finetune_epochs,
            lr=c.finetune_lr,
            warmup_epochs=0,
            seed=c.seed,
            threads=c.threads,
            progress=c.progress,
        )
        manifest = {"model": c.model, "entry": key, "distill": c.distill}
        result = train(model, self.dataset, recipe, out, c.device, resume, manifest, self.teacher())
        return result["test_top1"]

    def _log(self, entry: Entry, message: str, *args: object, level: int = logging.INFO) -> None:
        log.log(level, "%s at %s=%g: " + message, entry.name, self.config.metric, entry.target, *args)

    def teacher(self) -> nn.Module | None:
        """A frozen copy of the dense model when distilling, else ``None``."""
        if self.config.distill and self._teacher is None:
            self.pruner.reset()
            self._teacher = copy.deepcopy(self.pruner.model)
        return self._teacher
