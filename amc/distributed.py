"""Data-parallel training under ``torchrun``: rank 0 runs the command, the other ranks train beside it.

``torchrun --nproc_per_node K -m amc.cli train|apply ...`` starts K copies of the command.
Rank 0 runs it exactly as a single process would: it loads, prunes, evaluates, prints and
writes every file (through :mod:`amc.files`, atomically, as alone). The other ranks only
:func:`follow`: when rank 0 reaches :func:`amc.train.train`, it sends them the training job
(the model, a teacher, gradient masks, the settings and a resumed ``last.pt``), and all K
processes train one ``DistributedDataParallel`` model, each on its share of every batch
(:class:`amc.data.Shard`). Rank 0 evaluates and writes between the epochs; the others wait for
it in the next step's gradient all-reduce, and go back to waiting for a job when training ends.
One command may hold several jobs (iterative pruning fine-tunes once per step).

Nothing but training is distributed: a command that does not train (``amc evaluate``) runs on
rank 0 while the others wait, and :func:`finish` releases them when rank 0 exits.

Devices: CPUs train with the ``gloo`` backend; with ``--device cuda`` each process takes its own
GPU, ``cuda:LOCAL_RANK``, and the ``nccl`` backend. The job itself travels over a ``gloo``
group with a long timeout, since rank 0 may evaluate or prune for a long time between jobs.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from amc.data import Dataset

log = logging.getLogger(__name__)

TIMEOUT = timedelta(hours=1)
"""How long a rank waits for the others inside training: for rank 0's evaluation and checkpoint
between epochs, or for a follower to load its dataset at the start of a job."""
JOB_TIMEOUT = timedelta(days=7)
"""How long a follower waits for rank 0's next job (rank 0 may prune or evaluate for hours)."""


@dataclass(frozen=True)
class World:
    """This process's place in a ``torchrun`` job.

    Attributes:
        rank: Global rank (0 runs the command and writes the files).
        size: Number of processes (``WORLD_SIZE``).
        local_rank: Rank on this machine; with CUDA, the GPU this process uses.
        local_size: Processes on this machine (they share its cores).
    """

    rank: int
    size: int
    local_rank: int = 0
    local_size: int = 1


_world: World | None = None
_jobs = None  # the gloo group jobs travel over
_busy = False  # rank 0: a job is running (the followers are not waiting for one)
_datasets: dict[str, Dataset] = {}  # a follower's datasets, by recipe


