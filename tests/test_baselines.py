"""Baseline policies: uniform, sensitivity analysis and random search meet their budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.backends import ChannelBackend
from amc.baselines import (
    TargetError,
    cost_ratio,
    fit_to_target,
    random_search_policy,
    sensitivity_policy,
    solve_uniform,
    uniform_policy,
)
from amc.data.base import Dataset, ImageArrays
from amc.models import create_model
from amc.pruning.channel import ChannelPruner
from amc.scoring import Scorer, ScoringConfig, calibration_images

EPS = 1e-6  # well above the bisection's resolution (0.95 / 2**40), far below one channel's step


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    rng = np.random.default_rng(0)
    search = ImageArrays(
        rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 200).astype(np.int64)
    )
    return Dataset(
        name="synthetic",
        classes=[str(i) for i in range(10)],
        splits={"search": search},
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


@pytest.fixture(scope="module")
def pruner() -> ChannelPruner:
    torch.manual_seed(0)
    return ChannelPruner(create_model("resnet20", width=0.5))


@pytest.fixture(scope="module")
def scorer(dataset) -> Scorer:
    return Scorer(dataset, ScoringConfig(images=100, recalibrate=False))


def ratio(pruner: ChannelPruner, sparsities, metric: str = "flops") -> float:
    return cost_ratio(ChannelBackend(pruner), list(sparsities), metric)


def kept_ratio(pruner: ChannelPruner, kept, metric: str = "flops") -> float:
    return ChannelBackend(pruner).kept_costs(kept)[metric]


def test_scorer_scores_the_configured_slice(scorer, pruner):
    assert len(scorer.sets["search"][1]) == 100
    acc = scorer.evaluate(pruner.model)
    assert 0.0 <= acc <= 100.0 and acc == int(acc)  # percent of exactly 100 images
    with pytest.raises(ValueError, match="no selection images"):
        scorer.evaluate(pruner.model, on="selection")


def test_selection_images_are_disjoint_from_scored_and_calibration_images(dataset, pruner):
    scorer = Scorer(
        dataset, ScoringConfig(images=100, selection_images=60, recalibrate=True, recalibration_images=40)
    )
    assert len(scorer.selection_index) == 60 and len(scorer.spare_index) == 40
    parts = [set(scorer.index), set(scorer.spare_index), set(scorer.selection_index)]
    assert set.union(*parts) == set(range(200)) and sum(map(len, parts)) == 200
    labels = dataset.split("search").labels[scorer.selection_index]
    assert scorer.sets["selection"][1].tolist() == labels.tolist()
    assert 0.0 <= scorer.evaluate(pruner.model, on="selection") <= 100.0
    # Too few images left for calibration: the message names both options.
    with pytest.raises(ValueError, match="--selection-images"):
        Scorer(
            dataset, ScoringConfig(images=100, selection_images=90, recalibrate=True, recalibration_images=40)
        )


def test_calibration_images_without_spare_cover_every_class():
    # Stored class by class, like every split: the first 40 images would all be class 0.
    images = np.repeat(np.arange(10, dtype=np.uint8), 20)[:, None, None, None] * np.ones(
        (1, 2, 2, 3), np.uint8
    )
    search = ImageArrays(images, np.repeat(np.arange(10), 20))
    data = Dataset(
        name="sorted", classes=list("abcdefghij"), splits={"search": search}, mean=(0,) * 3, std=(1,) * 3
    )
    drawn = calibration_images(data, 40, seed=7)
    classes = set((drawn[:, 0, 0, 0] * 255).round().int().tolist())
    assert len(drawn) == 40 and len(classes) >= 8
    assert torch.equal(drawn, calibration_images(data, 40, seed=7))  # seeded


@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("target", [0.9, 0.5, 0.3])
def test_uniform_meets_target_with_least_pruning(pruner, metric, target):
    policy = uniform_policy(pruner, target, metric=metric, model="resnet20")
    n = len(pruner.units)
    values = list(policy.sparsities.values())
    assert len(values) == n and len(set(values)) == 1
    exact = solve_uniform(pruner, target, metric)[0]
    assert 0.0 < exact < 0.95 and values[0] == pytest.approx(exact, abs=1e-6)  # stored rounded
    kept = pruner.kept_for([exact] * n)
    assert policy.kept == dict(zip(pruner.unit_names, kept, strict=True))
    achieved = kept_ratio(pruner, kept, metric)
    assert achieved <= target
    label = {"flops": "flops_ratio", "params": "params_ratio"}[metric]
    assert policy.ratios()[label] == pytest.approx(achieved)
    # the smallest such sparsity: a slightly smaller one keeps more channels and misses the target
    assert ratio(pruner, [exact - EPS] * n, metric) > target
    assert policy.metrics == {"baseline": "uniform"} and policy.model == "resnet20"


def test_uniform_target_one_prunes_nothing(pruner):
    policy = uniform_policy(pruner, 1.0)
    assert policy.kept == {u.name: u.channels for u in pruner.units}
    assert policy.ratios() == {"flops_ratio": 1.0, "params_ratio": 1.0}


def test_unreachable_target_raises(pruner, scorer):
    with pytest.raises(TargetError, match=r"unreachable") as info:
        uniform_policy(pruner, 0.001)
    assert "0.001" in str(info.value)
    with pytest.raises(TargetError, match="unreachable"):
        sensitivity_policy(pruner, scorer, 0.001, levels=(0.5, 0.9))
    with pytest.raises(TargetError, match="unreachable"):
        random_search_policy(pruner, scorer, 0.001, trials=2)
    pruner.reset()


@pytest.mark.parametrize("target", [0.0, -0.5, 1.01, 2.0])
def test_target_outside_unit_interval_raises(pruner, scorer, target):
    with pytest.raises(TargetError, match=r"\(0, 1\]"):
        uniform_policy(pruner, target)
    with pytest.raises(TargetError, match=r"\(0, 1\]"):
        sensitivity_policy(pruner, scorer, target)
    with pytest.raises(TargetError, match=r"\(0, 1\]"):
        random_search_policy(pruner, scorer, target, trials=1)


def test_unknown_metric_raises(pruner):
    with pytest.raises(TargetError, match="latency"):
        uniform_policy(pruner, 0.5, metric="latency")


def test_uniform_records_accuracy_with_a_scorer(pruner, scorer):
    policy = uniform_policy(pruner, 0.5, scorer=scorer)
    assert 0.0 <= policy.metrics["accuracy"] <= 100.0
    assert policy.ratios()["flops_ratio"] <= 0.5


def test_sensitivity_policy_meets_target(pruner, scorer):
    dense = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    policy = sensitivity_policy(pruner, scorer, 0.5, levels=(0.2, 0.4, 0.6, 0.8), model="resnet20")
    assert list(policy.sparsities) == pruner.unit_names
    assert set(policy.sparsities.values()) <= {0.0, 0.2, 0.4, 0.6, 0.8}
    assert ratio(pruner, policy.sparsities.values()) <= 0.5
    assert policy.ratios()["flops_ratio"] <= 0.5
    assert policy.metrics["baseline"] == "sensitivity"
    assert 0.0 <= policy.metrics["accuracy"] <= 100.0 and "threshold" in policy.metrics
    assert all(torch.equal(v, dense[k]) for k, v in pruner.model.state_dict().items()), "left dense"


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_random_search_policy_meets_target(pruner, scorer, metric):
    policy = random_search_policy(pruner, scorer, 0.5, metric=metric, trials=4, seed=1, model="resnet20")
    values = np.array(list(policy.sparsities.values()))
    assert values.min() >= 0.0 and values.max() <= 0.8 + 1e-6
    kept = [policy.kept[name] for name in pruner.unit_names]
    assert kept_ratio(pruner, kept, metric) <= 0.5
    assert policy.ratios()[f"{metric}_ratio"] <= 0.5
    assert policy.metrics["baseline"] == "random" and policy.metrics["trials"] == 4
    assert 0.0 <= policy.metrics["accuracy"] <= 100.0
    again = random_search_policy(pruner, scorer, 0.5, metric=metric, trials=4, seed=1)
    assert again.sparsities == policy.sparsities, "seeded"


def test_fit_to_target_shifts_all_units(pruner):
    raw = np.linspace(0.0, 0.6, len(pruner.units))
    fitted = np.array(fit_to_target(pruner, raw, 0.4))
    assert ratio(pruner, fitted.tolist()) <= 0.4
    inner = (fitted > 0) & (fitted < 0.8)
    offsets = fitted[inner] - raw[inner]
    assert np.allclose(offsets, offsets[0]), "one common offset"


def test_stored_sparsities_reproduce_kept(pruner, scorer):
    for policy in (
        uniform_policy(pruner, 0.3),
        uniform_policy(pruner, 0.3, metric="params"),
        random_search_policy(pruner, scorer, 0.5, metric="params", trials=4, seed=1),
    ):
        assert pruner.kept_for(list(policy.sparsities.values())) == list(policy.kept.values())


def test_baselines_work_through_the_search_backend(pruner, scorer):
    """A backend gives the same policies as its pruner and scorer; its model name is recorded."""
    backend = ChannelBackend(pruner, scorer, model_name="resnet20")
    same = uniform_policy(pruner, 0.5, scorer=scorer, model="resnet20")
    assert uniform_policy(backend, 0.5, scorer=scorer).to_json() == same.to_json()
    bare = ChannelBackend(pruner)  # costs and policies only; the scorer and name given win
    assert uniform_policy(bare, 0.5, scorer=scorer, model="resnet20").to_json() == same.to_json()
    assert uniform_policy(backend, 0.5).metrics == {"baseline": "uniform"}  # no scorer given: not scored
    random = random_search_policy(backend, None, 0.5, trials=2, seed=1)  # the backend's scorer
    same = random_search_policy(pruner, scorer, 0.5, trials=2, seed=1, model="resnet20")
    assert random.to_json() == same.to_json() and random.model == "resnet20"
    with pytest.raises(ValueError, match="scorer"):
        random_search_policy(pruner, None, 0.5, trials=1)
    pruner.reset()
