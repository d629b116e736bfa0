"""Policies: JSON round trip, validation, errors that name the file, and applying them to a model."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from conftest import randomize
from torch import nn

from amc.models import create_model
from amc.policy import Policy, PolicyError, apply_policy, model_signature
from amc.pruning.channel import ChannelPruner


def fresh_copy(name: str, width: float, source: nn.Module) -> nn.Module:
    """A new instance of the architecture holding ``source``'s weights."""
    model = create_model(name, width=width)
    model.load_state_dict(source.state_dict())
    return model.eval()


def full_policy() -> Policy:
    return Policy(
        sparsities={"conv1": 0.25, "layer1.0.conv1": 0.5, "layer2.0.conv2": 0.0},
        mode="channel",
        criterion="l2",
        reconstruct=True,
        round_to=4,
        model="resnet20",
        signature="0123456789ab",
        kept={"conv1": 12, "layer1.0.conv1": 8, "layer2.0.conv2": 32},
        cost_before={"macs": 41_000_000, "params": 270_000},
        cost_after={"macs": 20_500_000, "params": 189_000},
        metrics={"accuracy": 87.5, "reward": -0.125, "baseline": "uniform"},
    )


# ---------------------------------------------------------------------------------------------
# the file format


def test_json_round_trip_keeps_every_field(tmp_path):
    policy = full_policy()
    path = policy.save(tmp_path / "nested" / "dir" / "policy.json")
    assert path == tmp_path / "nested" / "dir" / "policy.json"
    assert not list(path.parent.glob("*.tmp")), "the atomic write leaves no temporary file"
    loaded = Policy.load(path)
    assert loaded == policy
    data = json.loads(path.read_text())  # plain JSON with every dataclass field
    assert set(data) == {
        "sparsities", "mode", "criterion", "reconstruct", "round_to", "model", "signature",
        "input_shape", "kept", "cost_before", "cost_after", "metrics", "nm",
    }  # fmt: skip
    assert data["kept"] == policy.kept and data["cost_after"] == policy.cost_after
    # saving again over an existing file replaces it
    policy.metrics["accuracy"] = 90.0
    assert Policy.load(policy.save(path)).metrics["accuracy"] == 90.0


def test_defaults_round_trip(tmp_path):
    policy = Policy(sparsities={"a": 0.1})
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy
    assert policy.mode == "channel" and policy.criterion == "l1" and policy.round_to == 1


@pytest.mark.parametrize("mode", ["structured", "", "CHANNEL"])
def test_invalid_mode_is_rejected(mode):
    with pytest.raises(PolicyError, match="unknown mode"):
        Policy(sparsities={"a": 0.5}, mode=mode)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, math.nan, "x", None])
def test_invalid_sparsity_is_rejected(value):
    with pytest.raises(PolicyError, match=r"\[0, 1\)"):
        Policy(sparsities={"conv1": 0.5, "layer1.0.conv1": value})


def test_sparsities_must_be_a_mapping():
    with pytest.raises(PolicyError, match="sparsities"):
        Policy(sparsities=[0.1, 0.2])


def test_policy_error_is_a_value_error():
    assert issubclass(PolicyError, ValueError)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(PolicyError, match=re.escape(str(path))) as info:
        Policy.load(path)
    assert "does not exist" in str(info.value)
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path)  # a folder is not a policy file


@pytest.mark.parametrize(
    "content",
    [
        "",
        '{"sparsities": {"conv1": 0.5',  # truncated
        "not json at all",
        b"\xff\xfe\x00\x81binary",  # not even UTF-8
        "[0.1, 0.2]",  # JSON, but not an object
        "null",
        '{"sparsities": {"conv1": 0.5}, "colour": "blue"}',  # unknown field
        '{"mode": "channel"}',  # missing sparsities
        '{"sparsities": {"conv1": 1.5}}',  # invalid value
        '{"sparsities": {"conv1": "half"}}',
        '{"sparsities": [0.5]}',
        '{"sparsities": {"conv1": 0.5}, "mode": "magic"}',
    ],
    ids=[
        "empty",
        "truncated",
        "text",
        "binary",
        "list",
        "null",
        "unknown-field",
        "no-sparsities",
        "out-of-range",
        "string-value",
        "list-sparsities",
        "bad-mode",
    ],
)
def test_corrupt_file_is_named(tmp_path, content):
    path = tmp_path / "corrupt_policy.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(PolicyError, match=re.escape(str(path))):
        Policy.load(path)


def test_ratios():
    policy = full_policy()
    ratios = policy.ratios()
    assert ratios == pytest.approx({"flops_ratio": 0.5, "params_ratio": 0.7})
    assert Policy(sparsities={}).ratios() == {}
    only_macs = Policy(sparsities={}, cost_before={"macs": 200}, cost_after={"macs": 50})
    assert only_macs.ratios() == {"flops_ratio": 0.25}
    zero = Policy(sparsities={}, cost_before={"macs": 0, "params": 10}, cost_after={"params": 10})
    assert zero.ratios() == {"params_ratio": 1.0}


