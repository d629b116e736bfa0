"""Model zoo: registry, sizes, user models by import path, checkpoint loading and its errors."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import thop
import torch
from torch import nn

from amc.models import (
    MODELS,
    CheckpointError,
    ModelError,
    create_model,
    load_checkpoint,
    shipped_checkpoint,
)

# (parameters, MACs) of each registry model at width 1 for one 3x32x32 image, measured with
# thop.profile (ultralytics-thop 2.2). ResNet-20 matches the paper's 0.27 M parameters and
# ~41 M MACs (plus 2.6 K parameters for the option-B shortcuts).
EXPECTED_SIZE = {
    "resnet20": (272_474, 41_620_160),
    "resnet32": (466_906, 70_390_464),
    "resnet56": (855_770, 127_931_072),
    "resnet110": (1_730_714, 257_397_440),
    "plain20": (269_722, 41_308_864),
    "vgg16": (14_724_042, 314_307_584),
    "mobilenet_v1": (3_217_226, 48_006_144),
    "mobilenet_v2": (2_236_682, 94_557_952),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_expected_sizes_cover_the_registry():
    assert set(EXPECTED_SIZE) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_runs_forward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    assert not model.training, "create_model returns the model in eval mode"
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_and_mac_counts(name):
    params, macs = EXPECTED_SIZE[name]
    model = create_model(name, num_classes=10)
    measured_macs, measured_params = thop.profile(model, inputs=(torch.zeros(1, 3, 32, 32),), verbose=False)
    assert measured_params == pytest.approx(params, rel=0.02)
    assert measured_macs == pytest.approx(macs, rel=0.02)
    assert n_params(model) == pytest.approx(params, rel=0.02)


def test_resnet20_has_the_papers_size():
    model = create_model("resnet20")
    macs, params = thop.profile(model, inputs=(torch.zeros(1, 3, 32, 32),), verbose=False)
    assert params / 1e6 == pytest.approx(0.27, abs=0.01)
    assert macs / 1e6 == pytest.approx(41, rel=0.03)


@pytest.mark.parametrize("name", list(MODELS))
def test_width_multiplier_shrinks_parameters(name):
    full, half, quarter = (n_params(create_model(name, width=w)) for w in (1.0, 0.5, 0.25))
    assert quarter < half < full


def test_in_channels_and_num_classes():
    model = create_model("resnet20", num_classes=3, in_channels=1, width=0.25)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelError) as err:
        create_model("nope")
    message = str(err.value)
    assert "nope" in message
    for name in MODELS:
        assert name in message


def test_resnet_depth_must_be_6n_plus_2():
    from amc.models.resnet import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


# --- user models by import path ---------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A tiny user module ``amc_test_usernet`` importable from tmp_path."""
    (tmp_path / "amc_test_usernet.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            CALLS = []

            def build(num_classes, width):
                CALLS.append((num_classes, width))
                hidden = max(1, round(8 * width))
                layers = [nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.Linear(hidden, num_classes)]
                return nn.Sequential(*layers)

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "amc_test_usernet", raising=False)
    return "amc_test_usernet"


def test_user_model_by_import_path(user_module):
    import sys

    model = create_model(f"{user_module}:build", num_classes=4, width=0.5)
    assert sys.modules[user_module].CALLS == [(4, 0.5)]
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("amc_no_such_module_xyz:build", "cannot import"),
        ("amc_test_usernet:missing", "no callable"),
        ("amc_test_usernet:NOT_CALLABLE", "no callable"),
    ],
)
def test_bad_user_model_path_raises_model_error(user_module, spec, fragment):
    with pytest.raises(ModelError, match=fragment):
        create_model(spec)


# --- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", width=0.25)
    # Non-trivial BatchNorm statistics, so the round trip covers the buffers too.
    for m in source.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet20.pt"
    torch.save(source.state_dict(), path)

    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    fresh = create_model("resnet20", width=0.25)
    torch.manual_seed(1)
    loaded = create_model("resnet20", width=0.25, checkpoint=path)
    with torch.no_grad():
        expected = source(x)
        assert not torch.allclose(fresh(x), expected), "a different initialisation must differ"
        assert torch.equal(loaded(x), expected)
    assert not loaded.training


