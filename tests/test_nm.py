"""N:M semi-structured sparsity: masks, the nm environment, policies, compressed size and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from torch import nn

from amc.backends import NMBackend
from amc.cli import main
from amc.data import Dataset, ImageArrays
from amc.models import create_model
from amc.policy import Policy, PolicyError, apply_policy
from amc.pruning.finegrained import (
    FineGrainedConfig,
    MagnitudePruner,
    apply_nm,
    export_nm,
    load_nm,
    nm_prunable,
    nm_stored_size,
    parse_nm,
    prunable_weights,
    satisfies_nm,
)
from amc.scoring import Scorer, ScoringConfig

TINY = ["--model", "resnet20", "--checkpoint", "none", "--width", "0.25", "--threads", "1"]


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # rows of 27: not a multiple of 4
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),  # rows of 72
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 12),  # rows of 16
    ).eval()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def synthetic_dataset(n: int = 64, classes: int = 10) -> Dataset:
    """Random 32x32 RGB images: enough to score untrained networks quickly."""
    rng = np.random.default_rng(0)
    labels = (np.arange(n) % classes).astype(np.int64)
    split = ImageArrays(rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), labels)
    names = [f"c{i}" for i in range(classes)]
    return Dataset("synthetic", names, {"search": split, "test": split}, (0.5,) * 3, (0.25,) * 3)


@pytest.fixture(scope="module")
def backend() -> NMBackend:
    dataset = synthetic_dataset()
    torch.manual_seed(0)
    net = create_model("resnet20", dataset.num_classes, 0.25)
    scorer = Scorer(dataset, ScoringConfig(images=32, recalibrate=False))
    return NMBackend(net, scorer, (2, 4), (1, 3, 32, 32), "resnet20")


# --- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (1, 2), (4, 8)])
@pytest.mark.parametrize("make", [tiny_cnn, mlp])
def test_nm_masks_keep_at_most_n_of_every_m(make, nm):
    model = make()
    n, m = nm
    layers = [name for name, mod in prunable_weights(model).items() if nm_prunable(mod.weight, m)]
    assert layers
    pruned = apply_nm(model, layers, nm)
    dense, sparse = prunable_weights(model), prunable_weights(pruned)
    for name in layers:
        weight = sparse[name].weight
        assert satisfies_nm(weight, n, m)
        assert int((weight == 0).sum()) == round(weight.numel() * (1 - n / m))  # exactly 1 - N/M
        groups = dense[name].weight.detach().abs().reshape(weight.shape[0], -1, m)
        kept = weight.detach().abs().reshape(weight.shape[0], -1, m)
        # the kept ones are the N largest of each group
        assert torch.equal(kept.topk(n, dim=2).values.sum(2), groups.topk(n, dim=2).values.sum(2))
    for name in set(dense) - set(layers):
        assert torch.equal(sparse[name].weight, dense[name].weight)
    assert all(not satisfies_nm(dense[name].weight, n, m) for name in layers)  # dense weights fail


def test_satisfies_nm_catches_one_extra_nonzero():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0]])
    assert satisfies_nm(weight, 2, 4)
    weight[0, 1] = 5.0
    assert not satisfies_nm(weight, 2, 4)
    assert not satisfies_nm(torch.zeros(2, 6), 2, 4)  # rows of 6 do not split into groups of 4


def test_apply_nm_refuses_a_layer_whose_rows_do_not_split():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        apply_nm(tiny_cnn(), ["0"], (2, 4))


@pytest.mark.parametrize("text", ["3:2", "abc", "2:4:8", "0:4", "2:2", "2.5:4", ""])
def test_bad_nm_is_refused_in_one_line(text):
    with pytest.raises(ValueError, match="N:M pattern") as info:
        parse_nm(text)
    assert "\n" not in str(info.value) and "2:4" in str(info.value)
    with pytest.raises(ValueError, match="N:M pattern"):
        EnvConfig(mode="nm", nm=text)


def test_good_nm_forms():
    assert parse_nm("2:4") == parse_nm([2, 4]) == parse_nm((2, 4)) == (2, 4)
    assert EnvConfig(mode="nm", nm=[1, 4]).nm == (1, 4)


@pytest.mark.parametrize("text", ["3:2", "abc"])
def test_bad_nm_on_the_command_line(text, capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", *TINY, "--mode", "nm", "--nm", text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--nm" in err and "N:M pattern" in err and "2:4" in err


def test_nm_mode_refuses_a_latency_budget():
    with pytest.raises(ValueError, match="params"):
        EnvConfig(mode="nm", metric="latency", target=0.5)


# --- environment ---------------------------------------------------------------------------------


def test_backend_marks_the_layers_that_can_take_the_pattern(backend):
    modules = dict(backend.model.named_modules())
    for name, ok in zip(backend.layers, backend.prunable, strict=True):
        assert ok == (modules[name].weight[0].numel() % 4 == 0)
    assert backend.prunable.any() and not backend.prunable.all()  # the 3-channel stem (27) cannot


def test_episodes_under_a_params_budget(backend):
    env = PruningEnv(backend=backend, mode="nm", metric="params", target=0.75)
    rng = np.random.default_rng(0)
    for _ in range(4):
        env.reset(seed=0)
        for _ in range(env.n):
            _, _, done, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
        assert done
        assert info["params_ratio"] <= 0.75 + 1e-9
        sparsities = np.array(info["sparsities"])
        assert set(sparsities[backend.prunable]) <= {0.0, 0.5}
        assert (sparsities[~backend.prunable] == 0).all()
        policy = Policy(**json.loads(info["policy_json"]))
        assert policy.mode == "nm" and policy.nm == [2, 4] and policy.nm_layers
        masks = backend.masker.masks  # the masks the episode was scored with
        for name in backend.layers:
            assert bool(masks[name].all()) == (name not in policy.nm_layers)
            if name in policy.nm_layers:
                assert satisfies_nm(masks[name].float(), 2, 4)


def test_actions_decide_per_layer(backend):
    env = PruningEnv(backend=backend, mode="nm", metric="params", target=None, reward="acc_params")
    for sign, expected in ((1.0, backend.prunable * 0.5), (-1.0, np.zeros(env.n))):
        env.reset(seed=0)
        for _ in range(env.n):
            *_, info = env.step(np.array([sign], dtype=np.float32))
        assert np.array_equal(info["sparsities"], expected)
        assert info["applied_action"][0] == (1.0 if sign > 0 and backend.prunable[-1] else -1.0)
    env.reset(seed=0)
    for _ in range(env.n):
        *_, info = env.step(np.array([1.0], dtype=np.float32))
    params = backend.total_params - 0.5 * backend.weights[backend.prunable].sum()
    assert info["params_ratio"] == pytest.approx(params / backend.total_params)
    assert info["params_ratio"] < 1.0


# --- policies ------------------------------------------------------------------------------------


def test_policy_round_trip_and_apply(backend, tmp_path):
    decisions = [0.5 if i % 2 else 0.0 for i in range(len(backend.layers))]
    policy = backend.policy(decisions, accuracy=10.0)
    assert policy.mode == "nm" and policy.nm == [2, 4]
    chosen = [n for n, d, ok in zip(backend.layers, decisions, backend.prunable, strict=True) if d and ok]
    assert policy.nm_layers == chosen and chosen
    loaded = Policy.load(policy.save(tmp_path / "p.json"))
    assert loaded == policy
    torch.manual_seed(0)
    dense = create_model("resnet20", 10, 0.25)
    pruned = apply_policy(dense, loaded)
    before, after = prunable_weights(dense), prunable_weights(pruned)
    for name in backend.layers:
        if name in chosen:
            assert satisfies_nm(after[name].weight, 2, 4)
            assert float((after[name].weight == 0).float().mean()) == 0.5
        else:
            assert torch.equal(after[name].weight, before[name].weight)
    assert loaded.ratios()["params_ratio"] < 1.0


def test_bad_nm_policies_are_refused():
    with pytest.raises(PolicyError, match=r"0 or 0\.5"):
        Policy(sparsities={"fc": 0.3}, mode="nm", nm=[2, 4])
    with pytest.raises(PolicyError, match="nm: \\[N, M\\]"):
        Policy(sparsities={"fc": 0.5}, mode="nm")
    with pytest.raises(PolicyError, match="does not fit"):
        apply_policy(tiny_cnn(), Policy(sparsities={"0": 0.5}, mode="nm", nm=[2, 4]))


# --- compressed size -----------------------------------------------------------------------------


def test_compressed_size_counts_values_and_two_bit_indices():
    model = apply_nm(mlp(), ["0", "2"], (2, 4))
    size = nm_stored_size(model, (2, 4))
    first = 4 * 4096 + 4096 * 2 // 8  # 128 x 64 weights: half kept, float32 + 2 bits each
    second = 4 * 320 + 320 * 2 // 8  # 64 x 10 weights
    biases = 4 * (64 + 10)
    assert size["layers"] == {"0": first, "2": second}
    assert size["compressed"] == ["0", "2"]
    assert size["total"] == first + second + biases == 19064
    assert size["dense"] == 4 * (8192 + 640) + biases
    dense_size = nm_stored_size(mlp(), (2, 4))  # a dense model stores nothing compressed
    assert dense_size["compressed"] == [] and dense_size["total"] == dense_size["dense"]


def test_export_reports_the_compressed_size(tmp_path):
    pytest.importorskip("onnxruntime")
    from amc.export import export_onnx

    model = apply_nm(mlp(), ["0"], (2, 4))
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(0))
    report = export_onnx(model, x, tmp_path / "nm.onnx", nm=(2, 4))
    assert report.nm_bytes == (4 * 4096 + 1024) + 4 * 640 + 4 * 74
    assert report.nm_bytes < report.stored["dense"]
    assert export_onnx(model, x, tmp_path / "plain.onnx").nm_bytes is None


# --- compressed file ------------------------------------------------------------------------------


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys and bit-identical tensors (``-0.0 != +0.0``)."""
    if list(a) != list(b):
        return False
    for key, x in a.items():
        y = b[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.is_floating_point():
            x, y = x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)
        if not torch.equal(x, y):
            return False
    return True


