"""What the ``amc`` sub-commands share: option groups, argparse types and the loaders they feed.

Each command module (:mod:`amc.cli.search`, :mod:`amc.cli.apply`, ...) imports from here and
adds only the option groups it reads; nothing here imports a command module or :mod:`amc.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from amc.budget import Budget, BudgetError
from amc.data import DATASETS, NORMALIZATIONS
from amc.loading import load_model_and_data
from amc.models import MODELS
from amc.train import set_threads

# --- argparse types ----------------------------------------------------------------------------


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


def parse_target(text: str) -> Budget:
    """Parse ``--target`` (:meth:`Budget.parse`), as an argparse type."""
    try:
        return Budget.parse(text)
    except BudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_nm_arg(text: str) -> tuple[int, int]:
    """``--nm N:M`` as ``(N, M)``, with argparse's one-line error for anything else."""
    from amc.pruning.finegrained import parse_nm

    try:
        return parse_nm(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- the root parser ---------------------------------------------------------------------------


def root_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The ``amc`` parser with its global options, and the action its sub-commands register on."""
    parser = argparse.ArgumentParser(prog="amc", description="AutoML channel pruning (AMC) for CNNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    return parser, sub


def explicit_options(
    argv: list[str], *add_parsers: Callable[[argparse._SubParsersAction], None]
) -> dict[str, str]:
    """The options ``argv`` sets itself, as ``{dest: option}`` (options left at their defaults are absent).

    ``argv`` is parsed by the root parser with the sub-commands ``add_parsers`` register.
    """
    parser, sub = root_parser()
    for add_parser in add_parsers:
        add_parser(sub)
    parsers = [parser, *sub.choices.values()]
    options = {}
    for p in parsers:
        for action in p._actions:  # argparse has no public way to tell given options from defaults
            action.default = argparse.SUPPRESS
            if action.option_strings:
                options[action.dest] = action.option_strings[-1]
    given = vars(parser.parse_args(argv))
    return {dest: options[dest] for dest in given if dest in options}


# --- model and data ----------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser, checkpoint_default: str | None) -> None:
    """``--model``, ``--width``, ``--checkpoint``: read by :func:`model_and_data` and :func:`env_config`."""
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


def add_data_args(p: argparse.ArgumentParser, default: str) -> None:
    """The dataset, device and thread options read by :func:`model_and_data` and :func:`env_config`."""
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


# --- the pruning environment -------------------------------------------------------------------


def add_env_args(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str], **helps: str
) -> None:
    """Add the pruning-environment options whose dests are ``names`` (defaults: ``EnvConfig``'s).

    A command adds only the options it reads: ``search`` all of them, ``apply`` those of its
    ``--agent`` rollout, ``compare`` those of its channel-mode scorer. They are added in one fixed
    order, whatever the order of ``names``; ``helps`` replaces help texts by dest.
    """
    from amc.envs.config import EnvConfig

    env = EnvConfig()
    options: dict[str, tuple[str, dict]] = {
        "target": (
            "--target",
            dict(
                type=parse_target,
                default=Budget(env.metric, env.target),
                help="budget as a ratio of the dense model: flops=0.5, params=0.3, latency=0.6, or none "
                "(accuracy-guaranteed mode, use with --reward acc_flops/acc_params) (default: flops=0.5)",
            ),
        ),
        "mode": (
            "--mode",
            dict(
                default="channel",
                choices=["channel", "finegrained", "nm"],
                help="structured channel pruning, fine-grained magnitude pruning, or nm: per layer, keep "
                "the N largest of every M consecutive weights or not (default: %(default)s)",
            ),
        ),
        "nm": (
            "--nm",
            dict(
                type=parse_nm_arg,
                default=env.nm,
                metavar="N:M",
                help="pattern of --mode nm, e.g. 2:4 (default: 2:4)",
            ),
        ),
        "reward": (
            "--reward",
            dict(
                default=None,
                help="reward: acc, acc_flops, acc_params, acc_latency (default: acc with a target, "
                "acc_flops without)",
            ),
        ),
        "max_sparsity": (
            "--max-sparsity",
            dict(
                type=float, default=env.max_sparsity, help="largest per-unit sparsity (default: %(default)s)"
            ),
        ),
        "round_to": (
            "--round-to",
            dict(
                type=whole(1),
                default=env.round_to,
                help="kept channels are multiples of this (default: %(default)s)",
            ),
        ),
        "latency_batch": (
            "--latency-batch",
            dict(
                type=whole(1),
                default=env.latency_batch,
                help="batch size at which a latency budget is measured (default: %(default)s)",
            ),
        ),
        "criterion": (
            "--criterion",
            dict(
                default=env.criterion, choices=["l1", "l2"], help="channel importance (default: %(default)s)"
            ),
        ),
        "reconstruct": (
            "--no-reconstruct",
            dict(
                dest="reconstruct",
                action="store_false",
                help="no least-squares reconstruction of consumer layers (on by default)",
            ),
        ),
        "recalibrate": (
            "--no-recalibrate",
            dict(
                dest="recalibrate",
                action="store_false",
                help="no BatchNorm recalibration before scoring (on by default)",
            ),
        ),
        "search_images": (
            "--search-images",
            dict(
                type=whole(1),
                default=env.search_images,
                help="search-split images scored per episode (default: %(default)s)",
            ),
        ),
        "selection_images": (
            "--selection-images",
            dict(
                type=whole(0),
                default=env.selection_images,
                help="other search-split images on which the search re-scores its best episodes before "
                "choosing the final policy; 0 keeps the best episode (default: %(default)s)",
            ),
        ),
        "race_slice": (
            "--race-slice",
            dict(
                type=whole(0),
                default=env.race_slice,
                help="race each episode against the finalists: score it this many images at a time and "
                "stop once it cannot join them; 0 scores every episode in full (default: %(default)s)",
            ),
        ),
        "strict": (
            "--strict",
            dict(
                action="store_true",
                help="refuse a model with a layer channel pruning cannot follow (by default that layer "
                "stays dense, with a warning naming it)",
            ),
        ),
    }
    names = set(names)
    unknown = names - options.keys() | helps.keys() - names
    if unknown:
        raise ValueError(f"no such environment option (or not added): {', '.join(sorted(unknown))}")
    for dest, (flag, kwargs) in options.items():
        if dest in names:
            p.add_argument(flag, **{**kwargs, "help": helps.get(dest, kwargs["help"])})


def env_config(args: argparse.Namespace, reward: str | None = None, **settings):
    """The :class:`~amc.envs.config.EnvConfig` of the model, data and ``--target`` options and ``settings``.

    ``settings`` are the command's other environment options (those it lacks keep ``EnvConfig``'s
    defaults); ``reward`` defaults to ``acc`` with a target and ``acc_flops`` without.
    """
    from amc.envs.config import EnvConfig

    metric, target = args.target.metric, args.target.ratio
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
        metric=metric,
        target=target,
        reward=reward or ("acc" if target is not None else "acc_flops"),
        device=args.device,
        threads=args.threads,
        **settings,
    )
