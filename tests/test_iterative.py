"""Iterative pruning (prune, fine-tune, repeat), rewinding, and their ``amc`` options."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize
from test_train import config, synthetic_dataset, write_png_folder

import amc.iterative
from amc.baselines import uniform_policy
from amc.cli import main
from amc.iterative import prune_iteratively, scaled_sparsities, split_epochs
from amc.models import create_model
from amc.policy import Policy, apply_policy
from amc.pruning import prunable_weights, sparsity
from amc.pruning.channel import ChannelPruner

SHAPE = (1, 3, 32, 32)


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(create_model("resnet20", num_classes=4, width=0.25), seed)


def finegrained_policy(model: torch.nn.Module, fraction: float = 0.6) -> Policy:
    names = [n for n in prunable_weights(model) if n != "fc"]
    return Policy(sparsities=dict.fromkeys(names, fraction), mode="finegrained", model="resnet20")


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(n_train=64, n_test=16)


def test_epochs_are_split_to_the_total_and_targets_scale_linearly():
    assert (
        split_epochs(5, 3) == [1, 2, 2] and split_epochs(6, 3) == [2, 2, 2] and split_epochs(1, 2) == [0, 1]
    )
    assert scaled_sparsities({"a": 0.6}, 3) == [
        {"a": pytest.approx(0.2)},
        {"a": pytest.approx(0.4)},
        {"a": 0.6},
    ]
    with pytest.raises(ValueError, match="at least 1"):
        split_epochs(3, 0)


def record_steps(monkeypatch) -> list[torch.nn.Module]:
    """Replace fine-tuning by a weight perturbation; record a copy of the model at each step."""
    seen = []

    def fake_train(model, dataset, config, out, device, **kwargs):
        seen.append(json.loads(json.dumps({"epochs": config.epochs, "out": out.name})))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)  # move every weight, as training would
        seen[-1]["model"] = [t.clone() for t in model.state_dict().values()]

    monkeypatch.setattr(amc.iterative, "train", fake_train)
    return seen


def test_channel_steps_shrink_gradually_and_reach_the_policy_exactly(monkeypatch, dataset, tmp_path):
    dense = tiny()
    policy = uniform_policy(ChannelPruner(dense), 0.4, model="resnet20")
    pruner = ChannelPruner(dense)
    final = apply_policy(dense, policy, SHAPE)
    widths = []
    real_step = amc.iterative._channel_step

    def spy(model, kept, *args, **kwargs):
        widths.append(dict(kept))
        return real_step(model, kept, *args, **kwargs)

    monkeypatch.setattr(amc.iterative, "_channel_step", spy)
    seen = record_steps(monkeypatch)
    out = prune_iteratively(dense, policy, SHAPE, dataset, config(epochs=4), tmp_path, steps=3)
    assert [s["epochs"] for s in seen] == [1, 1, 2] and [s["out"] for s in seen] == [
        f"finetune_step{k}" for k in (1, 2, 3)
    ]
    for k, kept in enumerate(widths[:2], start=1):  # step k: the policy's sparsities scaled by k/3
        expected = pruner.kept_for(
            pruner.sparsities_by_name({n: s * k / 3 for n, s in policy.sparsities.items()})
        )
        assert list(kept.values()) == expected
    assert widths[0] != widths[1] != widths[2]
    shapes = {k: v.shape for k, v in out.state_dict().items()}
    assert shapes == {k: v.shape for k, v in final.state_dict().items()}  # exactly the one-shot structure
    assert next(iter(dense.parameters())).shape[0] == 4  # the dense model is untouched


def test_finegrained_steps_reach_each_scaled_sparsity_and_keep_zeros(monkeypatch, dataset, tmp_path):
    dense = tiny()
    policy = finegrained_policy(dense, 0.6)
    seen = []

    def sparsity_at_step(model, *args, **kwargs):
        seen.append(sparsity(model, policy.sparsities).overall)

    monkeypatch.setattr(amc.iterative, "train", sparsity_at_step)
    prune_iteratively(dense, policy, SHAPE, dataset, config(epochs=3), tmp_path, steps=3)
    assert seen == [pytest.approx(s, abs=2e-3) for s in (0.2, 0.4, 0.6)]


def test_finegrained_zeros_survive_real_fine_tuning(dataset, tmp_path):
    dense = tiny()
    policy = finegrained_policy(dense, 0.5)
    out = prune_iteratively(dense, policy, SHAPE, dataset, config(epochs=2, momentum=0.9), tmp_path, steps=2)
    report = sparsity(out, policy.sparsities)
    assert report.overall == pytest.approx(0.5, abs=2e-3)  # SGD with momentum and decay regrew none
    assert all(s == pytest.approx(0.5, abs=0.02) for s in report.layers.values())
    assert (tmp_path / "finetune_step1" / "model.pt").exists() and (tmp_path / "finetune_step2").exists()


def test_finegrained_rewind_restores_the_early_weights_at_kept_positions(monkeypatch, dataset, tmp_path):
    dense, early = tiny(0), tiny(1).state_dict()
    policy = finegrained_policy(dense, 0.5)
    seen = []
    monkeypatch.setattr(amc.iterative, "train", lambda model, *a, **k: seen.append(copy_state(model)))
    out = prune_iteratively(dense, policy, SHAPE, dataset, config(epochs=2), tmp_path, 2, early)
    rewound = seen[-1]  # the final retraining starts from the rewound weights
    for name in policy.sparsities:
        w = rewound[f"{name}.weight"]
        kept = w != 0
        assert torch.equal(w[kept], early[f"{name}.weight"][kept])
        assert (~kept).float().mean() == pytest.approx(0.5, abs=0.02)
        trained_mask = seen[0][f"{name}.weight"] != 0  # step 1 ranked the trained weights, not the early ones
        assert (kept & ~trained_mask).sum() == 0
    assert torch.equal(rewound["bn1.running_mean"], early["bn1.running_mean"])
    assert out is not None


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_channel_rewind_replays_the_pruning_on_the_early_weights(monkeypatch, dataset, tmp_path):
    dense, early_model = tiny(0), tiny(1)
    early = early_model.state_dict()
    policy = uniform_policy(ChannelPruner(dense), 0.5, model="resnet20")
    seen = []
    monkeypatch.setattr(amc.iterative, "train", lambda model, *a, **k: seen.append(copy_state(model)))
    prune_iteratively(dense, policy, SHAPE, dataset, config(epochs=2), tmp_path / "a", 2)
    trained = seen[-1]  # the same steps without rewinding (the fake fine-tunes change no weight)
    prune_iteratively(dense, policy, SHAPE, dataset, config(epochs=2), tmp_path / "b", 2, early)
    rewound = seen[-1]
    assert len(seen) == 4
    dense_state = dense.state_dict()
    checked = 0
    for key, value in trained.items():
        if key.endswith("bn1.weight") or key.endswith("bn2.weight"):
            # recover the kept channel indices from the (unique) dense BatchNorm scales
            idx = [int((dense_state[key] == v).nonzero()[0]) for v in value]
            assert torch.equal(rewound[key], early[key][idx])
            mean = key.replace(".weight", ".running_mean")
            assert torch.equal(rewound[mean], early[mean][idx])
            checked += 1
    assert checked >= 10


def test_cli_train_saves_epochs_and_apply_steps_with_rewind(tmp_path, capsys):
    data = tmp_path / "images"
    write_png_folder(data, per_class=8)
    common = ["--dataset", "folder", "--data", str(data), "--search-size", "3", "--threads", "1"]
    run = tmp_path / "dense"
    argv = ["train", "--width", "0.25", "--out", str(run), "--epochs", "2", "--batch-size", "8"]
    assert main([*argv, "--no-progress", "--save-epochs", "1", *common]) == 0
    assert (run / "epoch1.pt").exists() and not (run / "epoch2.pt").exists()
    assert json.loads((run / "model.json").read_text())["train"]["save_epochs"] == [1]
    assert (
        main([*argv[:-4], "--epochs", "1", "--save-epochs", "3", "--out", str(tmp_path / "x"), *common]) == 2
    )
    assert "save_epochs" in capsys.readouterr().err

    dense = create_model("resnet20", num_classes=3, checkpoint=run / "model.pt")
    policy_file = finegrained_policy(dense, 0.5).save(tmp_path / "policy.json")
    out = tmp_path / "applied"
    argv = ["apply", "--policy", str(policy_file), "--checkpoint", str(run / "model.pt"), "--out", str(out)]
    assert main([*argv, "--finetune-epochs", "2", "--steps", "2", "--rewind", "1", *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["rewind"] == 1 and metrics["finetune_epochs"] == 2
    assert metrics["params_ratio"] < 0.65  # the zeros survived the fine-tunes
    assert (out / "finetune_step1").is_dir() and (out / "finetune_step2").is_dir()
    capsys.readouterr()

    assert (
        main([*argv, "--out", str(tmp_path / "a2"), "--finetune-epochs", "1", "--rewind", "4", *common]) == 2
    )
    assert "amc train --save-epochs 4" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "a3"), "--steps", "2", *common]) == 2
    assert "add --finetune-epochs" in capsys.readouterr().err
    assert not (tmp_path / "a2").exists() and not (tmp_path / "a3").exists()
