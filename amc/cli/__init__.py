"""The ``amc`` command: the composition root that wires models, data and the search together.

One module per sub-command (:mod:`amc.cli.evaluate`, :mod:`amc.cli.train`, :mod:`amc.cli.search`,
:mod:`amc.cli.apply`, :mod:`amc.cli.compare`, :mod:`amc.cli.summarize`, :mod:`amc.cli.benchmark`),
each with ``add_parser(sub)`` and its ``cmd_*`` function; the option groups and loaders they
share are in :mod:`amc.cli.common`. Commands import the RL stack lazily, so ``amc train`` and
``amc evaluate`` never load it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from amc import distributed
from amc.cli import apply, benchmark, compare, evaluate, search, summarize, train
from amc.cli.common import root_parser
from amc.data import DatasetError
from amc.files import FolderLockedError
from amc.models import CheckpointError, ModelError
from amc.plots import MissingExtraError

__all__ = ["build_parser", "main"]

COMMANDS = (evaluate, train, search, apply, compare, summarize, benchmark)
"""The sub-command modules, in the order ``amc --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``amc`` and its sub-commands."""
    parser, sub = root_parser()
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``amc`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        # under torchrun, rank 0 runs the command and the other ranks join its training
        return distributed.run(lambda: args.func(args), getattr(args, "device", "cpu"))
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
