"""Training loop, resume, evaluation, BatchNorm recalibration, schedules and the ``amc`` CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, fields

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import amc.train
from amc.baselines import uniform_policy
from amc.cli import build_parser, main
from amc.data import Dataset, ImageArrays
from amc.models import MODELS, create_model
from amc.policy import load_pruned
from amc.pruning.channel import ChannelPruner
from amc.train import (
    Ensemble,
    TrainConfig,
    distillation_loss,
    evaluate,
    learning_rate,
    recalibrate_bn,
    train,
)


def synthetic_dataset(n_train: int = 256, n_test: int = 64, classes: int = 4, seed: int = 0) -> Dataset:
    """Images whose mean colour depends on the class (learnable), plus noise."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> ImageArrays:
        labels = np.arange(n) % classes
        base = (labels * (200 // classes) + 20)[:, None, None, None]
        noise = rng.integers(-20, 21, (n, 32, 32, 3))
        return ImageArrays(np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int64))

    splits = {"train": make(n_train), "search": make(32), "test": make(n_test)}
    return Dataset("synthetic", [f"c{i}" for i in range(classes)], splits, (0.4,) * 3, (0.25,) * 3, 7, "mem")


def tiny_model(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=classes, width=0.25)


def config(**overrides) -> TrainConfig:
    settings = dict(epochs=2, batch_size=64, lr=0.05, threads=1, progress=False, seed=0)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return synthetic_dataset()


def test_train_writes_checkpoint_history_and_manifest(tmp_path, dataset):
    out = tmp_path / "run"
    cfg = config()
    result = train(tiny_model(), dataset, cfg, out, manifest={"model": "resnet20", "width": 0.25})
    for name in ("last.pt", "history.json", "model.pt", "model.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "acc", "test_top1"} <= set(history[0])

    manifest = json.loads((out / "model.json").read_text())
    assert manifest == result
    assert manifest["model"] == "resnet20" and manifest["width"] == 0.25
    assert manifest["dataset"] == "synthetic" and manifest["split_seed"] == 7
    assert manifest["search_size"] == 32
    assert manifest["mean"] == [0.4] * 3 and manifest["std"] == [0.25] * 3
    assert manifest["train"] == asdict(cfg)
    assert 0 <= manifest["test_top1"] <= manifest["test_top5"] <= 100
    assert isinstance(manifest["command"], str)
    assert {"python", "torch", "numpy", "amc-pruner"} <= set(manifest["versions"])

    # model.pt is a plain state dict that create_model loads, and it scores the stated accuracy
    model = create_model("resnet20", num_classes=4, width=0.25, checkpoint=out / "model.pt")
    assert evaluate(model, dataset)["top1"] == pytest.approx(manifest["test_top1"], abs=0.01)
    # last.pt (the resumable state) loads too
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    create_model("resnet20", num_classes=4, width=0.25, checkpoint=out / "last.pt")


def test_training_learns_the_synthetic_task(tmp_path, dataset):
    result = train(tiny_model(), dataset, config(epochs=3, lr=0.1), tmp_path / "run")
    assert result["test_top1"] > 50  # chance is 25 %


def test_refuses_to_overwrite_a_run(tmp_path, dataset):
    out = tmp_path / "run"
    train(tiny_model(), dataset, config(epochs=1), out)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_model(), dataset, config(epochs=1), out)


def test_resume_continues_from_the_last_epoch(tmp_path, dataset):
    out = tmp_path / "run"
    train(tiny_model(), dataset, config(epochs=2), out)
    first = json.loads((out / "history.json").read_text())
    train(tiny_model(), dataset, config(epochs=3), out, resume=True)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == first
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("swa_epochs", [0, 2])
def test_resume_after_an_interruption_is_exact(tmp_path, dataset, monkeypatch, swa_epochs):
    """An interrupted run resumed from last.pt ends with the same weights as an uninterrupted one."""
    cfg = config(epochs=3, swa_epochs=swa_epochs)
    straight = tiny_model()
    train(straight, dataset, cfg, tmp_path / "straight")

    real = amc.train.train_one_epoch

    def interrupted(model, data, optimizer, config, epoch, *args):
        if epoch == 2:
            raise RuntimeError("power cut")
        return real(model, data, optimizer, config, epoch, *args)

    monkeypatch.setattr(amc.train, "train_one_epoch", interrupted)
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny_model(), dataset, cfg, tmp_path / "resumed")
    monkeypatch.setattr(amc.train, "train_one_epoch", real)
    resumed = create_model("resnet20", num_classes=4, width=0.25)  # other weights: all come from last.pt
    train(resumed, dataset, cfg, tmp_path / "resumed", resume=True)

    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{key} differs after resuming")


