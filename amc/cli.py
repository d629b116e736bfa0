"""The ``amc`` command: the composition root that wires models, data and the search together."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from amc.cli_bench import add_parser as add_benchmark_parser
from amc.cli_search import add_parsers, whole
from amc.data import DATASETS, NORMALIZATIONS, DatasetError
from amc.files import FolderLockedError
from amc.loading import load_model_and_data
from amc.models import MODELS, CheckpointError, ModelError, create_model
from amc.plots import MissingExtraError
from amc.train import Ensemble, TrainConfig, evaluate, set_threads, train

log = logging.getLogger("amc")


def _add_model_args(p: argparse.ArgumentParser, checkpoint_default: str | None) -> None:
    p.add_argument(
        "--model",
        default="resnet20",
        help=f"architecture: {', '.join(MODELS)}, or package.module:function for your own "
        "model (imports your code) (default: %(default)s)",
    )
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="width multiplier (default: the checkpoint manifest's, else 1.0)",
    )
    p.add_argument(
        "--checkpoint",
        default=checkpoint_default,
        help="state-dict file to load, 'shipped' for the packaged checkpoint, or 'none' "
        "(default: %(default)s)",
    )


def _add_data_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--dataset",
        default=default,
        choices=list(DATASETS),
        help="dataset kind (default: %(default)s; 'sample' is the bundled CIFAR-10 sample)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="its files: a CIFAR python-release folder, an image folder or .tar.gz archive "
        "with train/<class>/* and test/<class>/*, or an MNIST idx folder",
    )
    p.add_argument("--download", action="store_true", help="download the official CIFAR archive if missing")
    p.add_argument(
        "--split-seed", type=int, help="seed of the search hold-out (default: the checkpoint's, else 0)"
    )
    p.add_argument(
        "--search-size",
        type=int,
        default=5000,
        help="training images held out as the search split (default: 5000)",
    )
    p.add_argument(
        "--input-size",
        type=whole(1),
        default=None,
        metavar="S",
        help="--dataset folder: read images of any size at S x S (evaluation: resize and centre "
        "crop; training: random-resized crop and flip, streamed from the files); val/ may stand "
        "for test/ (default: the checkpoint manifest's, else the images' own size)",
    )
    p.add_argument(
        "--normalize",
        default=None,
        choices=["auto", *NORMALIZATIONS],
        help="input normalisation: auto (measured on the training images) or a preset "
        "(default: the checkpoint manifest's, else auto)",
    )
    p.add_argument(
        "--workers",
        type=whole(0),
        default=None,
        help="processes that decode streamed images (default: min(4, CPU count))",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all cores (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``amc`` and its sub-commands."""
    parser = argparse.ArgumentParser(prog="amc", description="AutoML channel pruning (AMC) for CNNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "evaluate",
        help="accuracy of a model on a dataset split",
        description="Evaluate top-1/top-5 accuracy and loss of a model on one split.",
    )
    _add_model_args(p, "shipped")
    _add_data_args(p, "sample")
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "search", "test"],
        help="split to evaluate (default: %(default)s)",
    )
    p.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="evaluate this ONNX model (e.g. pruned.onnx of amc apply --onnx) with onnxruntime: top-1 "
        "and latency; the data settings still come from --model/--checkpoint (needs the onnx extra)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "train",
        help="train a model from scratch (or fine-tune a checkpoint)",
        description="Train with SGD; writes last.pt every epoch, then model.pt and model.json.",
    )
    _add_model_args(p, "none")
    _add_data_args(p, "folder")
    p.add_argument("--out", required=True, help="output folder (refused if it holds a run, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    defaults = TrainConfig()
    helps = {
        "epochs": "training epochs",
        "batch_size": "images per step",
        "lr": "peak learning rate",
        "momentum": "SGD momentum",
        "weight_decay": "L2 weight decay",
        "schedule": "learning-rate schedule: cosine or onecycle",
        "warmup_epochs": "cosine warm-up epochs",
        "label_smoothing": "label smoothing of the cross-entropy",
        "amp": "none, or bf16 autocast",
        "seed": "seed of data order and augmentation",
        "swa_epochs": "average the weights of this many last epochs, run at --swa-lr (SWA; 0 = off)",
        "swa_lr": "constant learning rate of the SWA epochs",
        "distill_weight": "with --teacher: share of the distillation loss (the rest: labels)",
        "distill_temperature": "with --teacher: softmax temperature of the distillation loss",
    }
    for f in fields(TrainConfig):
        if f.name in helps:
            p.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=type(getattr(defaults, f.name)),
                default=getattr(defaults, f.name),
                help=f"{helps[f.name]} (default: %(default)s)",
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
    add_parsers(sub, _add_model_args, _add_data_args)
    add_benchmark_parser(sub)
    return parser


def epoch_list(text: str) -> list[int]:
    """Parse ``1,2,5`` into epoch numbers (each at least 1)."""
    try:
        epochs = [int(e) for e in text.split(",")]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of epochs, e.g. 1,2,5")
    return epochs


def explicit_options(argv: list[str]) -> dict[str, str]:
    """The options ``argv`` sets itself, as ``{dest: option}`` (options left at their defaults are absent)."""
    parser = build_parser()
    parsers = [parser]
    for action in parser._actions:  # argparse has no public way to walk the sub-commands' options
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    options = {}
    for p in parsers:
        for action in p._actions:
            action.default = argparse.SUPPRESS
            if action.option_strings:
                options[action.dest] = action.option_strings[-1]
    given = vars(parser.parse_args(argv))
    return {dest: options[dest] for dest in given if dest in options}


def model_and_data(args: argparse.Namespace):
    """Load the model (with its checkpoint) and dataset the command line names."""
    set_threads(args.threads)
    return load_model_and_data(
        args.model,
        args.checkpoint,
        args.width,
        args.dataset,
        args.data,
        args.split_seed,
        args.search_size,
        args.download,
        args.device,
        args.input_size,
        args.normalize,
        args.workers,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``amc evaluate``: print accuracy and loss on one split."""
    if args.onnx:
        from amc.export import require_onnx

        require_onnx()  # before the dataset is decoded
    model, dataset, _ = model_and_data(args)
    n = len(dataset.split(args.split))
    if args.onnx:
        return _evaluate_onnx(args, dataset, n)
    metrics = evaluate(model, dataset, args.split, device=args.device)
    print(
        f"{args.model} on {dataset.name}/{args.split} ({n} images): top-1 {metrics['top1']:.2f} %  "
        f"top-5 {metrics['top5']:.2f} %  loss {metrics['loss']:.4f}"
    )
    return 0


def _evaluate_onnx(args: argparse.Namespace, dataset, n: int) -> int:
    """``amc evaluate --onnx``: top-1 and onnxruntime latency of an ONNX model on one split."""
    from amc.data import iterate_batches
    from amc.export import evaluate_onnx

    metrics = evaluate_onnx(args.onnx, iterate_batches(dataset.split(args.split), dataset, 500))
    print(
        f"{args.onnx} on {dataset.name}/{args.split} ({n} images): top-1 {metrics['top1']:.2f} %  "
        f"onnxruntime latency {metrics['latency_ms']:.3f} ms/image ({args.threads or 'all'} threads)"
    )
    return 0


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``amc`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (
        DatasetError,
        ModelError,
        CheckpointError,
        MissingExtraError,
        FolderLockedError,
        OSError,  # a missing, existing, unwritable or locked file or folder
        ValueError,
        KeyError,
        TypeError,
    ) as exc:
        print(f"amc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