def test_width_defaults_to_the_manifest_beside_the_checkpoint(tmp_path):
    path = tmp_path / "narrow.pt"
    torch.save(create_model("resnet20", width=0.25).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"model": "resnet20", "width": 0.25}))
    assert create_model("resnet20", checkpoint=path).conv1.out_channels == 4
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="wrong model, width"):
        create_model("resnet20", checkpoint=path)  # no manifest: width 1.0


def test_training_checkpoint_with_model_key_loads(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", width=0.25)
    path = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "epoch": 3, "history": []}, path)
    loaded = load_checkpoint(create_model("resnet20", width=0.25), path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def first_mismatch(model: nn.Module, state: dict) -> str:
    """The first tensor of ``model`` that ``state`` lacks or shapes differently, else the first extra one."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state or state[key].shape != tensor.shape:
            return key
    return next(k for k in state if k not in expected)


@pytest.mark.parametrize(
    "saved, target",
    [
        (("resnet20", 10, 0.5), ("resnet20", 10, 0.25)),  # other width: shape of conv1.weight
        (("resnet20", 10, 0.25), ("vgg16", 10, 0.25)),  # other model: tensors missing
        (("resnet32", 10, 0.25), ("resnet20", 10, 0.25)),  # deeper model: unexpected tensors
        (("resnet20", 100, 0.25), ("resnet20", 10, 0.25)),  # other number of classes: fc
        (("resnet20", 10, 0.25), ("plain20", 10, 0.25)),  # plain has no shortcut convolutions
    ],
    ids=["width", "model", "deeper", "classes", "plain"],
)
def test_mismatched_checkpoint_names_first_tensor(tmp_path, saved, target):
    name, classes, width = saved
    state = create_model(name, num_classes=classes, width=width).state_dict()
    path = tmp_path / "other.pt"
    torch.save(state, path)
    model = create_model(target[0], num_classes=target[1], width=target[2])
    tensor = first_mismatch(model, state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    assert f"'{tensor}'" in str(err.value)
    assert str(path) in str(err.value)


def test_mismatch_message_for_width(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"'conv1\.weight' has shape \(16, 3, 3, 3\)"):
        create_model("resnet20", width=0.5, checkpoint=path)


def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"checkpoint .*corrupt\.pt is not a PyTorch file"):
        create_model("resnet20", checkpoint=path)


def test_truncated_checkpoint_raises_checkpoint_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(create_model("resnet20", width=0.25).state_dict(), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"checkpoint .*model\.pt is damaged or truncated"):
        create_model("resnet20", width=0.25, checkpoint=path)


def test_checkpoint_with_code_is_refused(tmp_path):
    """A pickle that would call os.system is refused by the weights-only loader, never run."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled objects other than tensors"):
        create_model("resnet20", checkpoint=path)
    assert not marker.exists()


def test_checkpoint_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        create_model("resnet20", checkpoint=path)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("resnet20", checkpoint=path)


def test_missing_shipped_checkpoint_lists_what_is_shipped():
    with pytest.raises(CheckpointError, match="no shipped checkpoint for 'no-such-model'; shipped: "):
        shipped_checkpoint("no-such-model")


def test_an_explicit_split_seed_wins_over_the_manifest_with_a_warning(caplog):
    from amc.loading import _split_seed
    from amc.models import resolve_checkpoint

    path, manifest = resolve_checkpoint("resnet20", "shipped")
    assert path is not None and "split_seed" in manifest
    assert resolve_checkpoint("resnet20", "none") == (None, {})
    trained = manifest["split_seed"]
    assert _split_seed(None, manifest) == trained and _split_seed(None, {}) == 0
    with caplog.at_level("WARNING"):
        assert _split_seed(trained + 1, manifest) == trained + 1
    assert "differs from the checkpoint's" in caplog.text
