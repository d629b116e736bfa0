"""Sub-commands of ``amc`` around the search: ``search``, ``apply`` and ``compare``.

Kept apart from :mod:`amc.cli` so that ``amc train``/``evaluate`` never import the RL stack.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from amc.baselines import TargetError, uniform_policy
from amc.budget import Budget, BudgetError

log = logging.getLogger("amc")


def parse_target(text: str) -> Budget:
    """Parse ``--target`` (:meth:`Budget.parse`), as an argparse type."""
    try:
        return Budget.parse(text)
    except BudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole(least: int):
    """An argparse type: a whole number of at least ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least {least}")
        return value

    return parse


def parse_nm_arg(text: str) -> tuple[int, int]:
    """``--nm N:M`` as ``(N, M)``, with argparse's one-line error for anything else."""
    from amc.pruning.finegrained import parse_nm

    try:
        return parse_nm(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_env_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that builds a pruning environment (defaults: ``EnvConfig``'s)."""
    from amc.envs.config import EnvConfig

    env = EnvConfig()
    p.add_argument(
        "--target",
        type=parse_target,
        default=Budget(env.metric, env.target),
        help="budget as a ratio of the dense model: flops=0.5, params=0.3, latency=0.6, or none "
        "(accuracy-guaranteed mode, use with --reward acc_flops/acc_params) (default: flops=0.5)",
    )
    p.add_argument(
        "--mode",
        default="channel",
        choices=["channel", "finegrained", "nm"],
        help="structured channel pruning, fine-grained magnitude pruning, or nm: per layer, keep the "
        "N largest of every M consecutive weights or not (default: %(default)s)",
    )
    p.add_argument(
        "--nm",
        type=parse_nm_arg,
        default=env.nm,
        metavar="N:M",
        help="pattern of --mode nm, e.g. 2:4 (default: 2:4)",
    )
    p.add_argument(
        "--reward",
        default=None,
        help="reward: acc, acc_flops, acc_params, acc_latency (default: acc with a target, "
        "acc_flops without)",
    )
    p.add_argument(
        "--max-sparsity",
        type=float,
        default=env.max_sparsity,
        help="largest per-unit sparsity (default: %(default)s)",
    )
    p.add_argument(
        "--round-to",
        type=whole(1),
        default=env.round_to,
        help="kept channels are multiples of this (default: %(default)s)",
    )
    p.add_argument(
        "--latency-batch",
        type=whole(1),
        default=env.latency_batch,
        help="batch size at which a latency budget is measured (default: %(default)s)",
    )
    p.add_argument(
        "--criterion",
        default=env.criterion,
        choices=["l1", "l2"],
        help="channel importance (default: %(default)s)",
    )
    p.add_argument(
        "--no-reconstruct",
        dest="reconstruct",
        action="store_false",
        help="no least-squares reconstruction of consumer layers (on by default)",
    )
    p.add_argument(
        "--no-recalibrate",
        dest="recalibrate",
        action="store_false",
        help="no BatchNorm recalibration before scoring (on by default)",
    )
    p.add_argument(
        "--search-images",
        type=whole(1),
        default=env.search_images,
        help="search-split images scored per episode (default: %(default)s)",
    )
    p.add_argument(
        "--selection-images",
        type=whole(0),
        default=env.selection_images,
        help="other search-split images on which the search re-scores its best episodes before "
        "choosing the final policy; 0 keeps the best episode (default: %(default)s)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a model with a layer channel pruning cannot follow (by default that layer "
        "stays dense, with a warning naming it)",
    )


def env_config(args: argparse.Namespace):
    """The :class:`~amc.envs.config.EnvConfig` described by the command line."""
    from amc.envs.config import EnvConfig

    metric, target = args.target.metric, args.target.ratio
    reward = args.reward or ("acc" if target is not None else "acc_flops")
    return EnvConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        width=args.width,
        dataset=args.dataset,
        data=args.data,
        split_seed=args.split_seed,
        search_size=args.search_size,
        download=args.download,
        input_size=args.input_size,
        normalize=args.normalize,
        workers=args.workers,
        mode=args.mode,
        nm=args.nm,
        metric=metric,
        target=target,
        reward=reward,
        max_sparsity=args.max_sparsity,
        round_to=args.round_to,
        latency_batch=args.latency_batch,
        criterion=args.criterion,
        reconstruct=args.reconstruct,
        recalibrate=args.recalibrate,
        search_images=args.search_images,
        selection_images=args.selection_images,
        device=args.device,
        threads=args.threads,
        strict=args.strict,
    )


RESUME_OPTIONS = ("resume", "episodes_override", "no_progress", "no_summary", "verbose")
"""What ``amc search --resume`` takes; the run's other settings come from its ``config.yaml``."""


def check_resume_options(args: argparse.Namespace) -> None:
    """Refuse options that ``--resume`` would ignore (the run keeps the settings it started with)."""
    from amc.cli import explicit_options

    given = explicit_options(getattr(args, "argv", None) or [])
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
        result = resume_search(args.resume, args.episodes_override, progress=not args.no_progress)
    else:
        if args.episodes_override is not None:
            raise ValueError("--episodes-override goes with --resume; a new search takes --episodes")
        hp = parse_overrides(args.hp)
        if args.warmup is not None:
            hp["warmup_episodes"] = args.warmup
        config = SearchConfig(
            env=env_config(args),
            agent=args.agent,
            episodes=args.episodes,
            seed=args.seed,
            envs=args.envs,
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
    print(
        f"run: {result['run_dir']}  ({result['agent']}, {result['episodes']} episodes{split}, "
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

    config = env_config(args)
    if config.target is None or config.mode != "channel":
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


def check_apply_options(args: argparse.Namespace, out: Path) -> None:
    """Refuse ``amc apply`` options that cannot be honoured, before anything is pruned or written."""
    if (args.distill or args.resume or args.steps > 1 or args.rewind) and not args.finetune_epochs:
        raise ValueError(
            "--distill, --resume, --steps and --rewind act on fine-tuning; add --finetune-epochs N (e.g. 5)"
        )
    if args.resume and (args.steps > 1 or args.rewind):
        raise ValueError("--resume continues a one-step fine-tune; rerun --steps/--rewind into a new --out")
    if args.rewind:
        rewind_checkpoint(args)  # a missing file fails now, not after pruning
    if args.onnx:
        from amc.export import require_onnx

        require_onnx()  # before anything is pruned
    if (out / "pruned.pt").exists():
        raise FileExistsError(
            f"{out} already holds a pruned model ({out / 'pruned.pt'}); choose another --out"
        )
    state = out / "finetune" / "last.pt"
    if args.resume and not state.exists():
        raise FileNotFoundError(f"nothing to resume: {state} does not exist")
    if state.exists() and not args.resume:
        raise FileExistsError(f"{out} holds an interrupted fine-tune; pass --resume to continue it")


def rewind_checkpoint(args: argparse.Namespace) -> Path:
    """The ``epoch<K>.pt`` file of ``--rewind K``: beside the ``--checkpoint`` of an ``amc train`` run."""
    if args.checkpoint in (None, "none", "shipped"):
        raise ValueError("--rewind needs --checkpoint <run>/model.pt of an amc train run with --save-epochs")
    path = Path(args.checkpoint).parent / f"epoch{args.rewind}.pt"
    if not path.exists():
        raise FileNotFoundError(
            f"--rewind {args.rewind}: {path} does not exist; train with amc train --save-epochs {args.rewind}"
        )
    return path


def cmd_apply(args: argparse.Namespace) -> int:
    """``amc apply``: prune a model with a saved policy (or a saved agent), evaluate and save it."""
    from amc.files import claim_folder

    if bool(args.policy) == bool(args.agent):
        raise ValueError("give exactly one of --policy (a policy JSON) or --agent (an agent.pt to roll out)")
    out = Path(args.out)
    with claim_folder(out):  # writable, and ours alone, before anything is pruned; no folder left on errors
        check_apply_options(args, out)
        return _apply(args, out)


def _apply(args: argparse.Namespace, out: Path) -> int:
    """The body of :func:`cmd_apply`, in its claimed output folder."""
    from amc.cli import model_and_data
    from amc.files import write_json
    from amc.policy import Policy, apply_policy, measure_cost, save_pruned
    from amc.scoring import calibration_images
    from amc.train import evaluate, recalibrate_bn_on

    policy = None if args.agent else Policy.load(args.policy)  # a bad file fails before loading
    model, dataset, _ = model_and_data(args)  # once: the agent's rollout prunes a copy
    if args.agent:
        from amc.agents.transfer import rollout_policy
        from amc.envs.config import build_backend
        from amc.envs.pruning_env import PruningEnv

        config = env_config(args)
        env = PruningEnv(config, backend=build_backend(config, loaded=(model, dataset)))
        policy = rollout_policy(args.agent, config, env=env)
    if args.finetune_epochs:
        dataset.split("train")  # no training split: fail now, not after pruning
    shape = (1, dataset.in_channels, *dataset.split("test").images.shape[1:3])
    needs_images = policy.reconstruct or args.recalibrate
    images = calibration_images(dataset, 1024, seed=7).to(args.device) if needs_images else None
    dense_top1 = evaluate(model, dataset, "test", device=args.device)["top1"]
    calibration = images[:256] if images is not None else None
    pruned = apply_policy(model, policy, shape, calibration, strict=args.strict)
    if args.recalibrate:
        recalibrate_bn_on(pruned, images)
    if args.finetune_epochs:
        from amc.train import TrainConfig, train

        config = TrainConfig(
            epochs=args.finetune_epochs, lr=args.finetune_lr, warmup_epochs=0, threads=args.threads
        )
        teacher = model if args.distill else None  # apply_policy pruned a copy: model is still dense
        teachers = [{"model": args.model, "checkpoint": args.checkpoint}] if teacher else []
        manifest = {"policy": policy.model, "teachers": teachers, "steps": args.steps, "rewind": args.rewind}
        if args.steps > 1 or args.rewind or policy.mode != "channel":  # pruned weights stay zero
            from amc.files import load_weights
            from amc.iterative import prune_iteratively

            state = load_weights(rewind_checkpoint(args), "rewind checkpoint") if args.rewind else None
            pruned = prune_iteratively(
                model,
                policy,
                shape,
                dataset,
                config,
                out,
                args.steps,
                state,
                args.device,
                manifest=manifest,
                teacher=teacher,
            )
        else:
            train(pruned, dataset, config, out / "finetune", args.device, args.resume, manifest, teacher)
    metrics = evaluate(pruned, dataset, "test", device=args.device)
    if policy.mode == "finegrained":
        from amc.pruning.finegrained import export_sparse

        size = export_sparse(pruned, out / "pruned_sparse.pt")
        total = {k: v / 1e6 for k, v in size["total"].items()}
        print(
            f"stored size: dense {total['dense']:.2f} MB, CSR {total['csr']:.2f} MB, "
            f"bitmask {total['bitmask']:.2f} MB, file {size['file_bytes'] / 1e6:.2f} MB"
        )
    if policy.mode == "nm":
        from amc.pruning.finegrained import nm_stored_size

        nm_size = nm_stored_size(pruned, tuple(policy.nm))
        print(
            f"stored size: dense {nm_size['dense'] / 1e6:.2f} MB, {policy.nm[0]}:{policy.nm[1]} compressed "
            f"{nm_size['total'] / 1e6:.2f} MB ({len(nm_size['compressed'])} layers, {nm_size['ratio']:.2f}x)"
        )
    sparse = policy.mode in ("finegrained", "nm")
    measured = replace(
        policy, cost_before=measure_cost(model, shape, sparse), cost_after=measure_cost(pruned, shape, sparse)
    )
    _compare_costs(policy, measured)
    result = {
        "dense_top1": dense_top1,
        "pruned_top1": metrics["top1"],
        **measured.ratios(),
        "cost_before": measured.cost_before,
        "cost_after": measured.cost_after,
        "finetune_epochs": args.finetune_epochs,
        "steps": args.steps,
        "rewind": args.rewind,
        "distill": args.distill,
    }
    if args.onnx:
        nm = tuple(policy.nm) if policy.mode == "nm" else None
        result["onnx_max_abs_diff"] = _export_onnx(pruned, dataset, out / "pruned.onnx", nm)
    write_json(out / "metrics.json", result)
    save_pruned(pruned, policy, out / "pruned.pt")  # last: pruned.pt marks a finished apply
    print(
        f"dense {dense_top1:.2f} % -> pruned {metrics['top1']:.2f} % on the test split; "
        f"FLOPs {result.get('flops_ratio', 1):.3f}, params {result.get('params_ratio', 1):.3f}; saved {out}"
    )
    return 0


def _export_onnx(pruned, dataset, path: Path, nm: tuple[int, int] | None = None) -> float:
    """Write ``pruned`` as ONNX, checked on 8 test images, and print the check; returns its largest diff."""
    from amc.data import iterate_batches
    from amc.export import export_onnx

    images = next(iter(iterate_batches(dataset.split("test"), dataset, 8)))[0]
    report = export_onnx(pruned, images, path, nm=nm)
    compressed = f", {report.nm_bytes / 1e6:.2f} MB as N:M" if report.nm_bytes is not None else ""
    print(
        f"wrote {path} ({report.file_bytes / 1e6:.2f} MB, {100 * report.sparsity:.1f} % zero weights"
        f"{compressed}); onnxruntime vs PyTorch max |diff| {report.max_abs_diff:.2e}"
    )
    return report.max_abs_diff


def _compare_costs(policy, measured) -> None:
    """Warn when the policy file's cost ratios differ from the pruned model's measured ones."""
    claimed, actual = policy.ratios(), measured.ratios()
    for key, value in actual.items():
        if key in claimed and abs(claimed[key] - value) > 0.01 * max(value, 1e-9):
            log.warning(
                "the policy file gives %s %.4f, the pruned model measures %.4f; reporting the measurement",
                key,
                claimed[key],
                value,
            )


def cmd_summarize(args: argparse.Namespace) -> int:
    """``amc summarize``: mean ± std over search runs (e.g. seeds), and searchers side by side."""
    from amc.agents.summary import load_run, mean_std, searcher_table

    records = [load_run(run) for run in args.runs]
    for r in records:
        print(
            f"{r.name}: {r.agent}, best {r.best:.2f} % ({r.label}), uniform {r.uniform:.2f} %, "
            f"gain {r.best - r.uniform:+.2f}, {r.episodes} episodes, {r.minutes:.1f} min"
        )
    print(
        f"{len(records)} runs: best {mean_std([r.best for r in records])} %, "
        f"uniform {mean_std([r.uniform for r in records])} %, "
        f"gain {mean_std([r.best - r.uniform for r in records])} points, "
        f"{mean_std([r.minutes for r in records])} min per run"
    )
    if len({r.agent for r in records}) > 1:
        print(searcher_table(records))
    return 0


def add_parsers(sub: argparse._SubParsersAction, add_model_args, add_data_args) -> None:
    """Register ``search``, ``apply``, ``compare`` and ``summarize`` on the ``amc`` parser."""

    def env_command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        add_model_args(p, "shipped")
        add_data_args(p, "sample")
        add_env_args(p)
        return p

    p = env_command(
        "search",
        "learn per-layer sparsities with an RL agent (AMC)",
        "Search a pruning policy with DDPG/TD3/SAC on the pruning environment. "
        "With no arguments: shipped ResNet-20, bundled CIFAR-10 sample, 50 % FLOPs.",
    )
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
        "--envs", type=whole(1), default=1, help="episodes scored in parallel subprocesses (default: 1)"
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

    p = env_command(
        "apply",
        "prune a model with a saved policy or agent, evaluate, save",
        "Apply a policy JSON (or roll out a saved agent.pt on this model), "
        "optionally fine-tune, evaluate on the test split, save pruned.pt.",
    )
    p.add_argument("--policy", default=None, help="policy JSON (e.g. runs/<run>/best_policy.json)")
    p.add_argument(
        "--agent",
        default=None,
        help="agent.pt of an earlier search (or its run folder), rolled out on this model",
    )
    p.add_argument(
        "--finetune-epochs", type=whole(0), default=0, help="fine-tune epochs (needs a training split)"
    )
    p.add_argument("--finetune-lr", type=float, default=0.01, help="fine-tune learning rate (default: 0.01)")
    p.add_argument(
        "--distill",
        action="store_true",
        help="fine-tune by distilling the dense model (knowledge distillation)",
    )
    p.add_argument("--out", default="runs/apply", help="output folder (default: runs/apply)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted fine-tune in --out (same policy and options)",
    )
    p.add_argument(
        "--steps",
        type=whole(1),
        default=1,
        help="reach the policy in this many prune-then-fine-tune steps, --finetune-epochs split "
        "among them (default: 1)",
    )
    p.add_argument(
        "--rewind",
        type=whole(1),
        default=None,
        metavar="EPOCH",
        help="reset the kept weights to epoch<EPOCH>.pt beside --checkpoint (amc train --save-epochs) "
        "before the final fine-tune (lottery ticket)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write pruned.onnx (BatchNorm folded, checked against PyTorch with onnxruntime; "
        "needs the onnx extra)",
    )
    p.set_defaults(func=cmd_apply)

    p = env_command(
        "compare",
        "pruning methods side by side at equal budgets, optionally fine-tuned",
        "Prune with each method at the budget (a search's best policy, --policy files, uniform, "
        "sensitivity analysis, random search), evaluate on the held-out test images, optionally "
        "fine-tune each with the same recipe and evaluate again. Writes compare.md and compare.csv "
        "into --out, TensorBoard events, and with fine-tuning accuracy_vs_flops.png and profiles.png. "
        "A re-run with the same --out skips the methods already done.",
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

    p = sub.add_parser(
        "summarize",
        help="mean ± std of best vs uniform over search runs (e.g. seeds); searchers side by side",
        description="Aggregate the held-out summary tables of finished search runs. Runs of several "
        "searchers (--agent) are also compared seed by seed against random search.",
    )
    p.add_argument("runs", nargs="+", help="run folders (each with summary.json and state.json)")
    p.set_defaults(func=cmd_summarize)
