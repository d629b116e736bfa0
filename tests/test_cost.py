import json

import pytest
import torch
from torch import nn

from amc.cost import (
    LatencyStats,
    LatencyTable,
    cache_key,
    cache_path,
    count_thop,
    device_key,
    layer_costs,
    layer_widths,
    measure_latency,
    predicted_vs_measured,
    total_macs,
    total_params,
)
from amc.models import MODELS, create_model

FAST = {"repeats": 2, "warmup": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 20, 3, padding=1, bias=False),
        nn.BatchNorm2d(20),
        nn.ReLU(),
        nn.Conv2d(20, 12, 3, stride=2, padding=1),
        nn.ReLU(),
    ).eval()


def _depthwise() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


@pytest.mark.parametrize("width", [1.0, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_analytic_equals_thop_on_zoo(name, width):
    model = create_model(name, width=width)
    macs, params = count_thop(model)
    costs = layer_costs(model)
    assert total_macs(costs) == macs
    assert total_params(model) == params
    assert sum(c.params for c in costs) == params  # every parameter sits in a counted layer


def test_resnet20_numbers():
    model = create_model("resnet20")
    macs, params = count_thop(model)
    assert params == 272_474  # ~0.27 M, option-B shortcuts add ~2.6 K over the paper
    assert macs == 41_620_160  # ~41 M
    costs = layer_costs(model)
    assert total_macs(costs) == macs
    assert [c.name for c in costs][:3] == ["conv1", "bn1", "layer1.0.conv1"]  # execution order
    assert costs[-1].name == "fc"
    assert costs[-2].type == "AdaptiveAvgPool2d"


def test_hand_computed_conv_linear_bn_pool():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    costs = layer_costs(model, (2, 3, 32, 32))
    conv, bn, grouped, pool, fc = costs
    assert (conv.in_hw, conv.out_hw, conv.stride, conv.kernel) == ((32, 32), (16, 16), (2, 2), (3, 3))
    assert conv.macs == 2 * 16 * 16 * 8 * 3 * 3 * 3  # N * H * W * C_out * C_in * kh * kw, bias free
    assert conv.params == 8 * 3 * 3 * 3 + 8
    assert bn.macs == 4 * 2 * 8 * 16 * 16 and bn.params == 16  # affine BN: 4 per element, 2 * C params
    assert grouped.macs == 2 * 16 * 16 * 8 * (8 // 4) * 9 and grouped.groups == 4
    assert pool.macs == 2 * 8 * 16 * 16 + 2 * 8  # an add per input, a divide per output
    assert fc.macs == 2 * 8 * 5 and fc.params == 8 * 5 + 5
    assert total_macs(costs) == count_thop(model, (2, 3, 32, 32))[0]


def test_avgpool_matches_thop():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(3, 2, padding=1), nn.AdaptiveAvgPool2d((3, 2)))
    assert total_macs(layer_costs(model, (1, 3, 17, 13))) == count_thop(model, (1, 3, 17, 13))[0]


def test_thop_leaves_the_model_clean():
    model = create_model("resnet20")
    keys = list(model.state_dict())
    model.train()
    count_thop(model)
    layer_costs(model)
    assert list(model.state_dict()) == keys
    assert not any(hasattr(m, "total_ops") or hasattr(m, "total_params") for m in model.modules())
    assert model.training and all(m.training for m in model.modules())  # modes restored


def test_measure_latency_stats():
    model = _tiny().train()
    stats = measure_latency(model, (1, 3, 16, 16), warmup=1, repeats=5, threads=1)
    assert isinstance(stats, LatencyStats) and stats.repeats == 5
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert model.training  # eval only during the measurement
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (1, 3, 16, 16), repeats=0)


def test_latency_table_grid_and_full_prediction():
    table = LatencyTable.build(_tiny(), (1, 3, 16, 16), round_to=8, **FAST)
    assert list(table.layers) == ["0", "3"]
    first, second = table.layers.values()
    assert sorted(first.out_grid) == [8, 16, 20] and sorted(first.in_grid) == [3]
    assert sorted(second.out_grid) == [8, 12] and sorted(second.in_grid) == [8, 16, 20]
    assert second.in_hw == (16, 16) and second.stride == (2, 2)
    full = sum(layer.full_ms for layer in table.layers.values())
    assert table.predict() == pytest.approx(full)
    assert table.predict({"0": (3, 20), "3": (20, 12)}) == pytest.approx(full)
    # separable: t_out(out) * t_in(in) / t_full
    expected = second.out_grid[8] * second.in_grid[16] / second.full_ms + first.out_grid[16]
    assert table.predict({"0": (3, 16), "3": (16, 8)}) == pytest.approx(expected)
    with pytest.raises(KeyError, match="nope"):
        table.predict({"nope": (1, 1)})
    with pytest.raises(ValueError, match="outside"):
        table.predict({"3": (21, 12)})


def test_latency_table_depthwise_and_linear():
    table = LatencyTable.build(_depthwise(), (1, 3, 8, 8), round_to=8, **FAST)
    dw, fc = table.layers["1"], table.layers["4"]
    assert dw.depthwise and sorted(dw.out_grid) == [8, 16] and dw.in_grid == {}
    assert table.predict({"1": (8, 8)}) == pytest.approx(table.full_ms - dw.full_ms + dw.out_grid[8])
    with pytest.raises(ValueError, match="depthwise"):
        table.predict({"1": (8, 16)})
    assert fc.type == "Linear" and sorted(fc.out_grid) == [8, 10] and sorted(fc.in_grid) == [8, 16]
    comparison = predicted_vs_measured(_depthwise(), table, (1, 3, 8, 8), **FAST)
    assert comparison.predicted_ms == pytest.approx(table.full_ms) and comparison.measured_ms > 0


def test_kept_channels_of_a_pruned_model():
    pruned = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3))
    assert layer_widths(pruned) == {"0": (3, 8), "2": (8, 12)}
    with pytest.raises(ValueError, match="'1'"):
        layer_widths(pruned, ["1"])


