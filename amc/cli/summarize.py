"""``amc summarize``: mean ± std over finished search runs, and searchers side by side."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc summarize``."""
    p = sub.add_parser(
        "summarize",
        help="mean ± std of best vs uniform over search runs (e.g. seeds); searchers side by side",
        description="Aggregate the held-out summary tables of finished search runs. Runs of several "
        "searchers (--agent) are also compared seed by seed against random search.",
    )
    p.add_argument("runs", nargs="+", help="run folders (each with summary.json and state.json)")
    p.set_defaults(func=cmd_summarize)


def cmd_summarize(args: argparse.Namespace) -> int:
    """``amc summarize``: mean ± std over search runs (e.g. seeds), and searchers side by side."""
    from amc.agents.summary import load_run, mean_std, searcher_table

    records = [load_run(run) for run in args.runs]
    for r in records:
        print(
            f"{r.name}: {r.searcher}, best {r.best:.2f} % ({r.label}), uniform {r.uniform:.2f} %, "
            f"gain {r.best - r.uniform:+.2f}, {r.episodes} episodes, {r.minutes:.1f} min"
        )
    print(
        f"{len(records)} runs: best {mean_std([r.best for r in records])} %, "
        f"uniform {mean_std([r.uniform for r in records])} %, "
        f"gain {mean_std([r.best - r.uniform for r in records])} points, "
        f"{mean_std([r.minutes for r in records])} min per run"
    )
    if len({r.searcher for r in records}) > 1:
        print(searcher_table(records))
    return 0
