"""Training, fine-tuning and evaluation loops, and BatchNorm recalibration.

One straight-line loop: SGD with (Nesterov) momentum, a cosine or one-cycle learning-rate
schedule stepped per batch, optional label smoothing, mixed precision (:data:`AMP_DTYPES`),
knowledge distillation from a teacher network or ensemble (Hinton et al. 2015) and stochastic
weight averaging (SWA, Izmailov et al. 2018) over the last epochs. Every epoch writes
``last.pt`` atomically, so ``resume=True`` continues an interrupted run exactly.

Under ``torchrun`` (:mod:`amc.distributed`) the same loop runs data-parallel: rank 0 calls
:func:`train`, which sends the job to the other ranks (:func:`follow_job`); each trains a
``DistributedDataParallel`` copy on its share of every batch of ``batch_size`` images, so the
global batch, the learning-rate schedule and the data order stay those of one process. Only
rank 0 evaluates and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from amc import distributed
from amc.data import Dataset, Shard, iterate_batches
from amc.files import atomic_path, claim_folder, load_weights, write_json
from amc.models import load_state

log = logging.getLogger(__name__)

SWA_BN_BATCHES = 100
"""Augmented training batches that re-estimate BatchNorm statistics of the SWA average.

Plain (un-augmented) images shift the statistics of a network trained on padded crops:
on the shipped MobileNet they cost 4 points of test accuracy, augmented ones none."""
ONEDNN_MIN_1X1_CHANNELS = 16
ONEDNN_MAX_SAFE_SIDE = 48
"""On CPUs, oneDNN's weight gradient of a channels-last 1x1 convolution with a stride above 1 and
fewer than ``ONEDNN_MIN_1X1_CHANNELS`` input channels writes past its workspace
(uxlfoundation/oneDNN#6035): heap corruption and crashes on inputs from 56 x 56 on (torch 2.13,
AVX-512). A model with such a layer (a thin pruned or width-reduced ResNet shortcut) trains on
images larger than ``ONEDNN_MAX_SAFE_SIDE`` in the contiguous memory format instead."""
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Mixed precision (``TrainConfig.amp``): ``bf16`` autocasts to bfloat16 on CPUs (fast with
AVX512-BF16) and on GPUs that support it (NVIDIA Ampere and newer); its range is float32's, so
no loss scaling is needed. ``fp16`` autocasts to float16 with dynamic loss scaling
(``torch.amp.GradScaler``), on CUDA only: the choice for GPUs without bfloat16 (V100, T4)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of a training or fine-tuning run.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Images per step (under ``torchrun``: over all processes together).
        lr: Peak learning rate.
        momentum: SGD momentum.
        nesterov: Use Nesterov momentum.
        weight_decay: L2 penalty on all weights.
        schedule: ``cosine`` (linear warm-up, cosine decay) or ``onecycle``.
        warmup_epochs: Warm-up length of the cosine schedule.
        label_smoothing: Cross-entropy label smoothing.
        amp: ``none``; ``bf16`` (bfloat16 autocast: CPUs, and GPUs with bfloat16); ``fp16``
            (float16 autocast with loss scaling, CUDA only). See :data:`AMP_DTYPES`.
        seed: Seed of initialisation-independent randomness (order, augmentation).
        threads: CPU threads; 0 uses every core (under ``torchrun``: this machine's share).
        progress: Show a progress bar.
        swa_epochs: Stochastic weight averaging: the last ``swa_epochs`` epochs run at the
            constant rate ``swa_lr`` (the schedule before them anneals to it) and the saved model
            is the average of their end-of-epoch weights, with BatchNorm statistics recomputed.
        swa_lr: Learning rate of the SWA epochs.
        distill_weight: With a teacher: share of the distillation loss in the total loss (the
            rest is cross-entropy with the labels).
        distill_temperature: With a teacher: softmax temperature of the distillation loss.
        save_epochs: Also save the weights after these epochs (1-based) as ``epoch<k>.pt``,
            the early checkpoints that lottery-ticket rewinding resets pruned models to.
    """

    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    amp: str = "none"
    seed: int = 0
    threads: int = 0
    progress: bool = True
    swa_epochs: int = 0
    swa_lr: float = 0.01
    distill_weight: float = 0.9
    distill_temperature: float = 4.0
    save_epochs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.save_epochs = sorted(set(self.save_epochs))
        if any(not 1 <= e <= self.epochs for e in self.save_epochs):
            raise ValueError(f"save_epochs={self.save_epochs} must lie between 1 and epochs={self.epochs}")
        if self.schedule not in ("cosine", "onecycle"):
            raise ValueError(f"unknown schedule '{self.schedule}'; use cosine or onecycle")
        if self.amp not in ("none", *AMP_DTYPES):
            raise ValueError(f"unknown amp '{self.amp}'; use none, bf16 or fp16")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError(f"swa_epochs={self.swa_epochs} must lie between 0 and epochs={self.epochs}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight={self.distill_weight} must lie between 0 and 1")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature={self.distill_temperature} must be positive")

    @property
    def swa_start(self) -> int:
        """Index of the first epoch whose weights enter the SWA average (``epochs`` without SWA)."""
        return self.epochs - self.swa_epochs


