"""ONNX export: BatchNorm folding, onnxruntime against PyTorch, fine-grained models, the CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import randomize
from test_train import write_png_folder

import amc
from amc.baselines import uniform_policy
from amc.cli import main
from amc.export import ONNX_INSTALL_HINT, export_onnx, fold_batchnorm, require_onnx, run_onnx
from amc.models import create_model
from amc.plots import MissingExtraError
from amc.policy import apply_policy
from amc.pruning import MagnitudePruner
from amc.pruning.channel import ChannelPruner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(create_model("resnet20", num_classes=4, width=0.25), seed)


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def channel_pruned() -> torch.nn.Module:
    model = tiny()
    policy = uniform_policy(ChannelPruner(model), 0.5, model="resnet20")
    return apply_policy(model, policy, (1, 3, 32, 32)).eval()


def test_channel_pruned_model_matches_pytorch(tmp_path):
    model, x = channel_pruned(), images()
    report = amc.export_onnx(model, x, tmp_path / "pruned.onnx")  # the lazy top-level export
    assert report.path.exists() and report.file_bytes == report.path.stat().st_size
    assert report.max_abs_diff <= 1e-4
    graph = onnx.load(str(report.path)).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)  # folded
    with torch.no_grad():
        expected = model(images(3, seed=5)).numpy()
    got = run_onnx(report.path, images(3, seed=5).numpy())  # another batch size: the axis is dynamic
    assert abs(got - expected).max() <= 1e-4
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left over


def test_fine_grained_masked_model_exports_its_zeros(tmp_path):
    model = tiny()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.step(0.7)
    x = images()
    with torch.no_grad():
        expected = model.eval()(x)
    report = export_onnx(model, x, tmp_path / "sparse.onnx")
    assert report.max_abs_diff <= 1e-4
    assert report.sparsity == pytest.approx(0.7, abs=0.01)
    assert report.stored["best"] < report.stored["dense"]
    assert torch.equal(model(x), expected)  # the masked model itself is untouched (still masked)
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(report.path)).graph.initializer if t.dims]
    convs = [w for w in weights if w.ndim == 4 and w.size > 100]
    zeros = sum(int((w == 0).sum()) for w in convs) / sum(w.size for w in convs)
    assert zeros > 0.6  # folding BatchNorm scales channels, keeping the pruned weights at zero


def test_fold_batchnorm_keeps_the_output_and_drops_the_norms():
    model, x = channel_pruned(), images()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_a_large_difference_is_refused(tmp_path, monkeypatch):
    import amc.export

    real = amc.export.run_onnx
    monkeypatch.setattr(amc.export, "run_onnx", lambda path, x: real(path, x) + 1e-2)
    with pytest.raises(ValueError, match="differs from PyTorch's by"):
        export_onnx(tiny(), images(), tmp_path / "model.onnx")


def test_missing_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError) as info:
        require_onnx()
    message = str(info.value)
    assert ONNX_INSTALL_HINT in message and "\n" not in message
    assert ONNX_INSTALL_HINT == "pip install 'amc-pruner[onnx]'"


def test_cli_missing_onnx_fails_before_pruning(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    policy = uniform_policy(ChannelPruner(create_model("resnet20")), 0.5, model="resnet20")
    out = tmp_path / "applied"
    argv = ["apply", "--policy", str(policy.save(tmp_path / "p.json")), "--out", str(out), "--onnx"]
    assert main([*argv, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amc: error: ") and "amc-pruner[onnx]" in err
    assert not out.exists()


@pytest.mark.parametrize("mode", ["channel", "finegrained"])
def test_cli_apply_onnx_then_evaluate_onnx(tmp_path, capsys, mode):
    data = tmp_path / "images"
    write_png_folder(data, per_class=4)
    common = ["--dataset", "folder", "--data", str(data), "--search-size", "3", "--threads", "1"]
    dense = create_model("resnet20", num_classes=3, width=0.25)
    checkpoint = tmp_path / "dense.pt"
    torch.save(dense.state_dict(), checkpoint)
    if mode == "channel":
        policy = uniform_policy(ChannelPruner(dense), 0.5, model="resnet20")
    else:
        names = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d)]
        policy = amc.Policy(sparsities=dict.fromkeys(names, 0.6), mode="finegrained", model="resnet20")
    out = tmp_path / "applied"
    model_args = ["--checkpoint", str(checkpoint), "--width", "0.25"]
    argv = ["apply", "--policy", str(policy.save(tmp_path / "p.json")), "--out", str(out), "--onnx"]
    assert main([*argv, *model_args, *common]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs PyTorch max |diff|" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    assert (out / "pruned.onnx").exists() and (out / "pruned.pt").exists()

    assert main(["evaluate", "--onnx", str(out / "pruned.onnx"), *model_args, *common]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {metrics['pruned_top1']:.2f} %" in printed  # the same accuracy as PyTorch's
    assert "onnxruntime latency" in printed and "(12 images)" in printed
