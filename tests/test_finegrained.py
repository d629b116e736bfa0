"""Fine-grained magnitude pruning: masks, scopes, N:M, squash, storage size and sparse export."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amc.pruning.finegrained import (
    FineGrainedConfig,
    MagnitudePruner,
    export_sparse,
    load_sparse,
    prunable_weights,
    sparsity,
    stored_size,
)

NAMES = ["0", "2", "4", "8"]  # stem conv, depthwise conv, pointwise conv, linear head


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0: 8 x 27 (27 % 4 == 3: a dense tail under 2:4)
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # 2: depthwise, 8 x 9
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 16, 1),  # 4: 16 x 8
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 12),  # 8: 12 x 16
    ).eval()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def prepared(config: FineGrainedConfig | None = None) -> tuple[nn.Module, MagnitudePruner]:
    model = tiny_cnn()
    pruner = MagnitudePruner(config)
    pruner.prepare(model)
    return model, pruner


def dense_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.parametrizations.weight.original.detach().clone() for n, m in prunable_weights(model).items()
    }


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


# --- layer discovery ---------------------------------------------------------------------------


def test_prunable_weights_order_and_exclusion() -> None:
    model = tiny_cnn()
    assert list(prunable_weights(model)) == NAMES
    assert list(prunable_weights(model, exclude_first_last=True)) == ["2", "4"]
    assert MagnitudePruner(FineGrainedConfig(exclude_first_last=True)).prepare(model) is model
    assert list(prunable_weights(model)) == NAMES  # names survive the parametrization


# --- local, global, N:M ------------------------------------------------------------------------


def test_local_exact_count_per_layer() -> None:
    model, pruner = prepared()
    fractions = {"0": 0.3, "2": 0.5, "4": 0.77, "8": 0.0}
    pruner.step(fractions)
    report = pruner.sparsity()
    for name, module in prunable_weights(model).items():
        expected = round(fractions[name] * module.weight.numel())
        assert zeros(module.weight) == expected
        assert report.layers[name] == expected / module.weight.numel()
        # the kept weights are the largest ones of the layer
        kept, dropped = module.weight != 0, module.weight == 0
        dense = module.parametrizations.weight.original.detach().abs()
        if dropped.any():
            assert dense[dropped].max() <= dense[kept].min()


@settings(max_examples=20, deadline=None)
@given(fraction=st.floats(0.0, 0.999), seed=st.integers(0, 3))
def test_local_exact_count_property(fraction: float, seed: int) -> None:
    model = mlp(seed)
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.step({"0": fraction})
    assert zeros(model[0].weight) == round(fraction * model[0].weight.numel())
    assert zeros(model[2].weight) == 0


def test_step_replaces_not_compounds_and_leaves_other_layers() -> None:
    model, pruner = prepared()
    pruner.step({"4": 0.5, "8": 0.5})
    pruner.step({"4": 0.25})
    assert zeros(model[4].weight) == 32
    assert zeros(model[8].weight) == 96


def test_global_threshold_keeps_largest_across_layers() -> None:
    model, pruner = prepared()
    pruner.step(0.6, scope="global")
    layers = prunable_weights(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert pruner.sparsity().zeros == round(0.6 * total)
    dense = torch.cat([m.parametrizations.weight.original.detach().abs().flatten() for m in layers.values()])
    masked = torch.cat([m.weight.detach().flatten() for m in layers.values()])
    assert dense[masked == 0].max() <= dense[masked != 0].min()


def test_global_mapping_uses_weight_count_weighted_mean() -> None:
    model, pruner = prepared()
    pruner.step({"4": 0.2, "8": 0.8}, scope="global")  # 128 and 192 weights
    target = (0.2 * 128 + 0.8 * 192) / 320
    assert zeros(model[4].weight) + zeros(model[8].weight) == round(target * 320)
    assert zeros(model[0].weight) == zeros(model[2].weight) == 0


def test_global_scale_dominates() -> None:
    model, pruner = prepared()
    with torch.no_grad():
        model[4].parametrizations.weight.original.mul_(1e-3)  # a layer of tiny weights goes first
    pruner.step({"4": 0.3, "8": 0.3}, scope="global")
    assert zeros(model[4].weight) == 96 and zeros(model[8].weight) == 0


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_every_group(n: int, m: int) -> None:
    model, pruner = prepared()
    pruner.step(1 - n / m, nm=(n, m))
    for module in prunable_weights(model).values():
        rows = module.weight.detach().reshape(module.weight.shape[0], -1)
        full = rows.shape[1] - rows.shape[1] % m
        groups = rows[:, :full].reshape(rows.shape[0], -1, m)
        assert ((groups != 0).sum(dim=2) == n).all()
        assert (rows[:, full:] != 0).all()  # the incomplete tail stays dense
        # within each group the kept weights are the largest
        dense = module.parametrizations.weight.original.detach().abs().reshape(rows.shape[0], -1)
        dense = dense[:, :full].reshape(groups.shape)
        kept = groups != 0
        assert (dense.masked_fill(kept, 0).amax(2) <= dense.masked_fill(~kept, math.inf).amin(2)).all()


def test_nm_zero_fraction_leaves_layer_dense() -> None:
    model, pruner = prepared()
    pruner.step({"4": 0.5, "8": 0.0}, nm=(2, 4))
    assert zeros(model[4].weight) == 64 and zeros(model[8].weight) == 0


# --- lifecycle ---------------------------------------------------------------------------------


def test_masked_output_equals_squashed_output(x: torch.Tensor) -> None:
    model, pruner = prepared()
    pruner.step({"0": 0.4, "2": 0.3, "4": 0.7, "8": 0.5})
    masked_out = model(x)
    plain = pruner.squash(copy.deepcopy(model))
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    assert set(plain.state_dict()) == set(tiny_cnn().state_dict())
    torch.testing.assert_close(plain(x), masked_out, rtol=1e-6, atol=0)
    assert sparsity(plain).layers == pruner.sparsity().layers


def test_reset_restores_dense_output_exactly(x: torch.Tensor) -> None:
    reference = tiny_cnn()(x)
    model, pruner = prepared()
    assert torch.equal(model(x), reference)
    pruner.step(0.9, scope="global")
    assert not torch.equal(model(x), reference)
    pruner.reset()
    assert torch.equal(model(x), reference)
    assert pruner.sparsity().zeros == 0


def test_step_never_touches_dense_weights() -> None:
    model, pruner = prepared()
    before = dense_weights(model)
    pruner.step({"0": 0.5, "8": 0.9})
    pruner.step(0.7, scope="global")
    pruner.step(0.5, nm=(2, 4))
    for name, tensor in dense_weights(model).items():
        assert torch.equal(tensor, before[name])


def test_squash_copy_leaves_original_masked(x: torch.Tensor) -> None:
    model, pruner = prepared()
    pruner.step(0.5)
    twin = copy.deepcopy(model)
    pruner.squash(twin)  # deepcopy shares torch's generated class; squash must not break the original
    pruner.step(0.7)
    assert pruner.sparsity().overall == pytest.approx(0.7, abs=0.01)
    pruner.reset()
    torch.testing.assert_close(model(x), tiny_cnn()(x), rtol=0, atol=0)
    other = copy.deepcopy(model)
    pruner.squash()  # and squashing the original leaves a masked copy working
    assert other(x).shape == (2, 12) and hasattr(other[0], "parametrizations")


def test_squash_prepared_model_folds_in_place() -> None:
    model, pruner = prepared()
    weight = model[8].parametrizations.weight.original
    pruner.step({"8": 0.5})
    assert pruner.squash() is model
    assert model[8].weight is weight  # the same Parameter, now holding zeros
    assert zeros(model[8].weight) == 96 and type(model[8]) is nn.Linear
    assert pruner.layers == []


# --- storage -----------------------------------------------------------------------------------


def test_stored_size_by_hand() -> None:
    layer = nn.Linear(4, 3)  # weight 3 x 4 with 3 nonzeros, bias 3 floats
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 1], layer.weight[2, 0], layer.weight[2, 3] = 1.0, -2.0, 3.0
    report = stored_size(nn.Sequential(layer))
    assert report["layers"]["0"] == {"numel": 12, "nonzero": 3, "dense": 48, "csr": 40, "bitmask": 14}
    # dense 12*4; CSR 3*4 values + 3*4 columns + (3+1)*4 row pointers; bitmask ceil(12/8) + 3*4
    assert report["other"] == 12
    assert report["total"] == {"dense": 60, "csr": 52, "bitmask": 26, "best": 52}
    assert report["ratio"]["bitmask"] == pytest.approx(60 / 26)


def test_stored_size_of_masked_equals_squashed() -> None:
    model, pruner = prepared()
    pruner.step(0.8)
    masked = stored_size(model)
    assert masked == stored_size(pruner.squash(copy.deepcopy(model)))
    bn = 8 * 4 * 4 + 8  # BatchNorm weight, bias, running mean/var (float32) + int64 counter
    biases = (8 + 16 + 12) * 4
    assert masked["other"] == bn + biases


def test_export_load_round_trip_and_smaller_file(tmp_path) -> None:
    model = mlp()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.step(0.9)
    path = tmp_path / "sparse.pt"
    report = export_sparse(model, path)  # masked model exported as if squashed
    plain = pruner.squash()
    loaded = load_sparse(path)
    expected = plain.state_dict()
    assert list(loaded) == list(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
    raw = torch.load(path, weights_only=True)
    assert all(isinstance(raw["tensors"][f"{i}.weight"], dict) for i in (0, 2))  # CSR chosen
    dense_path = tmp_path / "dense.pt"
    torch.save(expected, dense_path)
    assert report["file_bytes"] == path.stat().st_size < 0.3 * dense_path.stat().st_size
    mlp(seed=5).load_state_dict(loaded)


def test_export_keeps_dense_layers_dense(tmp_path) -> None:
    model, pruner = prepared()
    pruner.step({"4": 0.9})
    export_sparse(model, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)["tensors"]
    assert isinstance(raw["4.weight"], dict) and isinstance(raw["8.weight"], torch.Tensor)


def test_load_sparse_rejects_other_files(tmp_path) -> None:
    torch.save({"a": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an amc-sparse file"):
        load_sparse(tmp_path / "plain.pt")
    bad = {"shape": [2, 2], "crow_indices": torch.tensor([0, 1, 5], dtype=torch.int32)}
    bad |= {"col_indices": torch.tensor([0], dtype=torch.int32), "values": torch.ones(1)}
    torch.save({"format": "amc-sparse", "version": 1, "tensors": {"w": bad}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="inconsistent CSR"):
        load_sparse(tmp_path / "bad.pt")


# --- errors ------------------------------------------------------------------------------------


def test_unknown_layer_names_it_and_lists_valid() -> None:
    _, pruner = prepared()
    with pytest.raises(ValueError, match=r"unknown layer 'nope'; valid names: 0, 2, 4, 8"):
        pruner.step({"nope": 0.5})


def test_unprepared_layer() -> None:
    _, pruner = prepared(FineGrainedConfig(exclude_first_last=True))
    with pytest.raises(ValueError, match=r"'0' was not prepared; prepared layers: 2, 4"):
        pruner.step({"0": 0.5})


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range(bad: float) -> None:
    _, pruner = prepared()
    with pytest.raises(ValueError, match=r"sparsity of '4' must be in \[0, 1\)"):
        pruner.step({"4": bad})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        pruner.step(bad, scope="global")


def test_unprunable_module_type() -> None:
    _, pruner = prepared()
    with pytest.raises(TypeError, match="module '3' is a BatchNorm2d, which cannot be pruned"):
        pruner.step({"3": 0.5})
    with pytest.raises(TypeError, match="module '1' is a ReLU"):
        MagnitudePruner(FineGrainedConfig(layers=("0", "1"))).prepare(tiny_cnn())


def test_nm_and_scope_errors() -> None:
    _, pruner = prepared()
    with pytest.raises(ValueError, match=r"2:4 pattern zeros 0\.5"):
        pruner.step(0.9, nm=(2, 4))
    with pytest.raises(ValueError, match="0 < N < M"):
        pruner.step(0.0, nm=(4, 4))
    with pytest.raises(ValueError, match="scope='local'"):
        pruner.step(0.5, scope="global", nm=(2, 4))
    with pytest.raises(ValueError, match="unknown scope 'layer'"):
        pruner.step(0.5, scope="layer")  # type: ignore[arg-type]


def test_lifecycle_errors() -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        MagnitudePruner().step(0.5)
    model, pruner = prepared()
    with pytest.raises(RuntimeError, match="already prepared"):
        pruner.prepare(model)
    with pytest.raises(ValueError, match="already parametrized"):
        MagnitudePruner().prepare(model)
