"""Measured latency: whole-model timing and a per-layer lookup table for pruned widths.

:func:`measure_latency` times a model's forward pass. :class:`LatencyTable` times every
Conv2d and Linear layer of a model in isolation at a grid of kept channel counts, so the
latency of any pruned configuration can be predicted without building it.

A 2-D grid over ``(kept_in, kept_out)`` per layer would take too long to measure, so each
layer gets two 1-D grids in ``round_to`` steps (plus the full width): ``t_out(k)`` over kept
output channels at full input, and ``t_in(k)`` over kept input channels at full output. The
prediction is *separable*::

    latency(in, out) ~= t_full * (t_out(out) / t_full) * (t_in(in) / t_full)

exact at the full width and along either grid, approximate elsewhere (it assumes the
relative saving of pruning inputs does not depend on how many outputs are kept). A depthwise
convolution (``groups == in == out``) keeps inputs and outputs together, so it has only the
coupled grid ``t_out(c)``, measured with ``in == out == groups == c``. Between grid points
the time is linearly interpolated; below the first grid point the first point's time is used.

The prediction sums isolated Conv2d/Linear times only: BatchNorm, activations, pooling,
residual additions and Python dispatch between modules are not in it, so it underestimates
the measured model latency. Use it to compare configurations, and
:func:`predicted_vs_measured` to see how far it is from the real thing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from amc.cost._common import InputSize, eval_mode, example_input, model_dtype, on_device
from amc.cost.flops import layer_costs
from amc.files import write_atomic

log = logging.getLogger(__name__)

__all__ = [
    "LatencyComparison",
    "LatencyStats",
    "LatencyTable",
    "LayerLatency",
    "cache_key",
    "cache_path",
    "default_cache_dir",
    "device_key",
    "layer_widths",
    "measure_latency",
    "measured_pair",
    "predicted_vs_measured",
    "time_calls",
]

FORMAT_VERSION = 1

Timing = tuple[int, int]  # (warmup, repeats) of one grid point


@dataclass
class LatencyStats:
    """Wall-clock statistics of repeated forward passes.

    Attributes:
        median_ms: Median latency in milliseconds, the number to report.
        p10_ms: 10th percentile in milliseconds.
        p90_ms: 90th percentile in milliseconds.
        repeats: Number of timed passes.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


@dataclass
class LatencyComparison:
    """Predicted and measured latency of one model.

    Attributes:
        predicted_ms: Sum of the table's per-layer predictions.
        measured_ms: Median measured latency of the whole model.
    """

    predicted_ms: float
    measured_ms: float

    @property
    def ratio(self) -> float:
        """``predicted_ms / measured_ms`` (below 1: the table misses non-conv work)."""
        return self.predicted_ms / self.measured_ms if self.measured_ms > 0 else math.nan


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer brackets the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def _num_threads(threads: int | None):
    """Use ``threads`` intra-op threads for the block (unchanged when ``None``)."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> LatencyStats:
    """Latency of ``fn`` (ms): ``repeats`` timed calls after ``warmup`` untimed ones, on ``device``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return LatencyStats(float(median), float(p10), float(p90), repeats)


def measured_pair(
    dense: nn.Module,
    pruned: nn.Module,
    input_size: InputSize = (1, 3, 32, 32),
    device: str | torch.device = "cpu",
    blocks: int = 9,
    repeats: int = 20,
) -> tuple[float, float]:
    """Median latencies (ms) of ``dense`` and ``pruned``, measured in alternating blocks.

    Alternating spreads drifts in machine load over both models alike, so their ratio is
    steadier than that of two separate measurements.
    """
    dense_ms, pruned_ms = [], []
    for _ in range(blocks):
        dense_ms.append(measure_latency(dense, input_size, device, warmup=3, repeats=repeats).median_ms)
        pruned_ms.append(measure_latency(pruned, input_size, device, warmup=3, repeats=repeats).median_ms)
    return float(np.median(dense_ms)), float(np.median(pruned_ms))


def measure_latency(
    model: nn.Module,
    input_size: InputSize = (1, 3, 32, 32),
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
) -> LatencyStats:
    """Latency of ``model``'s forward pass, in eval mode under ``torch.inference_mode``.

    Args:
        model: The network; a model on another device is timed as a copy moved to ``device``.
        input_size: Shape of the input batch, ``(N, C, H, W)``.
        device: Device to time on.
        warmup: Untimed passes first (allocator, caches, lazy initialisation).
        repeats: Timed passes.
        threads: Intra-op CPU threads for the measurement; ``None`` keeps the current setting.

    Returns:
        Median, 10th and 90th percentile in milliseconds; report the median.
    """
    dev = torch.device(device)
    target = on_device(model, dev)
    x = example_input(input_size, dev, model_dtype(target))
    with _num_threads(threads), eval_mode(target), torch.inference_mode():
        return time_calls(lambda: target(x), dev, warmup, repeats)


