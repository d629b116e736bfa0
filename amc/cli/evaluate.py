"""``amc evaluate``: top-1/top-5 accuracy and loss of a model (or an ONNX file) on one split."""

from __future__ import annotations

import argparse

from amc.cli.common import add_data_args, add_model_args, model_and_data
from amc.train import evaluate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``amc evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="accuracy of a model on a dataset split",
        description="Evaluate top-1/top-5 accuracy and loss of a model on one split.",
    )
    add_model_args(p, "shipped")
    add_data_args(p, "sample")
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
