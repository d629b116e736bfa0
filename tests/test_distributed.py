"""Data-parallel training under torchrun: rank detection, batch sharding, rank-0 writes, resume, GPU path.

The slow tests start real 2-process ``gloo`` jobs (``torch.multiprocessing`` or ``torchrun``);
the CUDA tests run only where a GPU is.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train import config, synthetic_dataset, tiny_model, write_png_folder
from torch import nn

import amc.train
from amc import distributed
from amc.data import Shard, iterate_batches, load_dataset
from amc.data.base import visit_order
from amc.data.stream import default_workers
from amc.train import TrainConfig, check_amp, masked_gradients, set_threads, train

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def torchrun_env(monkeypatch, rank: int = 0, size: int = 2, local_rank: int = 0, local_size: int = 2) -> None:
    values = (size, rank, local_rank, local_size)
    for name, value in zip(TORCHRUN_ENV, values, strict=True):
        monkeypatch.setenv(name, str(value))


# --- rank detection, devices, threads, mixed precision ------------------------------------------------


def test_a_torchrun_job_is_read_from_the_environment(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched() is None
    torchrun_env(monkeypatch, size=1, rank=0, local_size=1)
    assert distributed.launched() is None  # one process: a plain run
    torchrun_env(monkeypatch, rank=3, size=4, local_rank=1, local_size=2)
    assert distributed.launched() == distributed.World(rank=3, size=4, local_rank=1, local_size=2)
    assert distributed.world() is None  # detected, not joined: start() joins


def test_each_process_takes_its_own_gpu(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.device_for("cuda:1") == torch.device("cuda:1")  # alone: as given
    torchrun_env(monkeypatch, rank=1, local_rank=1)
    assert distributed.device_for("cpu") == torch.device("cpu")
    assert distributed.device_for("cuda") == torch.device("cuda:1")
    assert distributed.device_for("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        distributed.device_for("cuda:0")


def test_threads_are_shared_by_the_processes_of_a_machine(monkeypatch):
    cores = os.cpu_count() or 1
    torchrun_env(monkeypatch, local_size=2)
    set_threads(0)
    assert torch.get_num_threads() == max(1, cores // 2)
    set_threads(1)
    assert torch.get_num_threads() == 1
    assert default_workers() == max(1, min(4, cores // 2))  # image-decoding workers too


def test_fp16_needs_cuda_and_bf16_is_refused_on_gpus_without_it(monkeypatch):
    TrainConfig(amp="fp16")  # valid settings; the device decides
    check_amp("bf16", torch.device("cpu"))
    check_amp("none", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_amp("fp16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match="T4 has no bfloat16; use amp fp16"):
        check_amp("bf16", torch.device("cuda:0"))


def test_train_with_fp16_on_the_cpu_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        train(tiny_model(), synthetic_dataset(n_train=8), config(amp="fp16"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_only_rank_0_trains_and_followers_need_a_job(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "start", lambda device="cpu": 1)
    with pytest.raises(RuntimeError, match="rank 0"):
        train(tiny_model(), synthetic_dataset(n_train=8), config(), tmp_path / "run")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="start"):
        distributed.follow()


# --- sharding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch", "size"), [(100, 16, 2), (100, 15, 2), (101, 10, 3), (37, 8, 4)])
def test_shards_are_disjoint_and_together_make_every_batch(n, batch, size):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shares = [Shard(rank, size).batches(order, batch) for rank in range(size)]
    steps = [len(s) for s in shares]
    assert len(set(steps)) == 1  # every process takes part in every step
    for t, full in enumerate(order.split(batch)[: steps[0]]):
        parts = [s[t] for s in shares]
        assert sorted(torch.cat(parts).tolist()) == sorted(full.tolist())  # disjoint, the whole batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # batch / size each
    covered = torch.cat([torch.cat(s) for s in shares])
    assert len(set(covered.tolist())) == len(covered)
    tail = n % batch
    dropped = tail if 0 < tail < size else 0  # a last batch smaller than the processes
    assert len(covered) == n - dropped and set(covered.tolist()) == set(order[: n - dropped].tolist())


def test_the_epoch_changes_the_order_alike_on_every_process():
    """The order comes from a generator seeded alike everywhere, carried from epoch to epoch."""
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    epochs = [[visit_order(50, True, g) for _ in range(3)] for g in gens]
    assert all(torch.equal(a, b) for a, b in zip(*epochs, strict=True))  # the same on both ranks
    first, second, third = epochs[0]
    assert not torch.equal(first, second) and not torch.equal(second, third)
    shares = [Shard(r, 2).batches(second, 10) for r in range(2)]
    assert sorted(torch.cat([*shares[0], *shares[1]]).tolist()) == list(range(50))


def test_a_shard_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        Shard(2, 2)


def _batches(data, ds, shard=None, batch=10):
    gen = torch.Generator().manual_seed(3)
    return list(iterate_batches(data, ds, batch, True, True, gen, shard=shard))


def test_sharded_batches_are_the_single_process_batches_in_memory():
    ds = synthetic_dataset(n_train=45)
    single = _batches(ds.split("train"), ds)
    ranks = [_batches(ds.split("train"), ds, Shard(r, 2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for t, (x, y) in enumerate(single):  # the same images, with the same augmentation
        for r in range(2):
            torch.testing.assert_close(ranks[r][t][0], x[r::2], rtol=0, atol=0)
            assert torch.equal(ranks[r][t][1], y[r::2])


def test_sharded_batches_are_the_single_process_batches_streamed(tmp_path):
    write_png_folder(tmp_path / "images", per_class=9)
    ds = load_dataset("folder", tmp_path / "images", search_size=3, input_size=24, workers=0)
    train_split = ds.split("train")
    single = _batches(train_split, ds, batch=8)
    ranks = [_batches(train_split, ds, Shard(r, 3), batch=8) for r in range(3)]
    assert [len(r) for r in ranks] == [len(single)] * 3
    for t, (x, y) in enumerate(single):  # random-resized crops are seeded by image, not by process
        for r in range(3):
            torch.testing.assert_close(ranks[r][t][0], x[r::3], rtol=0, atol=0)
            assert torch.equal(ranks[r][t][1], y[r::3])


# --- what rank 0 sends -----------------------------------------------------------------------------


def test_the_fingerprint_tells_training_splits_apart():
    a, b = synthetic_dataset(n_train=40), synthetic_dataset(n_train=40)
    assert distributed.fingerprint(a) == distributed.fingerprint(b)
    b.split("train").labels[0] = 3 - b.split("train").labels[0]
    assert distributed.fingerprint(a) != distributed.fingerprint(b)
    recipe = distributed.recipe(a)
    assert recipe["name"] == "synthetic" and recipe["search_size"] == 32 and recipe["split_seed"] == 7


def test_masked_gradients_keep_the_weights_layout_and_zeros():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)
    mask = (torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with masked_gradients(model, {"0": mask}):
        model(torch.randn(2, 3, 8, 8)).sum().backward()
    weight = model[0].weight
    assert weight.grad.stride() == weight.stride()  # DDP's buckets expect the parameter's strides
    assert torch.all(weight.grad[mask == 0] == 0) and torch.any(weight.grad[mask == 1] != 0)


# --- real 2-process jobs -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_net(classes: int = 4, seed: int = 0) -> nn.Module:
    """A small network without BatchNorm: data-parallel training computes the very same steps."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def pruned_net() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``plain_net`` with half of its second conv's weights zeroed, and their keep-mask."""
    model = plain_net()
    mask = (torch.rand(model[2].weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.no_grad():
        model[2].weight.mul_(mask)
    return model, {"2": mask}


JOB = {"epochs": 3, "batch_size": 63, "lr": 0.05, "distill_weight": 0.5}
"""63 images per step: shares of 32 and 31, weighed by their sizes."""


def _write_nothing(*args, **kwargs):
    raise AssertionError("a follower wrote a file")


def _job(rank: int, size: int, port: int, spec: dict) -> None:
    """One process of a 2-process job (``torch.multiprocessing.spawn`` target)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size), RANK=str(rank))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    dataset = synthetic_dataset(n_train=spec["n_train"])
    if distributed.start("cpu"):
        for name in ("atomic_path", "write_json", "claim_folder", "save_state"):
            setattr(amc.train, name, _write_nothing)  # rank 0 alone writes
        distributed.follow(dataset)
        return
    if spec.get("fail_at") is not None:
        real = amc.train.train_one_epoch

        def failing(model, data, optimizer, cfg, epoch, *args, **kwargs):
            if epoch == spec["fail_at"]:
                raise RuntimeError("power cut")
            return real(model, data, optimizer, cfg, epoch, *args, **kwargs)

        amc.train.train_one_epoch = failing
    model, masks = pruned_net() if spec["model"] == "plain" else (tiny_model(), None)
    teacher = plain_net(seed=1) if spec["model"] == "plain" else None
    cfg = config(**spec["config"])
    train(
        model, dataset, cfg, spec["out"], resume=spec.get("resume", False), teacher=teacher, grad_masks=masks
    )
    torch.save(model.state_dict(), Path(spec["out"]) / "final.pt")
    distributed.finish()


def run_job(spec: dict, processes: int = 2) -> None:
    mp.spawn(_job, args=(processes, free_port(), spec), nprocs=processes, join=True)


def single_process(out: Path, n_train: int, **overrides) -> nn.Module:
    model, masks = pruned_net()
    cfg = config(**{**JOB, **overrides})
    train(model, synthetic_dataset(n_train=n_train), cfg, out, teacher=plain_net(seed=1), grad_masks=masks)
    return model


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=atol, msg=key)


@pytest.mark.slow
def test_two_processes_train_like_one_and_only_rank_0_writes(tmp_path):
    """Same global batches, same augmentation, gradients averaged by share: the same weights.

    The network has no BatchNorm: with it, each process would normalise by the statistics of
    its half batch, so the steps (not the recipe) differ; see the ResNet test below. Distillation
    and fine-grained gradient masks are on.
    """
    n_train = 200  # 3 steps of 63 and a last one of 11: shares of 32/31 and 6/5
    alone = single_process(tmp_path / "single", n_train)
    run_job({"model": "plain", "n_train": n_train, "config": JOB, "out": str(tmp_path / "ddp")})
    parallel = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    assert_same_weights(alone.state_dict(), parallel)
    mask = pruned_net()[1]["2"]
    assert torch.all(parallel["2.weight"][mask == 0] == 0)  # the pruned weights stayed zero

    one = json.loads((tmp_path / "single" / "history.json").read_text())
    two = json.loads((tmp_path / "ddp" / "history.json").read_text())
    for a, b in zip(one, two, strict=True):  # loss and accuracy of the whole batches, over both ranks
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["acc"] == pytest.approx(a["acc"])
        assert b["test_top1"] == a["test_top1"]
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == [".lock", "final.pt", "history.json", "last.pt", "model.json", "model.pt"]
    manifest = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert manifest["processes"] == 2 and manifest["train"]["batch_size"] == 63


@pytest.mark.slow
def test_an_interrupted_distributed_run_resumes_on_any_number_of_processes(tmp_path):
    n_train = 128
    alone = single_process(tmp_path / "single", n_train).state_dict()
    spec = {"model": "plain", "n_train": n_train, "config": JOB, "out": str(tmp_path / "ddp")}
    with pytest.raises(Exception, match="power cut"):
        run_job({**spec, "fail_at": 2})
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not (tmp_path / "ddp" / "model.pt").exists()
    shutil.copytree(tmp_path / "ddp", tmp_path / "ddp_then_one")

    run_job({**spec, "resume": True})  # every rank starts from rank 0's last.pt
    assert_same_weights(alone, torch.load(tmp_path / "ddp" / "final.pt", weights_only=True))
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]

    model, masks = pruned_net()  # the same batches on one process: resume there too
    cfg = config(**JOB)
    data = synthetic_dataset(n_train=n_train)
    teacher = plain_net(seed=1)
    train(model, data, cfg, tmp_path / "ddp_then_one", resume=True, teacher=teacher, grad_masks=masks)
    assert_same_weights(alone, model.state_dict())


@pytest.mark.slow
def test_batchnorm_networks_reach_the_accuracy_of_one_process(tmp_path):
    """With BatchNorm the steps differ, the outcome does not.

    Each process normalises by the statistics of its own half batch (and DDP copies rank 0's
    running statistics to the others at every step), so the weights drift apart from one
    process's within a few steps: no exact comparison. The synthetic classes differ in mean
    colour; 10 epochs bring one process to 100 % test accuracy for any seed tried (0-3), and two
    processes must come within 5 points of it.
    """
    settings = {"epochs": 10, "batch_size": 32, "lr": 0.02}
    one = train(tiny_model(), synthetic_dataset(n_train=256), config(**settings), tmp_path / "single")
    run_job({"model": "resnet", "n_train": 256, "config": settings, "out": str(tmp_path / "ddp")})
    two = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert one["test_top1"] >= 95
    assert two["test_top1"] >= one["test_top1"] - 5


@pytest.mark.slow
def test_torchrun_fine_tunes_from_the_cli_with_distillation(tmp_path):
    """``torchrun --nproc_per_node 2 ... apply --finetune-epochs``: rank 0 writes, all ranks train.

    The follower loads the image folder itself, from the recipe rank 0 sends.
    """
    from amc.baselines import uniform_policy
    from amc.models import create_model
    from amc.pruning.channel import ChannelPruner

    write_png_folder(tmp_path / "images", per_class=20)
    dense = create_model("resnet20", num_classes=3, width=0.25)
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    policy = uniform_policy(ChannelPruner(dense), 0.5, model="resnet20").save(tmp_path / "half.json")
    out = tmp_path / "applied"
    argv = ["apply", "--policy", str(policy), "--checkpoint", str(tmp_path / "dense.pt"), "--width", "0.25"]
    argv += ["--dataset", "folder", "--data", str(tmp_path / "images"), "--search-size", "6"]
    argv += ["--threads", "1", "--finetune-epochs", "2", "--distill", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(free_port()), "-m", "amc.cli", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dense" in done.stdout and done.stdout.count("saved") == 1  # rank 0 alone prints
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetune_epochs"] == 2 and metrics["distill"] is True
    finetune = json.loads((out / "finetune" / "model.json").read_text())
    assert finetune["processes"] == 2 and finetune["teachers"][0]["model"] == "resnet20"
    assert sorted(p.name for p in (out / "finetune").iterdir()) == [
        ".lock",
        "history.json",
        "last.pt",
        "model.json",
        "model.pt",
    ]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# --- the GPU path (runs where a GPU is) -----------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("amp", ["none", "fp16", "bf16"])
def test_cuda_training_with_mixed_precision_resumes(tmp_path, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    dataset = synthetic_dataset(n_train=128)
    cfg = config(epochs=2, amp=amp)
    straight = tiny_model()
    result = train(straight, dataset, cfg, tmp_path / "straight", device="cuda")
    assert next(straight.parameters()).is_cuda and result["test_top1"] > 0
    state = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert ("scaler" in state) == (amp == "fp16")
    first = train(tiny_model(), dataset, config(epochs=1, amp=amp), tmp_path / "resumed", device="cuda")
    assert first["train"]["epochs"] == 1
    (tmp_path / "resumed" / "model.json").unlink()
    resumed = tiny_model()
    train(resumed, dataset, cfg, tmp_path / "resumed", device="cuda", resume=True)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


@needs_cuda
def test_cuda_search_apply_and_fine_tune_from_the_cli(tmp_path, monkeypatch):
    """A tiny search with a latency budget (the latency table is measured on the GPU), then apply and
    fine-tune on the GPU, fine-grained too."""
    from amc.cli import main
    from amc.models import create_model
    from amc.policy import load_pruned

    monkeypatch.chdir(tmp_path)
    write_png_folder(tmp_path / "images", per_class=20)
    data = ["--dataset", "folder", "--data", str(tmp_path / "images"), "--search-size", "12"]
    model = [
        "--checkpoint",
        str(tmp_path / "dense.pt"),
        "--width",
        "0.25",
        "--device",
        "cuda",
        "--threads",
        "1",
    ]
    torch.save(create_model("resnet20", num_classes=3, width=0.25).state_dict(), tmp_path / "dense.pt")
    search = ["search", *model, *data, "--target", "latency=0.8", "--episodes", "4", "--warmup", "2"]
    search += ["--search-images", "12", "--runs-dir", str(tmp_path), "--name", "run", "--no-progress"]
    assert main([*search, "--no-summary"]) == 0
    policy = tmp_path / "run" / "best_policy.json"
    apply = ["apply", *model, *data, "--policy", str(policy), "--finetune-epochs", "1", "--distill"]
    assert main([*apply, "--out", str(tmp_path / "applied")]) == 0
    pruned = load_pruned(
        create_model("resnet20", num_classes=3, width=0.25), tmp_path / "applied" / "pruned.pt"
    )
    assert sum(p.numel() for p in pruned.parameters()) > 0
    finegrained = ["search", *model, *data, "--mode", "finegrained", "--target", "params=0.5"]
    finegrained += ["--episodes", "4", "--warmup", "2", "--search-images", "12", "--runs-dir", str(tmp_path)]
    assert main([*finegrained, "--name", "fg", "--no-progress", "--no-summary"]) == 0
    apply = ["apply", *model, *data, "--policy", str(tmp_path / "fg" / "best_policy.json")]
    assert (
        main([*apply, "--finetune-epochs", "1", "--steps", "2", "--out", str(tmp_path / "fg_applied")]) == 0
    )
    assert (tmp_path / "fg_applied" / "pruned_sparse.pt").is_file()


@needs_cuda
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_on_two_gpus_uses_nccl(tmp_path):
    write_png_folder(tmp_path / "images", per_class=20)
    argv = ["train", "--width", "0.25", "--dataset", "folder", "--data", str(tmp_path / "images")]
    argv += ["--search-size", "6", "--epochs", "2", "--device", "cuda", "--amp", "fp16", "--no-progress"]
    argv += ["--out", str(tmp_path / "run")]
    env = dict(os.environ)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(free_port()), "-m", "amc.cli", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "model.json").read_text())["processes"] == 2
