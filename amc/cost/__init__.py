"""Cost models of a network: MACs and parameters (analytic and thop), and measured latency.

>>> costs = layer_costs(model)                      # per-layer MACs, matching thop exactly
>>> total_macs(costs), total_params(model)
>>> measure_latency(model).median_ms
>>> table = LatencyTable.cached(model, "resnet20")  # per-layer latency at pruned widths
>>> table.predict({"layer1.0.conv1": (16, 8)})
"""

from amc.cost.flops import LayerCost, count_thop, layer_costs, total_macs, total_params
from amc.cost.latency import (
    LatencyComparison,
    LatencyStats,
    LatencyTable,
    LayerLatency,
    cache_key,
    cache_path,
    default_cache_dir,
    device_key,
    layer_widths,
    measure_latency,
    measured_pair,
    predicted_vs_measured,
    time_calls,
)

__all__ = [
    "LatencyComparison",
    "LatencyStats",
    "LatencyTable",
    "LayerCost",
    "LayerLatency",
    "cache_key",
    "cache_path",
    "count_thop",
    "default_cache_dir",
    "device_key",
    "layer_costs",
    "layer_widths",
    "measure_latency",
    "measured_pair",
    "predicted_vs_measured",
    "time_calls",
    "total_macs",
    "total_params",
]
