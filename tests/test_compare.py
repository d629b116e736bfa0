"""``amc compare``: methods at equal budgets, fine-tuned alike; tables, plots, resume, refusal."""

from __future__ import annotations

import csv
import json
import logging
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import amc.compare
from amc.baselines import TargetError, uniform_policy
from amc.cli import main
from amc.compare import CompareConfig, CompareError, Comparison, Entry, given_entry, parse_ratios
from amc.compare_report import CSV_COLUMNS, write_report
from amc.data import Dataset, DatasetError, ImageArrays
from amc.models import create_model
from amc.plots import MissingExtraError, profiles_image, require_matplotlib
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer, ScoringConfig, calibration_images
from amc.train import TrainConfig, train

CLASSES = 4


def make_split(n: int, rng: np.random.Generator) -> ImageArrays:
    """Images whose mean colour depends on the class (learnable), plus noise."""
    labels = np.arange(n) % CLASSES
    base = (labels * (200 // CLASSES) + 20)[:, None, None, None]
    noise = rng.integers(-40, 41, (n, 32, 32, 3))
    return ImageArrays(np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int64))


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    rng = np.random.default_rng(0)
    splits = {"train": make_split(128, rng), "search": make_split(48, rng), "test": make_split(48, rng)}
    return Dataset("synthetic", [f"c{i}" for i in range(CLASSES)], splits, (0.4,) * 3, (0.25,) * 3, 0, "mem")


@pytest.fixture(scope="module")
def dense_state(dataset, tmp_path_factory) -> dict:
    """A tiny ResNet-20 trained one epoch on the synthetic task (better than chance)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=CLASSES, width=0.25)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, warmup_epochs=0, threads=1, progress=False)
    train(model, dataset, config, tmp_path_factory.mktemp("dense"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def setup(dataset, dense_state, recalibrate: bool = True) -> tuple[ChannelPruner, Scorer]:
    model = create_model("resnet20", num_classes=CLASSES, width=0.25)
    model.load_state_dict(dense_state)
    model.eval()
    scoring = ScoringConfig(images=32, recalibrate=recalibrate, recalibration_images=64)
    scorer = Scorer(dataset, scoring)
    pruner = ChannelPruner(model, calibration=calibration_images(dataset, 64, seed=7))
    return pruner, scorer


def compare_config(**overrides) -> CompareConfig:
    settings = dict(
        target=0.5, baselines=("uniform", "random"), trials=3, finetune_epochs=1, finetune_lr=0.02, threads=1
    )
    return CompareConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def finished(dataset, dense_state, tmp_path_factory):
    """One fine-tuned comparison: a given policy, and three baselines at two budgets."""
    out = tmp_path_factory.mktemp("compare") / "out"
    pruner, scorer = setup(dataset, dense_state, recalibrate=False)  # sensitivity: 1 + 9 x units scores
    policy_file = uniform_policy(pruner, 0.6, "flops").save(out.parent / "best_policy.json")
    given = [given_entry(policy_file, method="search", label="run1")]
    config = compare_config(targets=(0.7,), baselines=("uniform", "sensitivity", "random"))
    report = Comparison(pruner, scorer, config, out, given, {"model": "tiny"}).run("tiny on synthetic")
    written = write_report(report, out, plots=True)
    return out, report, written


def test_tables_have_a_row_per_method_and_budget(finished):
    out, report, written = finished
    assert {p.name for p in written} == {"compare.md", "compare.csv", "accuracy_vs_flops.png", "profiles.png"}
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    names = [(r["method"], float(r["budget"])) for r in rows]
    assert names[0] == ("dense", 1.0)
    search = next(r for r in report.results if r.method == "search")
    assert search.target == round(search.flops_ratio, 2)  # a policy file's budget: its own ratio
    expected = {("search", search.target)} | {
        (m, t) for m in ("uniform", "sensitivity", "random") for t in (0.5, 0.7)
    }
    assert set(names[1:]) == expected and len(names) == 8
    dense = float(rows[0]["top1_before"])
    for r in rows[1:]:
        assert float(r["flops_ratio"]) <= float(r["budget"]) + 0.02
        assert float(r["delta_vs_dense"]) == pytest.approx(float(r["top1_after"]) - dense, abs=0.011)
    md = (out / "compare.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 2 + 8  # header, separator, dense and seven entries
    assert "top-1 before fine-tuning" in table[0] and "Δ vs dense" in table[0]
    assert any(line.startswith(f"| search (run1) | {search.target:.2f} |") for line in table)


def test_finetuning_runs_and_changes_accuracy(finished):
    out, report, _ = finished
    assert all(r.top1_after is not None for r in report.results)
    assert any(r.top1_after != pytest.approx(r.top1_before) for r in report.results)
    for r in report.results:
        manifest = json.loads((out / "finetune" / r.key / "model.json").read_text())
        assert manifest["train"]["epochs"] == 1 and manifest["train"]["warmup_epochs"] == 0
        assert manifest["test_top1"] == pytest.approx(r.top1_after)
        assert json.loads((out / "results" / f"{r.key}.json").read_text())["top1_after"] == r.top1_after


def test_plots_and_tensorboard(finished):
    out, report, _ = finished
    for name in ("accuracy_vs_flops.png", "profiles.png"):
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    profiles = report.profiles()
    assert set(profiles) == {"uniform", "sensitivity", "random (3 trials)"}  # the main budget only
    assert all(len(v) == len(report.units) and all(0 <= s < 1 for s in v) for v in profiles.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = out.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    assert {"compare/profiles", "profile/uniform"} <= set(tags["images"])
    assert {"compare/top1_after/uniform", "compare/top1_before/search", "compare/dense_top1"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in acc.Scalars("compare/top1_after/uniform")] == [50, 70]
    assert "compare/table/text_summary" in tags["tensors"]


def test_profiles_image_is_rgb():
    image = profiles_image(["a", "b", "c"], {"x": [0.1, 0.5, 0.9], "y": [0.3, 0.3, 0.3]}, "t")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_rerun_skips_finished_methods_and_resumes_a_fine_tune(dataset, dense_state, tmp_path, caplog):
    out = tmp_path / "out"
    pruner, scorer = setup(dataset, dense_state)
    first = Comparison(pruner, scorer, compare_config(), out).run()
    uniform = next(r for r in first.results if r.method == "uniform")
    # An interrupted fine-tune: its state was saved, the result and the final model were not.
    (out / "results" / f"{uniform.key}.json").unlink()
    (out / "finetune" / uniform.key / "model.pt").unlink()
    calls = []

    def counting_train(*args, **kwargs):
        calls.append(kwargs.get("resume", args[5] if len(args) > 5 else False))
        return train(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO, logger="amc.compare"):
        mp.setattr(amc.compare, "train", counting_train)
        again = Comparison(pruner, scorer, compare_config(), out).run()
    assert calls == [True]  # only the unfinished one, resumed
    assert "random (3 trials) at flops=0.5: done in an earlier run, skipped" in caplog.text
    assert "continuing the interrupted fine-tune" in caplog.text
    assert [r.top1_after for r in again.results] == [r.top1_after for r in first.results]


def test_refuses_an_out_folder_holding_something_else(dataset, dense_state, tmp_path):
    pruner, scorer = setup(dataset, dense_state)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CompareError, match="choose another --out"):
        Comparison(pruner, scorer, compare_config(), foreign).run()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "out"
    Comparison(pruner, scorer, compare_config(finetune_epochs=0, baselines=("uniform",)), out).run()
    with pytest.raises(
        CompareError, match=r"different comparison \(finetune_epochs: 0 there, 1 here\).*--out"
    ):
        Comparison(pruner, scorer, compare_config(baselines=("uniform",)), out).run()


def test_a_changed_given_policy_is_not_mistaken_for_a_finished_one(dataset, dense_state, tmp_path):
    pruner, scorer = setup(dataset, dense_state)
    config = compare_config(finetune_epochs=0, baselines=())
    first = Entry("search", 0.5, uniform_policy(pruner, 0.5, "flops"), "run")
    Comparison(pruner, scorer, config, tmp_path / "out", [first]).run()
    other = Entry("search", 0.5, uniform_policy(pruner, 0.4, "flops"), "run")
    with pytest.raises(CompareError, match="another search \\(run\\) policy"):
        Comparison(pruner, scorer, config, tmp_path / "out", [other]).run()


def test_without_finetuning_no_training_split_is_needed(dataset, dense_state, tmp_path):
    pruner, scorer = setup(dataset, dense_state)
    no_train = Dataset(
        dataset.name,
        dataset.classes,
        {k: dataset.splits[k] for k in ("search", "test")},
        dataset.mean,
        dataset.std,
    )
    scorer.dataset = no_train
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="no 'train' split"):
        Comparison(pruner, scorer, compare_config(), out).run()
    assert not out.exists()  # failed before anything was pruned or written
    report = Comparison(pruner, scorer, compare_config(finetune_epochs=0, baselines=("uniform",)), out).run()
    write_report(report, out)
    assert report.results[0].top1_after is None
    assert "| uniform | 0.50 |" in (out / "compare.md").read_text()
    assert not (out / "finetune").exists() and not (out / "profiles.png").exists()


def test_config_and_target_parsing():
    assert parse_ratios("0.3, 0.5,0.7") == (0.3, 0.5, 0.7) and parse_ratios("") == ()
    for bad in ("0.3,x", "0", "1.5"):
        with pytest.raises(TargetError, match="bad targets"):
            parse_ratios(bad)
    assert compare_config(targets=(0.7, 0.3)).budgets == [0.3, 0.5, 0.7]
    with pytest.raises(ValueError, match="unknown baseline"):
        compare_config(baselines=("magic",))
    with pytest.raises(ValueError, match="--finetune-epochs"):
        compare_config(finetune_epochs=0, distill=True)
    assert Entry("search", 0.5, label="resnet20__ddpg__seed0/x").key == "search@0.5@resnet20__ddpg__seed0_x"


def test_missing_matplotlib_is_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'amc-pruner\[plot\]'"):
        require_matplotlib()
    assert main(["compare", "--finetune-epochs", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'amc-pruner[plot]'" in err
    assert not (tmp_path / "out").exists()


def write_image_folder(root, rng) -> None:
    for split, n in (("train", 160), ("test", 48)):
        arrays = make_split(n, rng)
        for i, (image, label) in enumerate(zip(arrays.images, arrays.labels, strict=True)):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")


def test_cli_compares_a_search_run_with_baselines_after_finetuning(dense_state, tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data, np.random.default_rng(1))
    checkpoint = tmp_path / "tiny.pt"
    torch.save(dense_state, checkpoint)
    model = ["--model", "resnet20", "--width", "0.25", "--checkpoint", str(checkpoint)]
    common = [*model, "--dataset", "folder", "--data", str(data), "--search-size", "32", "--threads", "1"]
    common += ["--search-images", "16", "--selection-images", "0"]
    # A finished search run: its best policy, its episode count, its budget.
    run = tmp_path / "runs" / "tiny__ddpg__seed0"
    net = create_model("resnet20", num_classes=CLASSES, width=0.25)
    uniform_policy(ChannelPruner(net), 0.5, "flops").save(run / "best_policy.json")
    (run / "state.json").write_text(json.dumps({"episodes": 4}))
    (run / "config.yaml").write_text(yaml.safe_dump({"env": {"metric": "flops", "target": 0.5}}))
    out = tmp_path / "out"
    argv = ["compare", *common, "--search", str(run), "--baselines", "uniform,random"]
    argv += ["--finetune-epochs", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| search (tiny__ddpg__seed0) | 0.50 |" in printed and "| random (4 trials) | 0.50 |" in printed
    assert json.loads((out / "policies" / "random@0.5@4_trials.json").read_text())["metrics"]["trials"] == 4
    for name in ("compare.md", "compare.csv", "accuracy_vs_flops.png", "profiles.png", "comparison.json"):
        assert (out / name).is_file(), name
    with (out / "compare.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["dense", "search", "uniform", "random"]