@dataclass
class LayerLatency:
    """Measured latency grids of one Conv2d or Linear layer.

    Attributes:
        name: Qualified module name.
        type: ``Conv2d`` or ``Linear``.
        in_channels: Full input channels (``in_features``).
        out_channels: Full output channels (``out_features``).
        kernel: Kernel size (``(1, 1)`` for a linear layer).
        stride: Stride.
        padding: Padding, as the module holds it (a pair or a string such as ``"same"``).
        dilation: Dilation.
        groups: Groups at full width.
        bias: Whether the layer has a bias.
        padding_mode: Convolution padding mode.
        in_hw: Input height and width (``(1, 1)`` for a linear layer).
        batch: Batch size (leading elements per feature vector for a linear layer).
        full_ms: Median latency at full width.
        out_grid: Kept output channels -> median ms at full input (depthwise: in == out == kept).
        in_grid: Kept input channels -> median ms at full output (empty for depthwise).
    """

    name: str
    type: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    padding_mode: str
    in_hw: tuple[int, int]
    batch: int
    full_ms: float = 0.0
    out_grid: dict[int, float] = field(default_factory=dict)
    in_grid: dict[int, float] = field(default_factory=dict)

    @property
    def depthwise(self) -> bool:
        """A depthwise convolution, whose inputs, outputs and groups are pruned together."""
        return self.type == "Conv2d" and 1 < self.groups == self.in_channels == self.out_channels

    def predict(self, kept_in: int, kept_out: int) -> float:
        """Predicted latency in ms with ``kept_in`` input and ``kept_out`` output channels."""
        if not (1 <= kept_in <= self.in_channels and 1 <= kept_out <= self.out_channels):
            raise ValueError(
                f"layer {self.name}: kept channels ({kept_in}, {kept_out}) outside "
                f"1..({self.in_channels}, {self.out_channels})"
            )
        if self.depthwise:
            if kept_in != kept_out:
                raise ValueError(f"depthwise layer {self.name} keeps in == out, got ({kept_in}, {kept_out})")
            return _interpolate(self.out_grid, kept_out)
        if self.full_ms <= 0:
            return 0.0
        return _interpolate(self.out_grid, kept_out) * _interpolate(self.in_grid, kept_in) / self.full_ms


def _interpolate(grid: Mapping[int, float], kept: int) -> float:
    """Piecewise-linear lookup in a grid, clamped to its first and last points."""
    keys = sorted(grid)
    return float(np.interp(kept, keys, [grid[k] for k in keys]))


def _grid(full: int, step: int) -> list[int]:
    """Multiples of ``step`` below ``full``, then ``full`` itself."""
    return [*range(step, full, step), full]


def _spec(name: str, m: nn.Module, x_hw: tuple[int, int], batch: int) -> LayerLatency:
    """The geometry of a Conv2d or Linear module, without measurements."""
    if isinstance(m, nn.Linear):
        return LayerLatency(
            name, "Linear", m.in_features, m.out_features, (1, 1), (1, 1), (0, 0), (1, 1),
            1, m.bias is not None, "zeros", (1, 1), batch,
        )  # fmt: skip
    padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    return LayerLatency(
        name, "Conv2d", m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), padding,
        tuple(m.dilation), m.groups, m.bias is not None, m.padding_mode, x_hw, batch,
    )  # fmt: skip


def _isolated(
    spec: LayerLatency, kept_in: int, kept_out: int, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, Tensor]:
    """A fresh layer of ``spec``'s geometry at the kept widths, and an input batch for it."""
    if spec.type == "Linear":
        layer: nn.Module = nn.Linear(kept_in, kept_out, spec.bias, device=device, dtype=dtype)
        return layer, example_input((spec.batch, kept_in), device, dtype)
    groups = kept_in if spec.depthwise else spec.groups
    layer = nn.Conv2d(
        kept_in, kept_out, spec.kernel, spec.stride, spec.padding, spec.dilation, groups, spec.bias,
        spec.padding_mode, device=device, dtype=dtype,
    )  # fmt: skip
    return layer, example_input((spec.batch, kept_in, *spec.in_hw), device, dtype)


