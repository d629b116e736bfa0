"""Benchmark mechanics (no timings asserted): BatchNorm folding and the speed-up record."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize
from torch import nn

from amc.benchmark import fold_batchnorm, pruning_speedup, selection_table
from amc.models import create_model


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1", "vgg16"])
def test_folding_batchnorm_keeps_outputs(name):
    torch.manual_seed(0)
    model = randomize(create_model(name, width=0.25))  # non-trivial BatchNorms to fold
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_speedup_record_has_both_forms():
    torch.manual_seed(0)
    result = pruning_speedup(create_model("resnet20", width=0.25), batch=2, repeats=5, round_to=2)
    assert result["flops_speedup"] == pytest.approx(2.0, rel=0.1)
    for prefix in ("", "deployed_"):
        assert result[prefix + "dense_ms"] > 0 and result[prefix + "pruned_ms"] > 0
        speedup = result[prefix + "dense_ms"] / result[prefix + "pruned_ms"]
        assert result[prefix + "latency_speedup"] == pytest.approx(speedup)
        assert result[prefix + "ratio"] == pytest.approx(speedup / result["flops_speedup"])


def test_selection_table_on_the_shipped_resnet20(sample_dataset):
    from amc.loading import resolve_checkpoint

    path, _ = resolve_checkpoint("resnet20", "shipped")
    table = selection_table(lambda: create_model("resnet20", checkpoint=path), sample_dataset, 0.5)
    assert set(table) == {"dense"} | {
        f"reconstruct={a} recalibrate={b}" for a in (False, True) for b in (False, True)
    }
    both, neither = table["reconstruct=True recalibrate=True"], table["reconstruct=False recalibrate=False"]
    assert neither < both < table["dense"]