def test_resume_with_nothing_to_resume(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_model(), dataset, config(), tmp_path / "run", resume=True)


def test_train_config_validates():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")  # fp16 is valid (CUDA only): amc.train.check_amp
    with pytest.raises(ValueError, match="swa_epochs"):
        TrainConfig(epochs=5, swa_epochs=6)
    with pytest.raises(ValueError, match="distill_weight"):
        TrainConfig(distill_weight=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(distill_temperature=0)


# --- knowledge distillation -------------------------------------------------------------------------------


class ReversedTeacher(nn.Module):
    """Reads the synthetic class c from the image centre and teaches class 3 - c instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixel = (x[:, :, 8:24, 8:24].mean((1, 2, 3)) * 0.25 + 0.4) * 255  # undo the normalisation
        label = ((pixel - 20) / 50).round().long().clamp(0, 3)
        return nn.functional.one_hot(3 - label, 4).float() * 5


def test_distillation_loss_vanishes_only_when_the_logits_agree():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    assert distillation_loss(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(teacher + 3.0, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-free
    loss = distillation_loss(student, teacher, 2.0)
    kl = (teacher / 2).softmax(1) * ((teacher / 2).log_softmax(1) - (student / 2).log_softmax(1))
    assert loss.item() == pytest.approx(4.0 * kl.sum(1).mean().item(), rel=1e-5)


def test_ensemble_teaches_the_mean_of_its_members_logits():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


def test_distillation_makes_the_student_follow_the_teacher(tmp_path, dataset):
    student = tiny_model()
    cfg = config(epochs=5, lr=0.1, distill_weight=1.0, distill_temperature=1.0)  # labels carry no weight
    train(student, dataset, cfg, tmp_path / "run", teacher=ReversedTeacher())
    test = dataset.split("test")
    reversed_labels = Dataset(
        "reversed",
        dataset.classes,
        {"test": ImageArrays(test.images, 3 - test.labels)},
        dataset.mean,
        dataset.std,
    )
    assert evaluate(ReversedTeacher(), reversed_labels)["top1"] == 100
    # chance is 25 %; trained on the labels instead, the student would score near 0 here
    assert evaluate(student, reversed_labels)["top1"] > 50


# --- stochastic weight averaging --------------------------------------------------------------------------


def test_swa_saves_the_average_of_the_last_epochs_with_fresh_batchnorm(tmp_path, dataset, monkeypatch):
    seen = []
    real = amc.train.train_one_epoch

    def recording(model, *args):
        stats = real(model, *args)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return stats

    monkeypatch.setattr(amc.train, "train_one_epoch", recording)
    model = tiny_model()
    result = train(model, dataset, config(epochs=3, swa_epochs=2), tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    for name, _ in model.named_parameters():  # the mean of epochs 2 and 3, not epoch 3's weights
        torch.testing.assert_close(saved[name], (seen[1][name] + seen[2][name]) / 2, msg=name)
        torch.testing.assert_close(model.state_dict()[name], saved[name])
    average = tiny_model()
    average.load_state_dict({k: (seen[1][k] + seen[2][k]) / 2 for k in saved})
    recalibrate_bn(average, dataset, num_batches=amc.train.SWA_BN_BATCHES, augmented=True)
    bn = next(k for k in saved if k.endswith("running_mean"))  # recomputed on augmented training images
    torch.testing.assert_close(saved[bn], average.state_dict()[bn])
    assert not torch.equal(saved[bn], seen[2][bn])
    assert result["train"]["swa_epochs"] == 2
    assert evaluate(model, dataset)["top1"] == pytest.approx(result["test_top1"], abs=0.01)


def test_swa_refuses_to_resume_a_run_without_an_average(tmp_path, dataset):
    train(tiny_model(), dataset, config(epochs=2), tmp_path / "run")
    with pytest.raises(ValueError, match="no SWA average"):
        train(tiny_model(), dataset, config(epochs=3, swa_epochs=2), tmp_path / "run", resume=True)


def test_swa_schedule_anneals_to_the_swa_rate_then_holds_it():
    cfg = TrainConfig(lr=0.1, warmup_epochs=0, epochs=10, swa_epochs=4, swa_lr=0.02)
    steps = 10
    lrs = [learning_rate(s, 100, cfg, steps) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs))
    assert lrs[59] == pytest.approx(0.02, abs=1e-4)  # the cosine ends at the SWA rate ...
    assert lrs[60:] == pytest.approx([0.02] * 40)  # ... and the SWA epochs hold it
    only_swa = TrainConfig(epochs=10, swa_epochs=10, swa_lr=0.005)
    assert {learning_rate(s, 100, only_swa, steps) for s in range(100)} == {0.005}


# --- evaluation and BatchNorm recalibration ----------------------------------------------------------


class Oracle(nn.Module):
    """Reads the class back from the pixel value (dataset normalisation is the identity)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x[:, 0, 0, 0] * 255 / 20).round().long()
        return nn.functional.one_hot(label, self.classes).float() * 10