def launched() -> World | None:
    """The ``torchrun`` job this process belongs to, from its environment; ``None`` alone.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; a job of
    one process (``--nproc_per_node 1`` on one machine) runs as a plain single process.
    """
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) < 2 or "RANK" not in env or "LOCAL_RANK" not in env:
        return None
    size = int(env["WORLD_SIZE"])
    return World(int(env["RANK"]), size, int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", size)))


def world() -> World | None:
    """The job this process has joined with :func:`start` (``None``: alone, or not started)."""
    return _world


def device_for(device: str | torch.device, job: World | None = None) -> torch.device:
    """The device this process trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under ``torchrun``.

    Raises:
        ValueError: An explicit GPU index other than ``LOCAL_RANK`` under ``torchrun``.
    """
    device = torch.device(device)
    job = job or _world or launched()
    if job is None or device.type != "cuda":
        return device
    if device.index is not None and device.index != job.local_rank:
        raise ValueError(
            f"under torchrun every process trains on its own GPU, cuda:LOCAL_RANK (here "
            f"cuda:{job.local_rank}); pass --device cuda instead of {device}"
        )
    return torch.device("cuda", job.local_rank)


def start(device: str | torch.device = "cpu") -> int:
    """Join the ``torchrun`` job this process was started in, once; returns this process's rank.

    Alone (no ``torchrun``), nothing happens and the rank is 0. Otherwise the default process
    group is initialised (``nccl`` for a CUDA ``device``, which also becomes this process's
    current GPU, else ``gloo``), and rank 0 arranges to release the other ranks when it exits.
    """
    global _world, _jobs
    if _world is not None:
        return _world.rank
    job = launched()
    if job is None:
        return 0
    device = device_for(device, job)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    _jobs = dist.new_group(backend="gloo", timeout=JOB_TIMEOUT)
    _world = job
    if job.rank == 0:
        atexit.register(finish)
    log.info("rank %d of %d (%s)", job.rank, job.size, backend)
    return job.rank


def run(command: Callable[[], int], device: str | torch.device = "cpu") -> int:
    """Run ``command`` on rank 0 (or alone); on the other ranks of a ``torchrun`` job, :func:`follow`.

    The ``amc`` CLI runs every sub-command through it, so ``torchrun -m amc.cli`` trains on all
    processes while one of them does everything else.
    """
    if start(device):
        return follow()
    try:
        return command()
    finally:
        finish()


def finish() -> None:
    """Release the followers (rank 0) and leave the process group; alone, nothing happens.

    Rank 0 calls it when it exits. If it exits while a job runs (training failed with an
    error), the followers are inside a collective and cannot be told: ``torchrun`` stops them
    when rank 0 exits with its error status.
    """
    global _world, _jobs
    if _world is None:
        return
    if _world.rank == 0 and not _busy:
        with contextlib.suppress(Exception):
            dist.broadcast_object_list([None], src=0, group=_jobs)
    if _world.rank != 0 or not _busy:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _world = _jobs = None
    _datasets.clear()


def send_job(job: dict[str, Any]) -> None:
    """Rank 0: send a training job to the followers (see :func:`amc.train.train`)."""
    global _busy
    _busy = True
    dist.broadcast_object_list([job], src=0, group=_jobs)


def job_done() -> None:
    """Rank 0: the job's training ended on every rank; the followers wait for the next one."""
    global _busy
    _busy = False


def follow(dataset: Dataset | None = None) -> int:
    """Ranks > 0: train rank 0's jobs until it exits, then leave the process group; returns 0.

    Args:
        dataset: The dataset rank 0 trains on, loaded by this process. ``None``: rebuilt with
            :func:`amc.data.load_dataset` from the recipe rank 0 sends (name, files, split seed,
            input size, ...; the files must be at the same path on every machine). Either way it
            must match rank 0's training split, which is checked.
    """
    from amc.train import follow_job

    if _world is None or _world.rank == 0:
        raise RuntimeError("follow() serves rank 0 of a torchrun job: call start() first, on ranks > 0")
    logging.getLogger("amc").setLevel(logging.WARNING)  # rank 0 reports; the followers stay quiet
    try:
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0, group=_jobs)
            job = box[0]
            if job is None:
                return 0
            data = dataset if dataset is not None else _dataset(job["data"])
            if fingerprint(data) != job["data"]["fingerprint"]:
                from amc.data import DatasetError

                raise DatasetError(
                    f"rank {_world.rank} loaded other training images than rank 0 "
                    f"({job['data']['name']} from '{job['data']['data']}'); every machine needs the "
                    "same dataset at the same path"
                )
            follow_job(job, data)
    finally:
        finish()


def recipe(dataset: Dataset) -> dict[str, Any]:
    """What a follower needs to load ``dataset`` itself, and a fingerprint of its training split."""
    return {
        "name": dataset.name,
        "data": dataset.source or None,
        "split_seed": dataset.split_seed,
        "search_size": len(dataset.splits.get("search", [])),
        "input_size": dataset.input_size,
        "normalize": dataset.normalize,
        "workers": dataset.workers,
        "fingerprint": fingerprint(dataset),
    }


def _dataset(recipe: dict[str, Any]) -> Dataset:
    """Load (once) the dataset rank 0 described."""
    from amc.data import DATASETS, DatasetError, load_dataset

    key = repr(sorted((k, v) for k, v in recipe.items() if k != "fingerprint"))
    if key not in _datasets:
        if recipe["name"] not in DATASETS:
            raise DatasetError(
                f"rank {_world.rank if _world else '?'} cannot load dataset '{recipe['name']}' by "
                "itself; pass it to amc.distributed.follow(dataset)"
            )
        _datasets[key] = load_dataset(
            recipe["name"],
            recipe["data"],
            recipe["split_seed"],
            recipe["search_size"],
            False,
            recipe["input_size"],
            recipe["normalize"],
            recipe["workers"],
        )
    return _datasets[key]


def fingerprint(dataset: Dataset) -> str:
    """A short hash of the training split (size, labels, file names or 16 sample images, statistics)."""
    from amc.data import ImageArrays

    train = dataset.split("train")
    digest = hashlib.sha1(f"{len(train)}|{dataset.mean}|{dataset.std}|{dataset.input_size}".encode())
    digest.update(np.ascontiguousarray(train.labels).tobytes())
    if isinstance(train, ImageArrays):
        picks = np.linspace(0, len(train) - 1, min(16, len(train))).astype(np.int64)
        digest.update(np.ascontiguousarray(train.images[picks]).tobytes())
    else:
        digest.update("\n".join(os.path.basename(f) for f in train.files).encode())
    return digest.hexdigest()[:16]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over the ranks (alone: unchanged)."""
    if _world is None:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()