def _time_layer(
    spec: LayerLatency, kept: tuple[int, int], device: torch.device, dtype: torch.dtype, timing: Timing
) -> float:
    """Median ms of one isolated layer at ``kept = (in, out)``; ``timing = (warmup, repeats)``."""
    layer, x = _isolated(spec, *kept, device, dtype)
    with torch.inference_mode():
        return time_calls(lambda: layer(x), device, *timing).median_ms


def _measure_grids(
    spec: LayerLatency, round_to: int, device: torch.device, dtype: torch.dtype, timing: Timing
) -> None:
    """Fill ``spec``'s full-width time and its 1-D grids (the full width is measured once)."""

    def measure(kept_in: int, kept_out: int) -> float:
        return _time_layer(spec, (kept_in, kept_out), device, dtype, timing)

    full_in, full_out = spec.in_channels, spec.out_channels
    spec.full_ms = measure(full_in, full_out)
    if spec.depthwise:
        spec.out_grid = {c: measure(c, c) for c in _grid(full_out, round_to)[:-1]}
        spec.out_grid[full_out] = spec.full_ms
        return
    step = math.lcm(round_to, spec.groups)  # grouped convs keep whole groups
    spec.out_grid = {k: measure(full_in, k) for k in _grid(full_out, step)[:-1]}
    spec.in_grid = {k: measure(k, full_out) for k in _grid(full_in, step)[:-1]}
    spec.out_grid[full_out] = spec.in_grid[full_in] = spec.full_ms


def _measured_layers(
    model: nn.Module, input_size: InputSize, layers: Iterable[str] | None
) -> list[LayerLatency]:
    """Geometry of the model's Conv2d/Linear layers (or the named ones), in execution order."""
    modules = dict(model.named_modules())
    wanted = None if layers is None else set(layers)
    measurable = {n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)}
    unknown = sorted((wanted or set()) - measurable)
    if unknown:
        raise ValueError(f"not Conv2d/Linear layers of the model: {', '.join(unknown)}")
    specs: dict[str, LayerLatency] = {}
    for cost in layer_costs(model, input_size):
        if not isinstance(modules[cost.name], nn.Conv2d | nn.Linear):
            continue
        if cost.name in specs or (wanted is not None and cost.name not in wanted):
            continue
        m = modules[cost.name]
        batch = input_size[0] if isinstance(m, nn.Conv2d) else cost.macs // (m.in_features * m.out_features)
        specs[cost.name] = _spec(cost.name, m, cost.in_hw, batch)
    return list(specs.values())


def _cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_key(device: str | torch.device = "cpu") -> str:
    """Identity of a measurement setup: device, its name, CPU threads, machine and processor.

    Example: ``cpu|threads=2|x86_64|x86_64|AMD EPYC 7B13``.
    """
    dev = torch.device(device)
    parts = [str(dev)]
    if dev.type == "cuda":
        parts.append(torch.cuda.get_device_name(dev))
    processor = platform.processor() or "-"
    parts += [f"threads={torch.get_num_threads()}", platform.machine(), processor, _cpu_name()]
    return "|".join(parts)


def _architecture(model: nn.Module) -> str:
    """A short digest of the geometry of every Conv2d/Linear layer (catches width multipliers)."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            rows.append([name, m.in_channels, m.out_channels, *m.kernel_size, *m.stride, m.groups])
        elif isinstance(m, nn.Linear):
            rows.append([name, m.in_features, m.out_features])
    return hashlib.sha1(json.dumps(rows).encode()).hexdigest()[:16]


def cache_key(
    model: nn.Module,
    model_name: str,
    input_size: InputSize = (1, 3, 32, 32),
    round_to: int = 8,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """What a cached :class:`LatencyTable` must match to be reused.

    The device string (:func:`device_key`: device, threads, machine, processor), the model name,
    the input size, ``round_to``, the torch version and dtype, and a digest of the layer
    geometry, so that two widths of one model name never share a table.
    """
    return {
        "format": FORMAT_VERSION,
        "model": model_name,
        "input_size": [int(v) for v in input_size],
        "round_to": int(round_to),
        "device": device_key(device),
        "torch": torch.__version__,
        "dtype": str(model_dtype(model)),
        "architecture": _architecture(model),
    }


def default_cache_dir() -> Path:
    """``<amc cache>/latency``: ``$AMC_CACHE_DIR/latency`` or ``~/.cache/amc/latency``."""
    from amc.data.base import cache_dir

    return cache_dir() / "latency"


def cache_path(cache_dir: str | Path, key: Mapping[str, Any]) -> Path:
    """The file a table with ``key`` is cached in: model name, input size and a digest of the key."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key["model"]))
    size = "x".join(str(v) for v in key["input_size"])
    return Path(cache_dir) / f"latency-{name}-{size}-{digest}.json"