class Ensemble(nn.Module):
    """Several trained networks as one teacher: the mean of their logits."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits of the members."""
        return torch.stack([m(x) for m in self.members]).mean(0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T^2 * KL(teacher || student) of the logits softened by T."""
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def learning_rate(step: int, total: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate at optimisation ``step`` of ``total``."""
    floor = 0.0
    if config.swa_epochs:
        swa_start = config.swa_start * steps_per_epoch
        if step >= swa_start:
            return config.swa_lr
        total, floor = swa_start, config.swa_lr
    if config.schedule == "onecycle":
        start = max(1, int(0.3 * total))
        if step < start:
            return config.lr * (0.04 + 0.96 * step / start)
    else:
        start = int(config.warmup_epochs * steps_per_epoch)
        if step < start:
            return config.lr * (step + 1) / start
    progress = (step - start) / max(1, total - start)
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def training_memory_format(model: nn.Module, device: torch.device, side: int) -> torch.memory_format:
    """``channels_last`` (faster), unless ``model`` on ``side``-pixel images meets the oneDNN bug above."""
    if device.type != "cpu" or side <= ONEDNN_MAX_SAFE_SIDE:
        return torch.channels_last
    for m in model.modules():
        if (
            isinstance(m, nn.Conv2d)
            and m.kernel_size == (1, 1)
            and max(m.stride) > 1
            and m.in_channels // m.groups < ONEDNN_MIN_1X1_CHANNELS
        ):
            return torch.contiguous_format
    return torch.channels_last


def set_threads(threads: int = 0) -> None:
    """Use ``threads`` CPU threads for intra-op parallelism (0 = every core, shared by a machine's ranks)."""
    job = distributed.launched()
    share = (os.cpu_count() or 1) // (job.local_size if job is not None else 1)
    torch.set_num_threads(threads or max(1, share))


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse a mixed precision ``device`` cannot train in (see :data:`AMP_DTYPES`)."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"amp fp16 (float16 with loss scaling) needs a CUDA device, not {device}; on CPUs use bf16"
        )
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bfloat16; use amp fp16")