def test_evaluate_metrics(dataset):
    metrics = evaluate(tiny_model(), dataset)
    assert set(metrics) == {"top1", "top5", "loss"}
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert metrics["top5"] == 100  # four classes: top-5 always contains the label
    assert metrics["loss"] > 0


def test_evaluate_perfect_model():
    labels = np.arange(30) % 7
    images = np.broadcast_to((labels * 20).astype(np.uint8)[:, None, None, None], (30, 4, 4, 3)).copy()
    ds = Dataset(
        "oracle", [str(i) for i in range(7)], {"test": ImageArrays(images, labels)}, (0,) * 3, (1,) * 3
    )
    metrics = evaluate(Oracle(7), ds, batch_size=8)
    assert metrics["top1"] == 100 and metrics["top5"] == 100
    assert metrics["loss"] < 1e-3
    wrong = ImageArrays(images, (labels + 1) % 7)
    ds.splits["search"] = wrong
    assert evaluate(Oracle(7), ds, "search")["top1"] == 0
    assert evaluate(Oracle(7), ds, limit=10)["top1"] == 100


def test_evaluate_with_limit_sees_every_class():
    """The per-epoch check uses limit=2000 on a class-sorted test split: it must stay balanced."""
    labels = np.repeat(np.arange(5), 40)  # sorted by class, like an image-folder test split
    images = np.broadcast_to((labels * 20).astype(np.uint8)[:, None, None, None], (200, 4, 4, 3)).copy()
    ds = Dataset(
        "sorted", [str(i) for i in range(5)], {"test": ImageArrays(images, labels)}, (0,) * 3, (1,) * 3
    )

    class OnlyClassZero(Oracle):
        def forward(self, x):
            return nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), self.classes).float()

    assert evaluate(OnlyClassZero(5), ds)["top1"] == pytest.approx(20)
    assert evaluate(OnlyClassZero(5), ds, limit=40)["top1"] == pytest.approx(20)  # not 100


def test_recalibrate_bn_on_shifted_data():
    shifted = synthetic_dataset(n_train=128, n_test=8)
    shifted.splits["train"].images[:] = np.clip(shifted.splits["train"].images.astype(int) + 150, 0, 255)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    recalibrate_bn(model, shifted, num_batches=4, batch_size=32)
    assert not model.training and not any(m.training for m in model.modules())
    after = model.state_dict()
    for key, value in before.items():
        assert not torch.allclose(value, after[key]), f"{key} did not change"
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 for m in norms), "momentum must be restored"
    # with momentum=None the first BatchNorm holds the exact mean of its inputs over all 128 images
    x = torch.cat([x for x, _ in amc.data.iterate_batches(shifted.split("train"), shifted, 128)])
    with torch.no_grad():
        expected = model.conv1(x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(model.bn1.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_recalibrate_bn_without_batchnorm_is_a_no_op(dataset):
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32 * 3, 4))
    assert recalibrate_bn(model, dataset) is model


# --- learning-rate schedules --------------------------------------------------------------------------


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(lr=0.2, warmup_epochs=1, schedule="cosine")
    steps, total = 10, 100
    lrs = [learning_rate(s, total, cfg, steps) for s in range(total)]
    assert lrs[:10] == pytest.approx([0.2 * (s + 1) / 10 for s in range(10)])
    assert max(lrs) == pytest.approx(0.2)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[9:])), "not monotone after warm-up"
    assert lrs[55] == pytest.approx(0.1, rel=1e-6)  # half-way through the decay
    assert lrs[-1] < 1e-3 * 0.2
    assert all(lr > 0 for lr in lrs)


def test_cosine_schedule_without_warmup():
    cfg = TrainConfig(lr=0.1, warmup_epochs=0)
    assert learning_rate(0, 50, cfg, 10) == pytest.approx(0.1)