def _layer_from_json(row: Mapping[str, Any]) -> LayerLatency:
    """Inverse of ``asdict`` after a JSON round trip: tuples and integer grid keys restored."""
    values = dict(row)
    for name in ("kernel", "stride", "dilation", "in_hw"):
        values[name] = tuple(values[name])
    if not isinstance(values["padding"], str):
        values["padding"] = tuple(values["padding"])
    for name in ("out_grid", "in_grid"):
        values[name] = {int(k): float(v) for k, v in values[name]}
    return LayerLatency(**values)


def _layer_to_json(layer: LayerLatency) -> dict[str, Any]:
    """A JSON-ready dict of ``layer``; grids become ``[kept, ms]`` pairs (JSON keys are strings)."""
    row = asdict(layer)
    for name in ("out_grid", "in_grid"):
        row[name] = [[k, v] for k, v in sorted(row[name].items())]
    return row


@dataclass
class LatencyTable:
    """Per-layer latency lookup of one model on one device, for predicting pruned latency.

    Attributes:
        key: What the table was measured for (:func:`cache_key`); cache reuse requires equality.
        layers: Measured layers by qualified name, in execution order.
        calibration: ``(scale, offset)`` mapping the summed layer times to whole-model
            latency (:meth:`calibrate`); ``None`` until calibrated.
    """

    key: dict[str, Any]
    layers: dict[str, LayerLatency]
    calibration: tuple[float, float] | None = None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        input_size: InputSize = (1, 3, 32, 32),
        round_to: int = 8,
        device: str | torch.device = "cpu",
        repeats: int = 20,
        warmup: int = 5,
        layers: Iterable[str] | None = None,
        model_name: str = "model",
    ) -> LatencyTable:
        """Measure every Conv2d/Linear layer of ``model`` in isolation on its grids.

        Args:
            model: The network at full width; it is not modified (layers are rebuilt fresh).
            input_size: Shape of the input batch, ``(N, C, H, W)``.
            round_to: Grid step in channels; grouped convolutions step by ``lcm(round_to, groups)``.
            device: Device to measure on.
            repeats: Timed calls per grid point (the median is kept).
            warmup: Untimed calls per grid point.
            layers: Names of the layers to measure; ``None`` measures all.
            model_name: Name recorded in the key.

        Returns:
            The table.
        """
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        dev, dtype = torch.device(device), model_dtype(model)
        specs = _measured_layers(model, input_size, layers)
        start = time.perf_counter()
        for spec in specs:
            _measure_grids(spec, round_to, dev, dtype, (warmup, repeats))
        log.info("latency table of %d layers measured in %.1f s", len(specs), time.perf_counter() - start)
        key = cache_key(model, model_name, input_size, round_to, device)
        return cls(key, {s.name: s for s in specs})

    @property
    def full_ms(self) -> float:
        """Sum of the full-width layer latencies."""
        return sum(layer.full_ms for layer in self.layers.values())

    def predict(self, kept: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Predicted latency in ms: the sum over the table's layers.

        Args:
            kept: ``{layer name: (kept_in, kept_out)}``; layers not named stay at full width.

        Returns:
            The summed per-layer predictions, in milliseconds.
        """
        kept = kept or {}
        unknown = sorted(set(kept) - set(self.layers))
        if unknown:
            raise KeyError(f"layers not in the latency table: {', '.join(unknown)}")
        total = 0.0
        for name, layer in self.layers.items():
            total += layer.predict(*kept.get(name, (layer.in_channels, layer.out_channels)))
        return total

    def calibrate(
        self,
        dense: nn.Module,
        pruned: Sequence[nn.Module],
        input_size: InputSize = (1, 3, 32, 32),
        device: str | torch.device = "cpu",
    ) -> None:
        """Fit ``measured ~= scale * predicted + offset`` on the dense model and pruned copies.

        The table sums isolated Conv2d/Linear times; the whole model also spends time in
        BatchNorm, activations, additions and Python dispatch, part of it fixed per layer and
        part shrinking with the channels. Whole-model measurements of the dense model and a
        few physically pruned copies (each timed in alternating blocks with the dense one)
        fix both parts by least squares, so :meth:`model_ms` predicts the latency a user
        measures, not only the convolutions'.

        Raises:
            ValueError: No pruned copy is narrower than the dense model.
        """
        dense_predicted = self.predict(layer_widths(dense, self.layers))
        predicted, measured = [], []
        for model in pruned:
            dense_ms, pruned_ms = measured_pair(dense, model, input_size, device)
            predicted += [dense_predicted, self.predict(layer_widths(model, self.layers))]
            measured += [dense_ms, pruned_ms]
        if len(set(predicted)) < 2:
            raise ValueError("calibration needs a pruned copy narrower than the dense model")
        scale, offset = np.polyfit(predicted, measured, 1)
        self.calibration = (float(scale), float(offset))
        log.info(
            "latency calibration on %d models: scale %.3f, offset %.3f ms", len(pruned) + 1, scale, offset
        )

    def model_ms(self, kept: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Predicted whole-model latency in ms: :meth:`predict` through the calibration, if any."""
        scale, offset = self.calibration or (1.0, 0.0)
        return scale * self.predict(kept) + offset

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (atomically, through a temporary file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"key": self.key, "layers": [_layer_to_json(layer) for layer in self.layers.values()]}
        if self.calibration is not None:
            data["calibration"] = list(self.calibration)
        write_atomic(path, json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            ValueError: The file is not a valid table; the message names it and says to delete it.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            layers = [_layer_from_json(row) for row in data["layers"]]
            key = dict(data["key"])
            calibration = data.get("calibration")
            calibration = None if calibration is None else (float(calibration[0]), float(calibration[1]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"latency table {path} is corrupt ({type(exc).__name__}: {exc}); "
                "delete it and it will be measured again"
            ) from exc
        return cls(key, {layer.name: layer for layer in layers}, calibration)

    @classmethod
    def cached(
        cls,
        model: nn.Module,
        model_name: str,
        input_size: InputSize = (1, 3, 32, 32),
        round_to: int = 8,
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
        repeats: int = 20,
        warmup: int = 5,
        pruned: Callable[[], Sequence[nn.Module]] | None = None,
    ) -> LatencyTable:
        """The table from the cache when its key matches, else a fresh measurement saved there.

        Args:
            model: The network at full width.
            model_name: Model name, part of the key and of the file name.
            input_size: Shape of the input batch.
            round_to: Grid step in channels.
            device: Device to measure on.
            cache_dir: Folder of cached tables; ``None`` uses :func:`default_cache_dir`.
            repeats: Timed calls per grid point when measuring.
            warmup: Untimed calls per grid point when measuring.
            pruned: Builds physically pruned copies of ``model``; given, an uncalibrated
                table is calibrated against them (:meth:`calibrate`) and saved again.

        Returns:
            The table.

        Raises:
            ValueError: The cached file is corrupt (delete it to re-measure).
        """
        key = cache_key(model, model_name, input_size, round_to, device)
        path = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), key)
        table = cls.load(path) if path.is_file() else None
        if table is not None and table.key == key:
            log.info("latency table from %s", path)
        else:
            if table is not None:
                log.info("latency table %s was measured for another setup; measuring again", path)
            table = cls.build(model, input_size, round_to, device, repeats, warmup, model_name=model_name)
            table.save(path)
            log.info("latency table saved to %s", path)
        if pruned is not None and table.calibration is None:
            table.calibrate(model, pruned(), input_size, device)
            table.save(path)
        return table


def layer_widths(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """Current ``(in, out)`` channels of the model's Conv2d/Linear layers (or the named ones).

    Applied to a pruned model whose module names match the full model's, this is the ``kept``
    argument of :meth:`LatencyTable.predict`.

    Raises:
        ValueError: A named layer is missing or is not a Conv2d/Linear.
    """
    modules = dict(model.named_modules())
    if names is None:
        names = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
    kept = {}
    for name in names:
        m = modules.get(name)
        if isinstance(m, nn.Conv2d):
            kept[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            kept[name] = (m.in_features, m.out_features)
        else:
            raise ValueError(f"model has no Conv2d/Linear layer '{name}'")
    return kept


def predicted_vs_measured(
    model: nn.Module,
    table: LatencyTable,
    input_size: InputSize = (1, 3, 32, 32),
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 50,
) -> LatencyComparison:
    """The table's prediction for ``model``'s current widths next to its measured latency.

    Args:
        model: The (possibly pruned) network; its layer names must match the table's.
        table: Table measured on the full-width model.
        input_size: Shape of the input batch.
        device: Device to measure on.
        warmup: Untimed passes.
        repeats: Timed passes.

    Returns:
        Predicted and measured (median) latency in ms.
    """
    predicted = table.predict(layer_widths(model, table.layers))
    measured = measure_latency(model, input_size, device, warmup, repeats).median_ms
    log.info("latency predicted %.3f ms, measured %.3f ms", predicted, measured)
    return LatencyComparison(predicted, measured)
