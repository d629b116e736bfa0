"""Benchmarks behind ``amc benchmark`` (ratios against a baseline in the same run, medians).

* ``overhead``: the timing tools behind it (:class:`PartTimer`, :func:`alternate`,
  :func:`summarize_overhead`); the episode itself needs the environment and the agent, so
  it is timed in :mod:`amc.agents.overhead`.
* ``speedup``: physical pruning to 50 % FLOPs (uniform policy): measured latency speed-up
  divided by the FLOPs speed-up (1.0 = the physical limit), for the eager model and for its
  deployed form (BatchNorm folded into the convolutions, as inference runtimes do).
* ``latency``: the per-layer latency table's prediction beside the measured latency.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from amc.backends import ChannelBackend
from amc.baselines import solve_uniform, uniform_policy
from amc.cost import measure_latency
from amc.data.base import Dataset
from amc.export import export_onnx, fold_batchnorm, onnx_latency_ms, onnx_session
from amc.pruning.channel import ChannelPruner
from amc.report import compare
from amc.scoring import Scorer, ScoringConfig, calibration_images


def _median_time(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


class PartTimer:
    """Exclusive wall time and call counts of chosen methods, grouped into named parts.

    :meth:`wrap` shadows a method of one object with a timed version until :meth:`restore`
    (or the end of a ``with`` block). A timed call made inside another one counts for the
    inner part only, so the parts never overlap and can be added up.

    Example::

        with PartTimer() as timer:
            timer.wrap(scorer, "accuracy", "scoring")
            scorer.evaluate(model)
        timer.seconds["scoring"], timer.calls["scoring"]
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._inner: list[float] = []  # per open timed call: time spent in timed calls inside it
        self._wrapped: list[tuple[object, str]] = []

    def wrap(self, obj: object, method: str, part: str) -> None:
        """Time every call of ``obj.method`` (this object only) as ``part``."""
        original = getattr(obj, method)

        def timed(*args: object, **kwargs: object) -> object:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                self.seconds[part] = self.seconds.get(part, 0.0) + elapsed - inner
                self.calls[part] = self.calls.get(part, 0) + 1
                if self._inner:
                    self._inner[-1] += elapsed

        setattr(obj, method, timed)
        self._wrapped.append((obj, method))

    def reset(self) -> None:
        """Forget the times and counts recorded so far (the wrapping stays)."""
        self.seconds.clear()
        self.calls.clear()

    def restore(self) -> None:
        """Undo every :meth:`wrap`."""
        for obj, method in reversed(self._wrapped):
            delattr(obj, method)
        self._wrapped.clear()

    def __enter__(self) -> PartTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def dense_forward(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> None:
    """One plain inference pass of ``model`` (eval mode, no autograd) over ``images``."""
    model.eval()
    with torch.no_grad():
        for x in images.split(batch_size):
            model(x)


def alternate(
    baseline: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """Time ``baseline`` and ``candidate`` alternately ``repeats`` times (after one untimed round each).

    Alternating spreads drifts in machine load over both alike.

    Returns:
        The baseline's times, the candidate's times (seconds) and their per-round ratios
        (candidate over baseline).
    """
    baseline()
    candidate()
    base, cand = [], []
    for _ in range(repeats):
        base.append(_median_time(baseline, 1)[0])
        cand.append(_median_time(candidate, 1)[0])
    return base, cand, [c / b for b, c in zip(base, cand, strict=True)]


def summarize_overhead(
    dense: list[float], episode: list[float], parts: list[dict[str, float]], images: int
) -> dict[str, object]:
    """The overhead record: medians, the median ratio, and each part's median time and share.

    Args:
        dense: Times of the dense passes (seconds).
        episode: Times of the episodes, alternated with them.
        parts: Per episode, seconds by part (summing to that episode's time).
        images: Images scored per episode (and in each dense pass).
    """
    names = list(dict.fromkeys(k for p in parts for k in p))
    total = sum(episode)
    return {
        "dense_s": statistics.median(dense),
        "episode_s": statistics.median(episode),
        "ratio": statistics.median(e / d for d, e in zip(dense, episode, strict=True)),
        "images": images,
        "parts_s": {k: statistics.median(p.get(k, 0.0) for p in parts) for k in names},
        "shares": {k: sum(p.get(k, 0.0) for p in parts) / total for k in names},
    }


def _uniform_pruned(model: nn.Module, target: float, input_hw: tuple[int, int], round_to: int = 1):
    """The backend, kept channels and physically pruned model of the uniform policy at ``target``."""
    backend = ChannelBackend(ChannelPruner(model, (1, 3, *input_hw), round_to=round_to))
    kept = backend.pruner.kept_for(solve_uniform(backend, target, "flops"))
    return backend, kept, backend.pruner.export(kept)


def pruning_speedup(
    model: nn.Module,
    target: float = 0.5,
    batch: int = 32,
    repeats: int = 30,
    input_hw: tuple[int, int] = (32, 32),
    round_to: int = 1,
    onnx: bool = False,
) -> dict[str, float]:
    """Latency speed-up of the physically pruned model over its FLOPs speed-up.

    The policy is uniform at ``target`` FLOPs. Dense and pruned latencies are measured in
    alternating blocks and their medians compared, once for the eager models (``ratio``), once
    with BatchNorm folded into the convolutions (``deployed_ratio``) and, with ``onnx``, once
    for both exported to ONNX and run by onnxruntime (``onnx_ratio``; needs the onnx extra).
    """
    backend, kept, small = _uniform_pruned(model, target, input_hw, round_to)
    flops_speedup = backend.dense["flops"] / backend.kept_costs(kept)["flops_absolute"]
    size = (batch, 3, *input_hw)
    out: dict[str, float] = {"flops_speedup": flops_speedup, "batch": batch, "round_to": round_to}
    block = repeats // 5 + 1
    with tempfile.TemporaryDirectory() as tmp:
        for prefix, (dense, pruned) in _timed_pairs(model, small, size, block, onnx, Path(tmp)).items():
            dense_ms, pruned_ms = [], []
            for _ in range(5):  # alternate measurement blocks
                dense_ms.append(dense())
                pruned_ms.append(pruned())
            speedup = statistics.median(dense_ms) / statistics.median(pruned_ms)
            out.update(
                {
                    f"{prefix}dense_ms": statistics.median(dense_ms),
                    f"{prefix}pruned_ms": statistics.median(pruned_ms),
                    f"{prefix}latency_speedup": speedup,
                    f"{prefix}ratio": speedup / flops_speedup,
                }
            )
    return out


def _timed_pairs(
    model: nn.Module, small: nn.Module, size: tuple[int, ...], repeats: int, onnx: bool, folder: Path
) -> dict[str, tuple[Callable[[], float], Callable[[], float]]]:
    """Per form (eager, BN folded, onnxruntime), functions timing the dense and the pruned model (ms)."""

    def torch_timer(net: nn.Module) -> Callable[[], float]:
        return lambda: measure_latency(net, size, warmup=3, repeats=repeats).median_ms

    pairs = {
        "": (torch_timer(model.eval()), torch_timer(small.eval())),
        "deployed_": (torch_timer(fold_batchnorm(model)), torch_timer(fold_batchnorm(small))),
    }
    if onnx:
        example = torch.randn(1, *size[1:])
        sessions = [
            onnx_session(export_onnx(net, example, folder / f"{name}.onnx").path)
            for name, net in (("dense", model), ("pruned", small))
        ]
        pairs["onnx_"] = tuple(
            (lambda s=s: onnx_latency_ms(s, size, warmup=3, repeats=repeats)) for s in sessions
        )
    return pairs


def latency_prediction(
    model: nn.Module,
    target: float = 0.5,
    batch: int = 32,
    round_to: int = 8,
    input_hw: tuple[int, int] = (32, 32),
) -> dict[str, float]:
    """The latency table's prediction for the uniformly pruned model beside its measured latency."""
    from amc.cost import LatencyTable, predicted_vs_measured

    shape = (batch, 3, *input_hw)
    _, _, small = _uniform_pruned(model, target, input_hw, round_to)
    table = LatencyTable.build(model, shape, round_to=round_to, repeats=10, warmup=3)
    dense = predicted_vs_measured(model, table, shape)
    pruned = predicted_vs_measured(small, table, shape)
    return {
        "dense_predicted_ms": dense.predicted_ms,
        "dense_measured_ms": dense.measured_ms,
        "pruned_predicted_ms": pruned.predicted_ms,
        "pruned_measured_ms": pruned.measured_ms,
        "predicted_speedup": dense.predicted_ms / pruned.predicted_ms,
        "measured_speedup": dense.measured_ms / pruned.measured_ms,
    }


def selection_table(make_model: Callable[[], nn.Module], data: Dataset, target: float) -> dict[str, float]:
    """Top-1 of the uniform policy at ``target`` FLOPs on ``data``'s test images, four ways.

    With and without least-squares reconstruction and BatchNorm recalibration; ``dense`` is the
    unpruned model. ``make_model`` builds a fresh copy of the model for each variant.
    """
    results = {}
    for reconstruct in (False, True):
        for recalibrate in (False, True):
            scorer = Scorer(data, ScoringConfig(recalibrate=recalibrate))
            images = calibration_images(data, 256, scorer.spare_index, seed=7) if reconstruct else None
            pruner = ChannelPruner(make_model(), (1, 3, 32, 32), calibration=images)
            policy = uniform_policy(pruner, target, "flops")
            dense, pruned = compare(
                pruner, data, {"uniform": [policy.kept[u.name] for u in pruner.units]}, scorer
            )
            results["dense"] = dense.top1
            results[f"reconstruct={reconstruct} recalibrate={recalibrate}"] = pruned.top1
    return results
