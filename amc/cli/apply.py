"""``amc apply``: prune a model with a saved policy (or roll out a saved agent), fine-tune, evaluate, save."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from amc.cli.common import add_data_args, add_env_args, add_model_args, env_config, model_and_data, whole

log = logging.getLogger("amc")

ROLLOUT_OPTIONS = (
    "target",
    "mode",
    "nm",
    "max_sparsity",
    "round_to",
    "latency_batch",
    "criterion",
    "reconstruct",
    "search_images",
)
"""Environment options of the ``--agent`` rollout only (a ``--policy`` file carries its own)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc apply``."""
    p = sub.add_parser(
        "apply",
        help="prune a model with a saved policy or agent, evaluate, save",
        description="Apply a policy JSON (or roll out a saved agent.pt on this model), "
        "optionally fine-tune, evaluate on the test split, save pruned.pt; also "
        "pruned_sparse.pt in finegrained mode (CSR where smaller) or pruned_nm.pt in nm mode "
        "(kept values plus packed indices).",
    )
    add_model_args(p, "shipped")
    add_data_args(p, "sample")
    add_env_args(
        p,
        ("recalibrate", "strict"),
        recalibrate="no BatchNorm recalibration of the pruned model before it is evaluated or fine-tuned "
        "(nor before the --agent rollout's scoring) (on by default)",
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
        "--amp",
        choices=["none", "bf16", "fp16"],
        default="none",
        help="fine-tune in mixed precision: bf16 (CPU, or a GPU with bfloat16) or fp16 (CUDA; default: none)",
    )
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
    rollout = p.add_argument_group(
        "--agent rollout",
        "the pruning environment a saved agent is rolled out in (a --policy file has its own)",
    )
    add_env_args(
        rollout,
        ROLLOUT_OPTIONS,
        target="budget as a ratio of the dense model: flops=0.5, params=0.3, latency=0.6, or none "
        "(default: flops=0.5)",
        search_images="search-split images each rollout episode is scored on (default: %(default)s)",
    )
    p.set_defaults(func=cmd_apply)


def apply_env_config(args: argparse.Namespace):
    """The :class:`~amc.envs.config.EnvConfig` of the ``--agent`` rollout.

    Its reward is the default one (``acc`` with a budget): the rollout keeps the blend of the
    actor's and the uniform policy's actions that scores best on the search images.
    """
    return env_config(
        args,
        mode=args.mode,
        nm=args.nm,
        max_sparsity=args.max_sparsity,
        round_to=args.round_to,
        latency_batch=args.latency_batch,
        criterion=args.criterion,
        reconstruct=args.reconstruct,
        recalibrate=args.recalibrate,
        search_images=args.search_images,
        strict=args.strict,
    )


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

        config = apply_env_config(args)
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
            epochs=args.finetune_epochs,
            lr=args.finetune_lr,
            warmup_epochs=0,
            threads=args.threads,
            amp=args.amp,
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
        from amc.pruning.finegrained import export_nm

        nm_size = export_nm(pruned, tuple(policy.nm), out / "pruned_nm.pt")
        layers, ratio = len(nm_size["compressed"]), nm_size["ratio"]
        print(
            f"stored size: dense {nm_size['dense'] / 1e6:.2f} MB, {policy.nm[0]}:{policy.nm[1]} compressed "
            f"{nm_size['total'] / 1e6:.2f} MB ({layers} layers, {ratio:.2f}x), "
            f"file pruned_nm.pt {nm_size['file_bytes'] / 1e6:.2f} MB"
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