def test_latency_table_json_round_trip(tmp_path):
    table = LatencyTable.build(_depthwise(), (1, 3, 8, 8), round_to=8, **FAST)
    table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(tmp_path / "t.json")
    assert loaded == table
    assert loaded.predict({"1": (8, 8), "4": (8, 10)}) == table.predict({"1": (8, 8), "4": (8, 10)})


@pytest.mark.parametrize("text", ["{not json", '{"key": {}}', '{"key": {}, "layers": [{"name": 1}]}'])
def test_corrupt_table_names_the_file(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.json.*delete it"):
        LatencyTable.load(path)


def test_cache_key_and_reuse(tmp_path, monkeypatch):
    model = _tiny()
    key = cache_key(model, "tiny", (1, 3, 16, 16), 8, "cpu")
    assert key["device"] == device_key("cpu") and key["device"].startswith("cpu|threads=1|")
    assert key["model"] == "tiny" and key["input_size"] == [1, 3, 16, 16]
    path = cache_path(tmp_path, key)
    assert "tiny" in path.name and "1x3x16x16" in path.name
    wider = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.Conv2d(24, 12, 3))
    assert cache_key(wider, "tiny", (1, 3, 16, 16), 8, "cpu") != key  # architecture is part of the key

    table = LatencyTable.cached(model, "tiny", (1, 3, 16, 16), 8, "cpu", tmp_path, **FAST)
    assert path.is_file() and table.key == key

    def no_build(*args, **kwargs):
        raise AssertionError("should come from the cache")

    monkeypatch.setattr(LatencyTable, "build", no_build)
    assert LatencyTable.cached(model, "tiny", (1, 3, 16, 16), 8, "cpu", tmp_path) == table
    monkeypatch.undo()

    data = json.loads(path.read_text())
    data["key"]["device"] = "cuda:0|elsewhere"
    path.write_text(json.dumps(data))
    rebuilt = LatencyTable.cached(model, "tiny", (1, 3, 16, 16), 8, "cpu", tmp_path, **FAST)
    assert rebuilt.key == key and json.loads(path.read_text())["key"] == key

    path.write_text("garbage")
    with pytest.raises(ValueError, match="delete it"):
        LatencyTable.cached(model, "tiny", (1, 3, 16, 16), 8, "cpu", tmp_path)


def _narrow(first: int, second: int) -> nn.Module:
    """``_tiny`` with fewer channels, module names unchanged (a physically pruned copy)."""
    return nn.Sequential(
        nn.Conv2d(3, first, 3, padding=1, bias=False),
        nn.BatchNorm2d(first),
        nn.ReLU(),
        nn.Conv2d(first, second, 3, stride=2, padding=1),
        nn.ReLU(),
    ).eval()


def test_calibration_fits_whole_model_latency_and_is_cached(tmp_path, monkeypatch):
    dense, copies = _tiny(), [_narrow(16, 12), _narrow(8, 8)]
    table = LatencyTable.build(dense, (1, 3, 16, 16), round_to=4, **FAST)

    def measured(a, b, *args, **kwargs):  # whole models at 1.5 x the table plus 0.2 ms of other work
        return tuple(1.5 * table.predict(layer_widths(m, table.layers)) + 0.2 for m in (a, b))

    monkeypatch.setattr("amc.cost.latency.measured_pair", measured)
    assert table.model_ms() == table.predict()  # uncalibrated: the bare sum
    table.calibrate(dense, copies, (1, 3, 16, 16))
    assert table.calibration == pytest.approx((1.5, 0.2))
    kept = layer_widths(copies[0], table.layers)
    assert table.model_ms(kept) == pytest.approx(1.5 * table.predict(kept) + 0.2)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").calibration == pytest.approx((1.5, 0.2))
    with pytest.raises(ValueError, match="narrower"):
        table.calibrate(dense, [_tiny()])

    built = []
    cached = LatencyTable.cached(
        dense, "tiny", (1, 3, 16, 16), 4, "cpu", tmp_path, pruned=lambda: built.append(1) or copies, **FAST
    )
    again = LatencyTable.cached(
        dense, "tiny", (1, 3, 16, 16), 4, "cpu", tmp_path, pruned=lambda: built.append(1) or copies
    )
    assert built == [1] and again.calibration == cached.calibration is not None