# ---------------------------------------------------------------------------------------------
# from a pruner, and applying


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, ChannelPruner]:
    torch.manual_seed(0)
    model = randomize(create_model("resnet20", width=0.5))
    return model, ChannelPruner(model, round_to=2, criterion="l2")


def test_from_kept_records_the_pruner(resnet):
    _, pruner = resnet
    sparsities = [0.123456789] * len(pruner.units)
    kept = pruner.kept_for(sparsities)
    policy = Policy.from_kept(pruner, kept, sparsities, model="resnet20", metrics={"accuracy": 12.5})
    assert list(policy.sparsities) == pruner.unit_names
    assert set(policy.sparsities.values()) == {0.123456789}  # unrounded: they must reproduce kept
    assert policy.kept == dict(zip(pruner.unit_names, kept, strict=True))
    assert (policy.criterion, policy.round_to, policy.reconstruct) == ("l2", 2, False)
    assert policy.signature == model_signature(pruner) and len(policy.signature) == 12
    macs0, params0 = pruner.cost.cost()
    macs, params = pruner.cost.cost(kept)
    assert policy.cost_before == {"macs": macs0, "params": params0}
    assert policy.cost_after == {"macs": macs, "params": params}
    assert policy.ratios() == pytest.approx({"flops_ratio": macs / macs0, "params_ratio": params / params0})
    assert 0 < policy.ratios()["flops_ratio"] < 1
    assert policy.model == "resnet20" and policy.metrics == {"accuracy": 12.5}


@pytest.mark.parametrize(
    ("name", "width", "use_kept"),
    [("resnet20", 0.5, True), ("resnet20", 0.5, False), ("mobilenet_v2", 0.5, True)],
    ids=["resnet20-kept", "resnet20-sparsities-only", "mobilenet_v2-kept"],
)
def test_apply_policy_on_fresh_instance_matches_export(tmp_path, name, width, use_kept):
    torch.manual_seed(1)
    original = randomize(create_model(name, width=width), seed=1)
    pruner = ChannelPruner(original, round_to=4)
    sparsities = [random.Random(name).uniform(0.0, 0.8) for _ in pruner.units]
    kept = pruner.kept_for(sparsities)
    policy = Policy.from_kept(pruner, kept, sparsities, model=name)
    if not use_kept:
        policy.kept = {}
    exported = pruner.export(kept)

    fresh = fresh_copy(name, width, original)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    applied = apply_policy(fresh, Policy.load(policy.save(tmp_path / "policy.json")))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = exported(x), applied(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [p.shape for p in applied.parameters()] == [p.shape for p in exported.parameters()]
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items()), "model must not change"


def test_apply_policy_with_reconstruction_needs_calibration(resnet):
    model, _ = resnet
    calibration = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pruner = ChannelPruner(model, calibration=calibration)
    kept = pruner.kept_for([0.5] * len(pruner.units))
    policy = Policy.from_kept(pruner, kept, [0.5] * len(pruner.units))
    assert policy.reconstruct
    exported = pruner.export(kept)
    fresh = fresh_copy("resnet20", 0.5, model)
    with pytest.raises(PolicyError, match="calibration"):
        apply_policy(fresh, policy)
    applied = apply_policy(fresh, policy, calibration=calibration)
    with torch.no_grad():
        assert torch.allclose(applied(calibration), exported(calibration), rtol=1e-5, atol=1e-5)


def test_signature_identifies_the_architecture():
    sig = lambda name, width=0.5, shape=(1, 3, 32, 32): model_signature(  # noqa: E731
        ChannelPruner(create_model(name, width=width), shape)
    )
    reference = sig("resnet20")
    assert sig("resnet20") == reference  # a fresh, differently initialised instance
    assert sig("plain20") != reference
    assert sig("resnet20", width=0.25) != reference
    assert sig("resnet20", shape=(1, 3, 24, 24)) != reference


@pytest.mark.parametrize(
    ("name", "width", "match"), [("plain20", 1.0, "differing units"), ("resnet20", 0.5, "other widths")]
)
def test_policy_for_another_architecture_is_rejected(name, width, match):
    pruner = ChannelPruner(create_model("resnet20"))
    policy = Policy.from_kept(pruner, pruner.kept_for([0.5] * len(pruner.units)), [0.5] * len(pruner.units))
    policy.model = "resnet20"
    with pytest.raises(PolicyError, match="resnet20") as info:
        apply_policy(create_model(name, width=width), policy)
    assert policy.signature in str(info.value) and match in str(info.value)


def test_finegrained_policy_zeroes_weights():
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5)
    policy = Policy(sparsities={"layer1.0.conv1": 0.5, "fc": 0.25}, mode="finegrained")
    pruned = apply_policy(model, policy)
    conv = dict(pruned.named_modules())["layer1.0.conv1"].weight
    assert (conv == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (model.layer1[0].conv1.weight != 0).all(), "the model itself is not changed"