def _masked(weight: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad * mask``, laid out like ``weight`` (DDP's gradient buckets expect the parameter's strides)."""
    out = torch.empty_strided(weight.shape, weight.stride(), dtype=grad.dtype, device=grad.device)
    return torch.mul(grad, mask, out=out)


@contextlib.contextmanager
def masked_gradients(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Multiply the gradient of each ``masks`` layer's weight by its mask (0: pruned), while in the block.

    SGD (momentum, weight decay) then keeps the pruned weights at zero. The hooks act on the
    weights themselves, before their gradients accumulate, so they hold inside
    ``DistributedDataParallel`` too: every rank masks, then the masked gradients are averaged.
    """
    modules = dict(model.named_modules())
    handles = []
    for name, mask in (masks or {}).items():
        weight = modules[name].weight
        handles.append(weight.register_hook(functools.partial(_masked, weight, mask.to(weight.device))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    split: str = "test",
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    limit: int | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) and mean cross-entropy of ``model`` on a split."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    for x, y in iterate_batches(dataset.split(split), dataset, batch_size, limit=limit):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        count += len(y)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count}


@torch.no_grad()
def recalibrate_bn_on(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images`` (normalised, on the model's device).

    After pruning, the statistics of the remaining channels' inputs change; recomputing them
    (a cumulative average, no gradient step) restores much of the lost accuracy for free.
    The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():  # statistics only: no autograd graph to build and keep
        for x in images.split(batch_size):
            model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()


def recalibrate_bn(
    model: nn.Module,
    dataset: Dataset,
    split: str = "train",
    num_batches: int = 20,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    augmented: bool = False,
) -> nn.Module:
    """Re-estimate BatchNorm statistics on ``num_batches`` random batches of a dataset split.

    ``augmented`` draws the batches with the training augmentation, the distribution a
    trained network's statistics were estimated on (what SWA needs; a pruned network is
    recalibrated on plain images).
    """
    gen = torch.Generator().manual_seed(seed)
    data = dataset.split(split)
    batches = iterate_batches(data, dataset, batch_size, True, augmented, gen, num_batches * batch_size)
    return recalibrate_bn_on(model, torch.cat([x for x, _ in batches]).to(device), batch_size)


def train_one_epoch(
    model: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    generator: torch.Generator,
    teacher: nn.Module | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    shard: Shard | None = None,
) -> dict[str, float]:
    """One pass over the training split, distilling ``teacher`` if given; returns mean loss and accuracy.

    ``scaler`` scales the loss (``amp`` fp16). With a ``shard`` (data-parallel training,
    ``model`` wrapped in ``DistributedDataParallel``), this process trains on its share of each
    batch; the loss and accuracy returned are those of the whole batches, summed over the ranks.
    """
    model.train()
    data = dataset.split("train")
    steps = math.ceil(len(data) / config.batch_size)
    total = steps * config.epochs
    batches = iterate_batches(data, dataset, config.batch_size, True, True, generator, shard=shard)
    bar = tqdm(
        batches,
        total=steps,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not config.progress,
        leave=False,
    )
    loss_sum = correct = seen = 0.0
    memory_format = training_memory_format(model, device, data.images.shape[1])
    for i, (x, y) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch * steps + i, total, config, steps)
        x, y = x.to(device, memory_format=memory_format), y.to(device)
        dtype = AMP_DTYPES.get(config.amp)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x).float()
                soft = distillation_loss(logits, target, config.distill_temperature)
                loss = (1 - config.distill_weight) * loss + config.distill_weight * soft
        optimizer.zero_grad(set_to_none=True)
        objective = loss
        if shard is not None:  # DDP averages the ranks' gradients: weigh each share by its size
            objective = loss * (
                len(y) * shard.size / min(config.batch_size, len(data) - i * config.batch_size)
            )
        if scaler is not None:
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            objective.backward()
            optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    if shard is not None:
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], device)
    return {"loss": loss_sum / seen, "acc": 100.0 * correct / seen}


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = False,
    manifest: dict | None = None,
    teacher: nn.Module | None = None,
    grad_masks: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Train ``model`` on ``dataset``'s train split and write the result to ``out_dir``.

    ``out_dir`` receives ``last.pt`` (the resumable state, every epoch), ``history.json``, and
    at the end ``model.json`` (the manifest: ``manifest`` plus the training settings, test
    accuracy, command line and library versions) with ``model.pt`` (the state dict). Every
    file is written atomically, and one process at a time writes ``out_dir``
    (:class:`amc.files.RunLock`), so a kill at any moment leaves a run that ``resume`` continues.

    Under ``torchrun``, call it on rank 0 only, while the other ranks wait in
    :func:`amc.distributed.follow` (the ``amc`` CLI does this): it sends them the job, all ranks
    train together, and rank 0 alone evaluates and writes ``out_dir``.

    Args:
        model: The network (moved to ``device``).
        dataset: Dataset with a ``train`` and a ``test`` split.
        config: Hyper-parameters.
        out_dir: Output folder; refuses to overwrite an earlier run unless ``resume``.
        device: Torch device (``cuda`` means ``cuda:LOCAL_RANK`` under ``torchrun``).
        resume: Continue from ``out_dir/last.pt``.
        manifest: Extra fields for the manifest (model name, width, ...).
        teacher: A trained network (or :class:`Ensemble`) to distil from, kept frozen.
        grad_masks: Layer name -> 0/1 mask of its weight: the gradients of the zeros are
            dropped, so pruned weights stay zero (:func:`masked_gradients`).

    Returns:
        The manifest written to ``model.json``.
    """
    if distributed.start(device):
        raise RuntimeError(
            "train() runs on rank 0 of a torchrun job; the other ranks call amc.distributed.follow()"
        )
    out = Path(out_dir)
    with claim_folder(out):
        return _train(model, dataset, config, out, device, resume, manifest, teacher, grad_masks)


def _prepare(
    model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device, teacher: nn.Module | None
) -> tuple[torch.optim.Optimizer, torch.Generator, torch.amp.GradScaler | None]:
    """Move the networks to ``device``; the fresh optimiser, data-order generator and loss scaler."""
    memory_format = training_memory_format(model, device, dataset.split("train").images.shape[1])
    if memory_format != torch.channels_last:
        log.info("training in the contiguous memory format (a thin strided 1x1 conv meets a oneDNN bug)")
    model.to(device).to(memory_format=memory_format)
    if teacher is not None:
        teacher.to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(config.seed)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    return optimizer, generator, scaler


def _restore(
    state: dict,
    source: Path | str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load a ``last.pt`` state into the model, optimiser, generator and loss scaler."""
    load_state(model, state["model"], source)  # a changed model or policy fails, naming a tensor
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])


