"""``amc train``: train a model from scratch (or fine-tune a checkpoint) and write its manifest."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from amc.cli.common import add_data_args, add_model_args, model_and_data
from amc.models import create_model
from amc.train import Ensemble, TrainConfig, train

HELPS = {
    "epochs": "training epochs",
    "batch_size": "images per step",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "schedule": "learning-rate schedule: cosine or onecycle",
    "warmup_epochs": "cosine warm-up epochs",
    "label_smoothing": "label smoothing of the cross-entropy",
    "amp": "none, bf16 (CPU, or a GPU with bfloat16) or fp16 (CUDA, with loss scaling)",
    "seed": "seed of data order and augmentation",
    "swa_epochs": "average the weights of this many last epochs, run at --swa-lr (SWA; 0 = off)",
    "swa_lr": "constant learning rate of the SWA epochs",
    "distill_weight": "with --teacher: share of the distillation loss (the rest: labels)",
    "distill_temperature": "with --teacher: softmax temperature of the distillation loss",
}
"""The :class:`TrainConfig` fields given as ``--<field>`` options, with their help."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc train``."""
    p = sub.add_parser(
        "train",
        help="train a model from scratch (or fine-tune a checkpoint)",
        description="Train with SGD; writes last.pt every epoch, then model.pt and model.json.",
    )
    add_model_args(p, "none")
    add_data_args(p, "folder")
    p.add_argument("--out", required=True, help="output folder (refused if it holds a run, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in HELPS:
            p.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=type(getattr(defaults, f.name)),
                default=getattr(defaults, f.name),
                help=f"{HELPS[f.name]} (default: %(default)s)",
            )
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="MODEL[=CHECKPOINT]",
        help="distil from this trained model (checkpoint default: shipped; width from its manifest); "
        "repeat for an ensemble, whose mean logits teach",
    )
    p.add_argument(
        "--save-epochs",
        type=epoch_list,
        default=[],
        metavar="K,K,...",
        help="also save the weights after these epochs as epoch<K>.pt (for amc apply --rewind K)",
    )
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="plain momentum")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=cmd_train)


def epoch_list(text: str) -> list[int]:
    """Parse ``1,2,5`` into epoch numbers (each at least 1)."""
    try:
        epochs = [int(e) for e in text.split(",")]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of epochs, e.g. 1,2,5")
    return epochs


def cmd_train(args: argparse.Namespace) -> int:
    """``amc train``: train a model and write its checkpoint and manifest."""
    model, dataset, width = model_and_data(args)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name in args})
    manifest = {
        "model": args.model,
        "width": width,
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
    }
    teacher = None
    if args.teacher:
        specs = [spec.partition("=")[::2] for spec in args.teacher]
        members = [
            create_model(name, dataset.num_classes, None, path or "shipped", dataset.in_channels)
            for name, path in specs
        ]
        teacher = Ensemble(members)
        manifest["teachers"] = [{"model": name, "checkpoint": path or "shipped"} for name, path in specs]
    result = train(model, dataset, config, args.out, args.device, args.resume, manifest, teacher)
    top1, top5 = result["test_top1"], result["test_top5"]
    print(f"test top-1 {top1:.2f} %  top-5 {top5:.2f} %  -> {Path(args.out) / 'model.pt'}")
    return 0