def nm_layers(model: nn.Module, m: int) -> list[str]:
    """The layers whose rows split into groups of ``m``, but the last: it is left dense."""
    return [name for name, mod in prunable_weights(model).items() if nm_prunable(mod.weight, m)][:-1]


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("make", [tiny_cnn, mlp])
def test_nm_file_round_trips_exactly(make, nm, tmp_path):
    n, m = nm
    model = make()
    layers = nm_layers(model, m)
    assert layers
    pruned = apply_nm(model, layers, nm)
    path = tmp_path / "model_nm.pt"
    report = export_nm(pruned, nm, path)
    assert same_bits(load_nm(path), pruned.state_dict())
    assert report["compressed"] == layers
    assert report["file_bytes"] == path.stat().st_size
    assert {k: report[k] for k in ("layers", "total", "dense")} == {
        k: v for k, v in nm_stored_size(pruned, nm).items() if k in ("layers", "total", "dense")
    }
    payload = torch.load(path, weights_only=True)  # plain tensors, ints, strings, lists and dicts
    assert payload["format"] == "amc-nm" and payload["version"] == 1 and payload["nm"] == [n, m]
    bits = (m - 1).bit_length()
    for key, entry in payload["tensors"].items():
        name = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and name in layers:
            weight = pruned.state_dict()[key]
            rows, groups = weight.shape[0], weight[0].numel() // m
            assert entry["shape"] == list(weight.shape)
            assert entry["values"].shape == (rows, groups, n) and entry["values"].dtype == torch.float32
            assert entry["indices"].dtype == torch.uint8
            assert entry["indices"].numel() == -(-rows * groups * n * bits // 8)  # ceil(log2 M) bits each
            assert "zero_signs" not in entry  # squashed zeros are +0.0: no sign bits needed
        else:  # biases, and the layers left dense
            assert isinstance(entry, torch.Tensor)
            assert torch.equal(entry, pruned.state_dict()[key])


def test_masked_model_is_written_as_if_squashed(tmp_path):
    model = tiny_cnn()
    pruner = MagnitudePruner(FineGrainedConfig(layers=("2", "6")))
    pruner.prepare(model)
    pruner.step({"2": 0.5, "6": 0.0}, nm=(2, 4))
    report = export_nm(model, (2, 4), tmp_path / "masked.pt")
    assert report["compressed"] == ["2"]
    assert same_bits(load_nm(tmp_path / "masked.pt"), pruner.squash(model).state_dict())


def test_negative_zeros_and_sparse_groups_are_exact(tmp_path):
    """``weight * mask`` leaves ``-0.0`` where negative weights were dropped; the file keeps them."""
    model = mlp()
    weight = model[0].weight.detach()
    keep = apply_nm(model, ["0"], (2, 4))[0].weight.detach() != 0
    weight.mul_(keep)  # -0.0 in the dropped places of negative weights
    weight[:3] = 0.0  # whole rows of groups with no nonzero
    weight[3, :4] = torch.tensor([0.0, -0.0, 1.5, 0.0])  # a group with one nonzero
    assert bool((torch.signbit(weight) & (weight == 0)).any())
    report = export_nm(model, (2, 4), tmp_path / "signs.pt")
    assert report["compressed"] == ["0"] and report["zero_signs"] == ["0"]
    assert same_bits(load_nm(tmp_path / "signs.pt"), model.state_dict())


def test_packed_indices_make_the_file_small(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 12))
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    for nm, limit in (((2, 4), 0.6), ((1, 4), 0.35), ((4, 8), 0.6)):
        pruned = apply_nm(model, ["0", "2", "4"], nm)
        report = export_nm(pruned, nm, tmp_path / "small.pt")
        assert report["dense"] == dense_bytes
        assert report["file_bytes"] < limit * dense_bytes
        assert report["total"] <= report["file_bytes"] < report["total"] + 4096  # only torch.save's framing
        indices = torch.load(tmp_path / "small.pt", weights_only=True)["tensors"]["0.weight"]["indices"]
        kept = 512 * 256 * nm[0] // nm[1]
        assert indices.numel() == {(2, 4): kept // 4, (1, 4): kept // 4, (4, 8): kept * 3 // 8}[nm]


def _corrupt(payload: dict, how: str) -> object:
    entry = payload["tensors"]["0.weight"]
    if how == "format":
        payload["format"] = "amc-sparse"
    elif how == "version":
        payload["version"] = 2
    elif how == "pattern":
        payload["nm"] = [4, 2]
    elif how == "no-tensors":
        del payload["tensors"]
    elif how == "indices":
        entry["indices"].zero_()  # every kept value at position 0: not increasing
    elif how == "short-values":
        entry["values"] = entry["values"][:-1]
    elif how == "index-dtype":
        entry["indices"] = entry["indices"].to(torch.int32)
    elif how == "shape":
        entry["shape"] = [64, 126]
    elif how == "signs":
        entry["zero_signs"] = torch.zeros(3, dtype=torch.uint8)
    elif how == "entry":
        payload["tensors"]["0.weight"] = [1, 2]
    elif how == "not-a-dict":
        return [payload]
    return payload


@pytest.mark.parametrize(
    "how",
    [
        "format",
        "version",
        "pattern",
        "no-tensors",
        "indices",
        "short-values",
        "index-dtype",
        "shape",
        "signs",
        "entry",
        "not-a-dict",
    ],
)
def test_malformed_nm_file_is_refused_in_one_line(how, tmp_path):
    path = tmp_path / "bad.pt"
    export_nm(apply_nm(mlp(), ["0"], (2, 4)), (2, 4), path)
    torch.save(_corrupt(torch.load(path, weights_only=True), how), path)
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        load_nm(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a torch file", "truncated"])
def test_damaged_nm_file_is_refused_in_one_line(content, tmp_path):
    path = tmp_path / "bad.pt"
    export_nm(apply_nm(mlp(), ["0"], (2, 4)), (2, 4), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        load_nm(path)
    assert "\n" not in str(info.value)


# --- command line --------------------------------------------------------------------------------


def test_search_and_apply_in_nm_mode(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["search", *TINY, "--mode", "nm", "--nm", "2:4", "--target", "params=0.8", "--agent", "random"]
    argv += ["--episodes", "2", "--search-images", "32", "--selection-images", "0", "--finalists", "0"]
    assert main([*argv, "--runs-dir", str(runs), "--name", "run", "--no-progress", "--no-summary"]) == 0
    run = runs / "run"
    assert "nm:\n  - 2\n  - 4" in (run / "config.yaml").read_text()
    policy = Policy.load(run / "best_policy.json")
    assert policy.mode == "nm" and policy.nm == [2, 4] and policy.nm_layers
    assert policy.ratios()["params_ratio"] <= 0.8 + 1e-9
    out = tmp_path / "applied"
    args = ["apply", *TINY, "--policy", str(run / "best_policy.json"), "--out", str(out)]
    assert main([*args, "--no-recalibrate"]) == 0
    printed = capsys.readouterr().out
    assert "2:4 compressed" in printed and "pruned_nm.pt" in printed
    state = torch.load(out / "pruned.pt", weights_only=True)
    for name in policy.nm_layers:
        assert satisfies_nm(state[f"{name}.weight"], 2, 4)
    assert same_bits(load_nm(out / "pruned_nm.pt"), state)  # the compressed file holds the same model
    assert (out / "pruned_nm.pt").stat().st_size < (out / "pruned.pt").stat().st_size
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params_ratio"] == pytest.approx(policy.ratios()["params_ratio"], rel=1e-3)


def test_apply_fine_tunes_an_nm_policy_and_keeps_its_pattern(tmp_path, capsys):
    """A real fine-tune through ``amc apply`` moves the kept weights but keeps the N:M zeros."""
    from test_train import write_png_folder

    write_png_folder(tmp_path / "data", per_class=4)
    dense = create_model("resnet20", 3, 0.25)
    layers = [n for n, m in prunable_weights(dense).items() if nm_prunable(m.weight, 4) and n != "fc"]
    policy = Policy(sparsities=dict.fromkeys(layers, 0.5), mode="nm", nm=[2, 4], model="resnet20")
    path = policy.save(tmp_path / "p.json")
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    args = ["apply", *TINY, "--checkpoint", str(tmp_path / "dense.pt"), "--policy", str(path)]
    args += ["--dataset", "folder", "--data", str(tmp_path / "data"), "--search-size", "3"]
    args += ["--no-recalibrate"]
    states = []
    for epochs in (0, 1):
        out = tmp_path / f"o{epochs}"
        assert main([*args, "--out", str(out), "--finetune-epochs", str(epochs)]) == 0
        states.append(torch.load(out / "pruned.pt", weights_only=True))
    assert "2:4 compressed" in capsys.readouterr().out
    for name in layers:
        before, after = states[0][f"{name}.weight"], states[1][f"{name}.weight"]
        assert satisfies_nm(after, 2, 4)
        assert torch.equal(after != 0, before != 0)  # the same pattern ...
        assert not torch.equal(after, before)  # ... with fine-tuned values


def test_an_nm_policy_is_reached_in_one_step(tmp_path):
    path = Path(Policy(sparsities={"fc": 0.5}, mode="nm", nm=[2, 4]).save(tmp_path / "p.json"))
    args = ["apply", *TINY, "--policy", str(path), "--out", str(tmp_path / "o")]
    assert main([*args, "--finetune-epochs", "2", "--steps", "2", "--dataset", "sample"]) != 0
