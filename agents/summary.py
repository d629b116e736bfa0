"""Summaries over finished search runs: mean ± std over seeds, and searchers side by side.

A run folder holds everything needed: ``config.yaml`` (model, agent, seed), ``summary.json``
(held-out accuracy of the final policy and of the uniform policy), ``state.json`` (episodes,
time) and ``episodes.csv`` (every episode's search accuracy). Searchers are compared seed by
seed against ``random`` (the same environment, budget and final selection): the held-out
gain, and how many episodes each needed to reach the best search accuracy that random
search reached in its whole budget.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


@dataclass
class RunRecord:
    """What a finished search run reports.

    Attributes:
        name: Run folder name.
        model: Model name.
        agent: Searcher name.
        raced: Whether its episodes were raced (``race_slice`` > 0 in the run's config).
        seed: Seed.
        episodes: Episodes run.
        best: Held-out top-1 (%) of the final policy.
        uniform: Held-out top-1 (%) of the uniform policy.
        minutes: Search time.
        label: Which candidate won the final selection.
        best_so_far: Best search accuracy after each episode.
    """

    name: str
    model: str
    agent: str
    raced: bool
    seed: int
    episodes: int
    best: float
    uniform: float
    minutes: float
    label: str
    best_so_far: np.ndarray

    @property
    def searcher(self) -> str:
        """The searcher as tables group runs: the agent, marked ``(raced)`` when it raced."""
        return f"{self.agent} (raced)" if self.raced else self.agent


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a finished run folder (refused, naming the file, when a part is missing)."""
    run = Path(run_dir)
    for name in ("config.yaml", "summary.json", "state.json", "best_policy.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} is not a finished search run: {name} is missing")
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    table = {r["name"]: r for r in json.loads((run / "summary.json").read_text())}
    state = json.loads((run / "state.json").read_text())
    accuracy = []
    if (run / "episodes.csv").is_file():
        with (run / "episodes.csv").open(newline="") as f:
            accuracy = [float(r["accuracy"]) for r in csv.DictReader(f)]
    return RunRecord(
        name=run.name,
        model=config.get("env", {}).get("model", "?"),
        agent=config.get("agent", "?"),
        raced=int(config.get("env", {}).get("race_slice", 0)) > 0,
        seed=int(config.get("seed", 0)),
        episodes=int(state["episodes"]),
        best=float(table["best"]["top1"]),
        uniform=float(table["uniform"]["top1"]) if "uniform" in table else float("nan"),
        minutes=float(state.get("elapsed", 0.0)) / 60,
        label=choice_label(json.loads((run / "best_policy.json").read_text()).get("metrics", {})),
        best_so_far=np.maximum.accumulate(np.asarray(accuracy)) if accuracy else np.zeros(0),
    )


def choice_label(choice: dict) -> str:
    """``episode N``, or ``the actor policy`` / ``the uniform policy`` for the other finalists."""
    source = choice.get("source", "episode")
    return f"episode {choice.get('episode')}" if source == "episode" else f"the {source} policy"


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` with two decimals (std 0 for a single value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def episodes_to_reach(best_so_far: np.ndarray, level: float) -> int | None:
    """The first episode (1-based) whose best-so-far search accuracy reaches ``level``, if any."""
    hits = np.flatnonzero(best_so_far >= level)
    return int(hits[0]) + 1 if len(hits) else None


def searcher_table(records: list[RunRecord], reference: str = "random") -> str:
    """Markdown table: per model and searcher, held-out accuracy per seed and against ``reference``.

    Runs are grouped by searcher (raced runs apart) and paired with the reference searcher's
    run of the same model and seed (raced like them, if there is one). ``reach`` is
    the median number of episodes a searcher needed to match the reference's final best search
    accuracy (``-`` when it never did on some seed).
    """
    lines = [
        f"| model | searcher | episodes | held-out top-1 per seed | mean ± std | vs {reference} (mean) "
        f"| wins | episodes to reach {reference}'s best |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    refs = {(r.model, r.seed, r.raced): r for r in records if r.agent == reference}
    for model in sorted({r.model for r in records}):
        for searcher in sorted(
            {r.searcher for r in records if r.model == model},
            key=lambda a: (not a.startswith(reference), a),
        ):
            runs = sorted(
                (r for r in records if r.model == model and r.searcher == searcher), key=lambda r: r.seed
            )
            seeds = ", ".join(f"{r.best:.2f} (s{r.seed})" for r in runs)
            paired = [(r, ref) for r in runs if (ref := _reference(refs, r))]
            gain = wins = reach = "-"
            if paired and runs[0].agent != reference:
                gains = [r.best - ref.best for r, ref in paired]
                gain = f"{statistics.mean(gains):+.2f}"
                wins = f"{sum(g > 0 for g in gains)}/{len(gains)}"
                needed = [episodes_to_reach(r.best_so_far, ref.best_so_far[-1]) for r, ref in paired]
                if all(n is not None for n in needed):
                    reach = f"{statistics.median(needed):g} of {runs[0].episodes}"
            lines.append(
                f"| {model} | {searcher} | {runs[0].episodes} | {seeds} | {mean_std([r.best for r in runs])} "
                f"| {gain} | {wins} | {reach} |"
            )
    return "\n".join(lines)


def _reference(refs: dict[tuple[str, int, bool], RunRecord], run: RunRecord) -> RunRecord | None:
    """The reference run of ``run``'s model and seed, raced like it if there is one."""
    return refs.get((run.model, run.seed, run.raced)) or refs.get((run.model, run.seed, not run.raced))
