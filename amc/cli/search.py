"""``amc search``: learn a pruning policy with an RL agent (or random search, CEM) on the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

from amc.baselines import uniform_policy
from amc.cli.common import add_data_args, add_env_args, add_model_args, env_config, explicit_options, whole

ENV_OPTIONS = (
    "target",
    "mode",
    "nm",
    "reward",
    "max_sparsity",
    "round_to",
    "latency_batch",
    "criterion",
    "reconstruct",
    "recalibrate",
    "search_images",
    "selection_images",
    "race_slice",
    "strict",
)
"""The search takes every environment option (:func:`search_env_config` reads them)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc search``."""
    p = sub.add_parser(
        "search",
        help="learn per-layer sparsities with an RL agent (AMC)",
        description="Search a pruning policy with DDPG/TD3/SAC on the pruning environment. "
        "With no arguments: shipped ResNet-20, bundled CIFAR-10 sample, 50 % FLOPs.",
    )
    add_model_args(p, "shipped")
    add_data_args(p, "sample")
    add_env_args(p, ENV_OPTIONS)
    p.add_argument(
        "--agent",
        default="ddpg",
        help="searcher: an RL agent (ddpg, td3, sac), 'random' (uniform random actions) or 'cem' "
        "(cross-entropy method); all get the same episodes and final selection (default: %(default)s)",
    )
    p.add_argument(
        "--episodes", type=whole(1), default=300, help="episodes in all, warm-up included (default: 300)"
    )
    p.add_argument(
        "--warmup",
        type=whole(0),
        default=None,
        help="warm-up episodes of random actions (default: the preset's, 100; 0 with --agent-init)",
    )
    p.add_argument(
        "--agent-init",
        default=None,
        metavar="AGENT_PT",
        help="warm-start the RL agent's networks from an earlier search's agent.pt (same --agent)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the agent (default: 0)")
    p.add_argument(
        "--finalists",
        type=whole(0),
        default=10,
        help="best episodes re-scored on the selection images at the end (default: %(default)s)",
    )
    p.add_argument(
        "--envs",
        type=whole(1),
        default=1,
        help="episodes scored in parallel (subprocesses, or Ray actors with --ray) (default: 1)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="score the --envs episodes on Ray actors: a local Ray instance, or the cluster at ADDRESS "
        "(e.g. auto, head:6379); with --resume, continue there (pip install 'amc-pruner[ray]')",
    )
    p.add_argument(
        "--hp",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="hyper-parameter overrides on the agent preset, e.g. noise_decay=0.98 batch_size=128",
    )
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument(
        "--name", default=None, help="run folder name (default: <model>__<agent>__seed<k>__<time>)"
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the search in RUN_DIR with its own settings (only --episodes-override, "
        "--no-progress and --no-summary go with it)",
    )
    p.add_argument(
        "--episodes-override", type=whole(1), default=None, help="with --resume: new total episode count"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-summary", action="store_true", help="skip the dense/best/uniform table at the end")
    p.set_defaults(func=cmd_search)


def search_env_config(args: argparse.Namespace):
    """The :class:`~amc.envs.config.EnvConfig` of ``amc search``'s command line."""
    return env_config(
        args,
        reward=args.reward,
        mode=args.mode,
        nm=args.nm,
        max_sparsity=args.max_sparsity,
        round_to=args.round_to,
        latency_batch=args.latency_batch,
        criterion=args.criterion,
        reconstruct=args.reconstruct,
        recalibrate=args.recalibrate,
        search_images=args.search_images,
        selection_images=args.selection_images,
        race_slice=args.race_slice,
        strict=args.strict,
    )


RESUME_OPTIONS = ("resume", "episodes_override", "ray", "no_progress", "no_summary", "verbose")
"""What ``amc search --resume`` takes; the run's other settings come from its ``config.yaml``."""


def check_resume_options(args: argparse.Namespace) -> None:
    """Refuse options that ``--resume`` would ignore (the run keeps the settings it started with)."""
    given = explicit_options(getattr(args, "argv", None) or [], add_parser)
    ignored = [option for dest, option in given.items() if dest not in RESUME_OPTIONS]
    if ignored:
        raise ValueError(
            f"--resume continues {args.resume} with the settings in its config.yaml, so {', '.join(ignored)} "
            "would be ignored; drop them (--episodes-override N sets a new episode total)"
        )


def cmd_search(args: argparse.Namespace) -> int:
    """``amc search``: learn a pruning policy with an RL agent; print dense vs best vs uniform."""
    from amc.agents.factory import parse_overrides
    from amc.agents.search import SearchConfig, choice_label, resume_search, run_search

    if args.resume:
        check_resume_options(args)
        moved = {"ray": args.ray} if args.ray is not None else {}  # else: where the run was scored
        result = resume_search(args.resume, args.episodes_override, progress=not args.no_progress, **moved)
    else:
        if args.episodes_override is not None:
            raise ValueError("--episodes-override goes with --resume; a new search takes --episodes")
        hp = parse_overrides(args.hp)
        if args.warmup is not None:
            hp["warmup_episodes"] = args.warmup
        config = SearchConfig(
            env=search_env_config(args),
            agent=args.agent,
            episodes=args.episodes,
            seed=args.seed,
            envs=args.envs,
            ray=args.ray,
            hp=hp,
            runs_dir=args.runs_dir,
            name=args.name or "",
            finalists=args.finalists,
            agent_init=args.agent_init or "",
        )
        result = run_search(config, progress=not args.no_progress)
    best = result["best"]
    split = (
        f": {result['warmup']} random warm-up + {result['episodes'] - result['warmup']} learned"
        if result["warmup"]
        else ""
    )
    raced = f", {result['raced']} stopped early by racing" if result["raced"] else ""
    print(
        f"run: {result['run_dir']}  ({result['agent']}, {result['episodes']} episodes{split}{raced}, "
        f"{result['seconds'] / 60:.1f} min)"
    )
    selection = (
        f", selection accuracy {best['selection_accuracy']:.2f} %" if "selection_accuracy" in best else ""
    )
    print(
        f"best policy: {choice_label(best)}, search accuracy {best.get('accuracy', 0):.2f} %"
        f"{selection}, FLOPs {best.get('flops_ratio', 0):.3f}, params {best.get('params_ratio', 0):.3f}"
        + (f", latency {best['measured_latency']:.3f} (measured)" if "measured_latency" in best else "")
    )
    if not args.no_summary:
        print(summary(result["env"], Path(result["run_dir"])))
    return 0


def summary(env, run_dir: Path) -> str:
    """Dense vs best policy vs uniform policy at the same budget, on the held-out test images."""
    from amc.files import write_json
    from amc.policy import Policy
    from amc.report import compare, format_table

    backend = env.backend
    if backend.mode != "channel":
        return "(summary table: channel mode only)"
    pruner, scorer = backend.pruner, backend.scorer
    best = Policy.load(run_dir / "best_policy.json")
    kept = {"best": [best.kept[u.name] for u in pruner.units]}
    target = env.config.target
    if target is not None and env.config.metric != "latency":
        uniform = uniform_policy(pruner, target, env.config.metric)
        kept["uniform"] = [uniform.kept[u.name] for u in pruner.units]
        uniform.save(run_dir / "uniform_policy.json")
    rows = compare(pruner, scorer.dataset, kept, scorer, "test", env.config.device)
    text = format_table(rows, f"held-out test images ({len(scorer.dataset.split('test'))}):")
    write_json(run_dir / "summary.json", [r.__dict__ for r in rows], indent=1)
    return text