def test_onecycle_schedule_peaks_at_30_percent():
    cfg = TrainConfig(lr=0.4, schedule="onecycle")
    total = 200
    lrs = [learning_rate(s, total, cfg, 10) for s in range(total)]
    assert int(np.argmax(lrs)) == int(0.3 * total)
    assert max(lrs) == pytest.approx(0.4)
    assert lrs[0] == pytest.approx(0.4 * 0.04)
    assert all(b > a for a, b in itertools.pairwise(lrs[:61]))
    assert lrs[-1] < 1e-3 * 0.4
    assert math.isfinite(sum(lrs))


# --- the amc command ------------------------------------------------------------------------------------


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_train_help_mentions_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    expected = {"--model", "--width", "--checkpoint", "--dataset", "--data", "--download", "--split-seed"}
    expected |= {"--search-size", "--device", "--threads", "--out", "--resume"}
    for f in fields(TrainConfig):  # every training setting must be reachable from the command line
        option = f"--{f.name.replace('_', '-')}"
        expected.add(f"--no-{f.name}" if isinstance(f.default, bool) and f.default else option)
    for option in expected:
        assert option in text, option
    for action in subparser("train")._actions:
        for option in action.option_strings:
            assert option in text
    for name in MODELS:
        assert name in text


def test_evaluate_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert "--split" in capsys.readouterr().out


