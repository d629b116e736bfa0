"""``amc compare``: pruning methods side by side at equal budgets, optionally after the same fine-tune."""

from __future__ import annotations

import argparse
from pathlib import Path

from amc.baselines import TargetError
from amc.cli.common import add_data_args, add_env_args, add_model_args, env_config

ENV_OPTIONS = (
    "target",
    "max_sparsity",
    "round_to",
    "criterion",
    "reconstruct",
    "recalibrate",
    "search_images",
    "selection_images",
    "strict",
)
"""The environment options of the comparison's channel-mode pruner and scorer (no mode, reward or
latency: it compares channel pruning at a flops or params budget)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc compare``."""
    p = sub.add_parser(
        "compare",
        help="pruning methods side by side at equal budgets, optionally fine-tuned",
        description="Prune with each method at the budget (a search's best policy, --policy files, uniform, "
        "sensitivity analysis, random search), evaluate on the held-out test images, optionally "
        "fine-tune each with the same recipe and evaluate again. Writes compare.md and compare.csv "
        "into --out, TensorBoard events, and with fine-tuning accuracy_vs_flops.png and profiles.png. "
        "A re-run with the same --out skips the methods already done.",
    )
    add_model_args(p, "shipped")
    add_data_args(p, "sample")
    add_env_args(
        p,
        ENV_OPTIONS,
        target="budget as a ratio of the dense model: flops=0.5 or params=0.3 (default: flops=0.5)",
        search_images="search-split images on which sensitivity analysis and random search score "
        "their candidates (default: %(default)s)",
        selection_images="search-split images kept out of reconstruction and BatchNorm calibration, as "
        "a search keeps its selection images: give the search's value (default: %(default)s)",
    )
    p.add_argument(
        "--baselines",
        default="uniform,sensitivity,random",
        help="comma-separated baselines among uniform, sensitivity, random (default: all three)",
    )
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a search run folder: its best_policy.json is compared as 'search', and random search gets "
        "its episode count (state.json); repeat for runs at several budgets",
    )
    p.add_argument("--policy", nargs="*", default=[], help="extra policy JSON files to compare")
    p.add_argument(
        "--targets",
        default="",
        help="further budgets (ratios in --target's metric) at which the baselines are built, "
        "e.g. 0.3,0.5,0.7, for the accuracy-vs-FLOPs plot (default: --target's only)",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=30,
        help="random-search trials without --search (with it: the search's episodes) (default: 30)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random search and fine-tuning (default: 0)")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tune every pruned model this many epochs (needs a training split; default: 0, none)",
    )
    p.add_argument("--finetune-lr", type=float, default=0.01, help="fine-tune learning rate (default: 0.01)")
    p.add_argument("--distill", action="store_true", help="fine-tune by distilling the dense model")
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the PNG plots (drawn with --finetune-epochs; they need matplotlib: "
        "pip install 'amc-pruner[plot]')",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the fine-tuning progress bars")
    p.add_argument(
        "--out",
        default="runs/compare",
        help="output folder: tables, plots, policies, results; a re-run continues it (default: runs/compare)",
    )
    p.set_defaults(func=cmd_compare)


def compare_env_config(args: argparse.Namespace):
    """The :class:`~amc.envs.config.EnvConfig` of ``amc compare``'s pruner and scorer (channel mode)."""
    return env_config(
        args,
        max_sparsity=args.max_sparsity,
        round_to=args.round_to,
        criterion=args.criterion,
        reconstruct=args.reconstruct,
        recalibrate=args.recalibrate,
        search_images=args.search_images,
        selection_images=args.selection_images,
        strict=args.strict,
    )


def cmd_compare(args: argparse.Namespace) -> int:
    """``amc compare``: methods side by side at equal budgets, optionally after the same fine-tune."""
    from amc.compare import (
        CompareConfig,
        Comparison,
        given_entry,
        parse_ratios,
        random_trials,
        read_search_run,
    )
    from amc.compare_report import markdown_table, write_report
    from amc.envs.config import build_backend
    from amc.files import claim_folder

    config = compare_env_config(args)
    if config.target is None:
        raise TargetError("compare needs channel mode and a budget, e.g. --target flops=0.5")
    plots = bool(args.finetune_epochs) and not args.no_plots
    if plots:
        from amc.plots import require_matplotlib

        require_matplotlib()  # before hours of fine-tuning, not after
    runs = [read_search_run(run, config.metric) for run in args.search]
    given = [r.entry for r in runs] + [given_entry(p, config.metric) for p in args.policy]
    compare_config = CompareConfig(
        metric=config.metric,
        target=config.target,
        targets=parse_ratios(args.targets),
        baselines=tuple(b for b in args.baselines.split(",") if b),
        trials=random_trials(runs, args.trials),
        max_sparsity=config.max_sparsity,
        seed=args.seed,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        distill=args.distill,
        threads=args.threads,
        progress=not args.no_progress,
        device=config.device,
        model=config.model,
    )
    identity = ("model", "checkpoint", "width", "dataset", "data", "split_seed", "search_size")
    identity += ("input_size", "normalize")
    identity += ("criterion", "round_to", "reconstruct", "recalibrate", "search_images", "selection_images")
    settings = {k: getattr(config, k) for k in identity}
    with claim_folder(Path(args.out)):  # one comparison at a time writes --out
        backend = build_backend(config)
        comparison = Comparison(backend.pruner, backend.scorer, compare_config, args.out, given, settings)
        test_images = len(backend.scorer.dataset.split("test"))
        report = comparison.run(f"{config.model} on {config.dataset}, {test_images} test images")
        written = write_report(report, args.out, plots)
    print(markdown_table(report))
    print(f"wrote {', '.join(str(p) for p in written)} and TensorBoard events")
    return 0