def _parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (its parameters and buffers are rank 0's from now on)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _on_cpu(module: nn.Module | None) -> nn.Module | None:
    """``module``, or a copy of it on the CPU: what is sent to other processes (a GPU tensor names a GPU)."""
    if module is None or all(
        t.device.type == "cpu" for t in itertools.chain(module.parameters(), module.buffers())
    ):
        return module
    return copy.deepcopy(module).cpu()


def _extras(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that are set (a single process passes none: train_one_epoch as ever)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    out: Path,
    device: str | torch.device,
    resume: bool,
    manifest: dict | None,
    teacher: nn.Module | None,
    grad_masks: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """The body of :func:`train`, in its claimed output folder."""
    state_file = out / "last.pt"
    if state_file.exists() and not resume:
        raise FileExistsError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    if resume and not state_file.exists():
        raise FileNotFoundError(f"nothing to resume: {state_file} does not exist")
    set_threads(config.threads)
    device = distributed.device_for(device)
    check_amp(config.amp, device)
    job = distributed.world()
    if job is not None and len(dataset.split("train")) < job.size:
        raise ValueError(f"{len(dataset.split('train'))} training images cannot feed {job.size} processes")
    optimizer, generator, scaler = _prepare(model, dataset, config, device, teacher)
    swa = AveragedModel(model) if config.swa_epochs else None
    start, history, state = 0, [], None
    if resume:
        state = load_weights(state_file, "training checkpoint")
        _restore(state, state_file, model, optimizer, generator, scaler)
        if swa is not None:
            if "swa" in state:
                swa.load_state_dict(state["swa"])
            elif state["epoch"] > config.swa_start:
                raise ValueError(f"{state_file} holds no SWA average; resume with the run's own --swa-epochs")
        start, history = state["epoch"], state["history"]
        write_json(out / "history.json", history, indent=1)  # in step with last.pt after a kill
        log.info("resuming %s at epoch %d", out, start + 1)
    net, shard = model, None
    if job is not None:
        distributed.send_job(
            {
                "config": config,
                "device": device.type,
                "model": _on_cpu(model),
                "teacher": _on_cpu(teacher),
                "masks": {k: v.cpu() for k, v in (grad_masks or {}).items()},
                "state": state,
                "data": distributed.recipe(dataset),
            }
        )
        net, shard = _parallel(model, device), Shard(job.rank, job.size)
        log.info(
            "training on %d processes, %d images per process and step",
            job.size,
            -(-config.batch_size // job.size),
        )
    t0 = time.time()
    with masked_gradients(model, grad_masks):
        for epoch in range(start, config.epochs):
            extras = _extras(scaler=scaler, shard=shard)
            began = time.time()
            stats = train_one_epoch(
                net, dataset, optimizer, config, epoch, device, generator, teacher, **extras
            )
            stats["seconds"] = round(time.time() - began, 1)  # the training pass alone
            if swa is not None and epoch >= config.swa_start:
                swa.update_parameters(model)
            test_top1 = evaluate(model, dataset, "test", device=device, limit=2000)["top1"]
            stats.update(epoch=epoch + 1, test_top1=test_top1)
            history.append(stats)
            log.info(
                "epoch %d/%d loss %.3f train %.2f%% test(2k) %.2f%%",
                epoch + 1,
                config.epochs,
                stats["loss"],
                stats["acc"],
                stats["test_top1"],
            )
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "epoch": epoch + 1,
                "history": history,
                **({"swa": swa.state_dict()} if swa is not None else {}),
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            }
            with atomic_path(state_file) as tmp:
                torch.save(checkpoint, tmp)
            if epoch + 1 in config.save_epochs:
                save_state(model, out / f"epoch{epoch + 1}.pt")
            write_json(out / "history.json", history, indent=1)
    distributed.job_done()  # the other ranks are back waiting for a job
    if swa is not None:
        model.load_state_dict(swa.module.state_dict())
        recalibrate_bn(
            model, dataset, num_batches=SWA_BN_BATCHES, device=device, seed=config.seed, augmented=True
        )
    model.to(memory_format=torch.contiguous_format).eval()
    test = evaluate(model, dataset, "test", device=device)
    result = {
        **(manifest or {}),
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "split_seed": dataset.split_seed,
        "search_size": len(dataset.splits.get("search", [])),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "input_size": dataset.input_size,
        "normalize": dataset.normalize,
        "train": asdict(config),
        **({"processes": job.size} if job is not None else {}),
        "test_top1": round(test["top1"], 2),
        "test_top5": round(test["top5"], 2),
        "test_loss": round(test["loss"], 4),
        "train_seconds_this_session": round(time.time() - t0),
        "command": " ".join(sys.argv),
        "versions": versions(),
    }
    write_json(out / "model.json", result)
    save_state(model, out / "model.pt")
    return result


def follow_job(job: dict[str, Any], dataset: Dataset) -> None:
    """A rank > 0 of a ``torchrun`` job: train rank 0's ``job`` (see :func:`train`) on ``dataset``.

    The same set-up as rank 0 (model, optimiser, generator, a resumed ``last.pt``), the same
    epochs on this rank's share of each batch; no evaluation, no file, no progress bar.
    """
    world = distributed.world()
    config = replace(job["config"], progress=False)
    set_threads(config.threads)
    device = distributed.device_for(job["device"])
    model, teacher = job["model"], job["teacher"]
    optimizer, generator, scaler = _prepare(model, dataset, config, device, teacher)
    start = 0
    if job["state"] is not None:
        _restore(job["state"], "rank 0's last.pt", model, optimizer, generator, scaler)
        start = job["state"]["epoch"]
    net, shard = _parallel(model, device), Shard(world.rank, world.size)
    with masked_gradients(model, job["masks"]):
        for epoch in range(start, config.epochs):
            train_one_epoch(
                net, dataset, optimizer, config, epoch, device, generator, teacher, scaler=scaler, shard=shard
            )


def save_state(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict (contiguous tensors) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a checkpoint depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("amc-pruner", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