def test_evaluate_unknown_model_fails_cleanly(capsys):
    assert main(["evaluate", "--model", "nope", "--threads", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("amc: error: ")
    assert "nope" in captured.err
    assert "Traceback" not in captured.err


def write_png_folder(root, per_class: int, classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 4)):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(40 + 70 * c + rng.integers(-15, 16, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")


def test_evaluate_unknown_model_without_checkpoint_lists_models(tmp_path, capsys):
    write_png_folder(tmp_path / "images", per_class=4)
    argv = ["evaluate", "--model", "nope", "--checkpoint", "none", "--dataset", "folder"]
    argv += ["--data", str(tmp_path / "images"), "--search-size", "3", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("amc: error: unknown model 'nope'") and "resnet20" in err
    # The model name is checked before any data is read.
    argv[argv.index("--data") + 1] = str(tmp_path / "absent")
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("amc: error: unknown model 'nope'")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--out", "{tmp}/run", "--threads", "1"], "needs --data"),
        (
            [
                "evaluate",
                "--checkpoint",
                "none",
                "--dataset",
                "mnist",
                "--data",
                "{tmp}/absent",
                "--threads",
                "1",
            ],
            "missing idx file",
        ),
        (["evaluate", "--checkpoint", "{tmp}/absent.pt", "--threads", "1"], "does not exist"),
    ],
)
def test_cli_errors_return_2(tmp_path, capsys, argv, fragment):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amc: error: ") and fragment in err


def test_cli_train_then_evaluate(tmp_path, capsys):
    data = tmp_path / "images"
    write_png_folder(data, per_class=20)
    out = tmp_path / "run"
    common = ["--dataset", "folder", "--data", str(data), "--search-size", "6", "--threads", "1"]
    argv = ["train", "--model", "resnet20", "--width", "0.25", "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--batch-size", "16", "--no-progress", *common]) == 0
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["model"] == "resnet20" and manifest["width"] == 0.25
    assert manifest["num_classes"] == 3 and manifest["in_channels"] == 3
    assert manifest["train"]["epochs"] == 1 and manifest["train"]["batch_size"] == 16
    assert manifest["train"]["progress"] is False and manifest["train"]["threads"] == 1
    assert "test top-1" in capsys.readouterr().out

    # the width comes from the manifest beside the checkpoint
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), *common]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {manifest['test_top1']:.2f} %" in printed
    assert "(12 images)" in printed

    # distillation from that model: the teacher's width comes from its manifest
    teacher = ["--teacher", f"resnet20={out / 'model.pt'}"]
    argv_kd = ["train", "--width", "0.25", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "kd")]
    argv_kd += [*teacher, *common]
    assert main(argv_kd) == 0
    kd = json.loads((tmp_path / "kd" / "model.json").read_text())
    assert kd["teachers"] == [{"model": "resnet20", "checkpoint": str(out / "model.pt")}]
    capsys.readouterr()

    # a second train into the same folder is refused without --resume
    assert main([*argv, "--no-progress", *common]) == 2
    assert "--resume" in capsys.readouterr().err


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cli_apply_prunes_fine_tunes_by_distillation_and_keeps_earlier_results(tmp_path, capsys, monkeypatch):
    data = tmp_path / "images"
    write_png_folder(data, per_class=20)
    common = ["--dataset", "folder", "--data", str(data), "--search-size", "6", "--threads", "1"]
    argv = ["train", "--width", "0.25", "--out", str(tmp_path / "dense"), "--epochs", "1", "--no-progress"]
    assert main([*argv, *common]) == 0
    checkpoint = tmp_path / "dense" / "model.pt"
    dense = create_model("resnet20", num_classes=3, checkpoint=checkpoint)
    policy_file = uniform_policy(ChannelPruner(dense), 0.5, model="resnet20").save(tmp_path / "policy.json")

    teachers = []
    real = amc.train.train_one_epoch

    def spy(model, data, optimizer, config, epoch, device, generator, teacher=None):
        teachers.append(teacher)
        return real(model, data, optimizer, config, epoch, device, generator, teacher)

    monkeypatch.setattr(amc.train, "train_one_epoch", spy)
    out = tmp_path / "applied"
    argv = ["apply", "--policy", str(policy_file), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*argv, "--finetune-epochs", "1", "--distill", *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distill"] is True and metrics["finetune_epochs"] == 1
    assert metrics["flops_ratio"] <= 0.5
    assert len(teachers) == 1 and n_params(teachers[0]) == n_params(dense)  # the dense model teaches
    finetune = json.loads((out / "finetune" / "model.json").read_text())
    assert finetune["train"]["epochs"] == 1 and finetune["policy"] == "resnet20"
    assert finetune["train"]["threads"] == 1  # --threads holds for the fine-tune too
    assert finetune["teachers"] == [{"model": "resnet20", "checkpoint": str(checkpoint)}]
    pruned = load_pruned(create_model("resnet20", num_classes=3, width=0.25), out / "pruned.pt")
    assert n_params(pruned) < n_params(dense)
    assert "pruned" in capsys.readouterr().out

    before = (out / "pruned.pt").read_bytes()
    assert main([*argv, *common]) == 2  # the earlier result is not overwritten
    assert "already holds a pruned model" in capsys.readouterr().err
    assert (out / "pruned.pt").read_bytes() == before


def test_cli_apply_resumes_an_interrupted_fine_tune(tmp_path, capsys, monkeypatch):
    data = tmp_path / "images"
    write_png_folder(data, per_class=20)
    common = ["--dataset", "folder", "--data", str(data), "--search-size", "6", "--threads", "1"]
    dense = create_model("resnet20", num_classes=3, width=0.25)
    checkpoint = tmp_path / "dense.pt"
    torch.save(dense.state_dict(), checkpoint)
    pruner = ChannelPruner(dense)
    half, third = (
        uniform_policy(pruner, r, model="resnet20").save(tmp_path / f"{r}.json") for r in (0.5, 0.3)
    )
    out = tmp_path / "applied"
    argv = ["apply", "--checkpoint", str(checkpoint), "--width", "0.25", "--out", str(out), *common]
    assert main([*argv, "--policy", str(half), "--finetune-epochs", "1"]) == 0
    for name in ("pruned.pt", "metrics.json"):  # as if interrupted after the first epoch
        (out / name).unlink()

    assert main([*argv, "--policy", str(half), "--finetune-epochs", "2"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--policy", str(third), "--finetune-epochs", "2", "--resume"]) == 2
    assert "does not fit the model" in capsys.readouterr().err  # another policy, other shapes

    epochs = []
    real = amc.train.train_one_epoch
    monkeypatch.setattr(amc.train, "train_one_epoch", lambda *a, **k: epochs.append(a[4]) or real(*a, **k))
    assert main([*argv, "--policy", str(half), "--finetune-epochs", "2", "--resume"]) == 0
    assert epochs == [1]  # only the second epoch ran
    history = json.loads((out / "finetune" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["finetune_epochs"] == 2


def test_cli_apply_refuses_fine_tuning_options_it_cannot_honour(tmp_path, capsys):
    policy_file = uniform_policy(ChannelPruner(create_model("resnet20")), 0.5, model="resnet20").save(
        tmp_path / "policy.json"
    )
    out = tmp_path / "applied"
    argv = ["apply", "--policy", str(policy_file), "--out", str(out), "--finetune-epochs", "1"]
    argv += ["--threads", "1"]
    assert main(argv) == 2  # the bundled sample holds no training images
    assert "no 'train' split" in capsys.readouterr().err
    assert not out.exists()  # refused before any pruning or writing

    argv = ["apply", "--policy", str(policy_file), "--out", str(out), "--distill", "--threads", "1"]
    assert main(argv) == 2  # distillation happens only while fine-tuning
    assert "add --finetune-epochs" in capsys.readouterr().err
    assert not out.exists()
