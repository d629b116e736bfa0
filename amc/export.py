"""Deployment: BatchNorm folding and ONNX export checked against PyTorch.

>>> report = export_onnx(pruned, torch.randn(1, 3, 32, 32), "pruned.onnx")
>>> report.max_abs_diff  # onnxruntime's output against PyTorch's on the example inputs

Channel-pruned models export as they are (their channels are physically removed);
fine-grained (masked) models export with the masks folded in, so pruned weights are stored
as exact zeros. ``onnx`` and ``onnxruntime`` are an optional extra: ``pip install 'amc-pruner[onnx]'``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from amc.cost import time_calls
from amc.files import atomic_path
from amc.plots import MissingExtraError

log = logging.getLogger(__name__)

ONNX_INSTALL_HINT = "pip install 'amc-pruner[onnx]'"
ONNX_OPSET = 17
"""ONNX operator set of the exported graphs (onnxruntime 1.14 and newer run it)."""
ONNX_TOLERANCE = 1e-4
"""Largest absolute difference between onnxruntime's and PyTorch's logits that passes :func:`export_onnx`."""
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def require_onnx() -> None:
    """Fail with a one-line message naming the install command when onnx or onnxruntime is missing.

    Raises:
        MissingExtraError: ``onnx`` or ``onnxruntime`` cannot be imported.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"ONNX export needs onnx and onnxruntime: {ONNX_INSTALL_HINT}") from exc


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm folded into the conv that alone feeds it.

    Uses ``torch.fx`` (the model must be symbolically traceable, as every zoo model is). A
    fine-grained (masked) model is squashed first, so its pruned weights stay exact zeros
    (folding scales whole output channels).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    traced = fx.symbolic_trace(squashed_copy(model))
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.args else None
        if not (
            node.op == "call_module"
            and isinstance(modules[node.target], nn.BatchNorm2d)
            and isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
        ):
            continue
        parent, _, name = source.target.rpartition(".")
        folded = fuse_conv_bn_eval(modules[source.target], modules[node.target])
        setattr(traced.get_submodule(parent), name, folded)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def squashed_copy(model: nn.Module) -> nn.Module:
    """A plain eval-mode copy of ``model``: fine-grained masks folded into the weights, if any."""
    from amc.pruning.finegrained import MagnitudePruner

    plain = copy.deepcopy(model).eval()
    if any(parametrize.is_parametrized(m) for m in plain.modules()):
        MagnitudePruner().squash(plain)
    return plain


@dataclass(frozen=True)
class OnnxReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces PyTorch.

    Attributes:
        path: The ``.onnx`` file.
        max_abs_diff: Largest absolute difference of onnxruntime's outputs from PyTorch's
            (the unfolded model's) on the example inputs.
        file_bytes: Size of the file.
        sparsity: Fraction of exactly-zero Conv2d/Linear weights in the exported graph.
        stored: :func:`amc.pruning.stored_size` totals (bytes: dense, csr, bitmask, best).
        nm_bytes: With an N:M pattern: bytes of the model with its N:M weights in compressed
            form, values plus index metadata (:func:`amc.pruning.finegrained.nm_stored_size`).
    """

    path: Path
    max_abs_diff: float
    file_bytes: int
    sparsity: float
    stored: dict[str, int] = field(default_factory=dict)
    nm_bytes: int | None = None


def _as_tuple(example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | Path,
    tolerance: float = ONNX_TOLERANCE,
    opset: int = ONNX_OPSET,
    nm: tuple[int, int] | None = None,
) -> OnnxReport:
    """Write ``model`` (BatchNorm folded, masks squashed) as ONNX, check it and compare it with PyTorch.

    The graph takes a batch of any size (``input`` -> ``logits``). The file is written
    atomically, validated with ``onnx.checker`` and run with onnxruntime on ``example_inputs``;
    the outputs must match the PyTorch model's within ``tolerance``.

    Args:
        model: A channel-pruned, fine-grained (masked or squashed) or dense model; not changed.
        example_inputs: One input batch (or a tuple of inputs) on the CPU.
        path: Output ``.onnx`` file.
        tolerance: Largest accepted absolute difference of the outputs.
        opset: ONNX operator set version.
        nm: ``(N, M)`` of an N:M-pruned model: the report then gives its compressed size.

    Returns:
        The report (path, largest difference, file size, sparsity, stored sizes, N:M size).

    Raises:
        MissingExtraError: ``onnx`` or ``onnxruntime`` is not installed.
        ValueError: onnxruntime's outputs differ from PyTorch's by more than ``tolerance``.
    """
    require_onnx()
    import onnx

    from amc.pruning.finegrained import nm_stored_size, sparsity, stored_size

    inputs = tuple(x.detach().cpu() for x in _as_tuple(example_inputs))
    plain = squashed_copy(model).cpu()
    with torch.no_grad():
        expected = plain(*inputs)
    deployed = fold_batchnorm(plain)
    path = Path(path)
    with atomic_path(path) as tmp:
        _torch_export(deployed, inputs, tmp, opset)
        onnx.checker.check_model(str(tmp), full_check=True)
    got = run_onnx(path, inputs[0].numpy())
    diff = float(np.abs(got - expected.numpy()).max())
    log.info("wrote %s; onnxruntime vs PyTorch max |diff| %.2e", path, diff)
    if not diff <= tolerance:
        raise ValueError(
            f"{path}: onnxruntime's output differs from PyTorch's by {diff:.3g} (> {tolerance:g}); "
            "the model uses an operation the ONNX exporter translates differently"
        )
    size = stored_size(plain)
    nm_bytes = nm_stored_size(plain, nm)["total"] if nm is not None else None
    return OnnxReport(path, diff, path.stat().st_size, sparsity(plain).overall, size["total"], nm_bytes)


def _torch_export(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    """``torch.onnx.export`` through the TorchScript exporter (it needs no onnxscript), batch axis dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its future
        torch.onnx.export(
            model,
            inputs,
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU inference session of ``path`` using ``threads`` threads (default: torch's)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: np.ndarray) -> np.ndarray:
    """The outputs of an ONNX model (a path or an :func:`onnx_session`) on a float32 batch."""
    session = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def onnx_latency_ms(
    path_or_session,
    input_size: tuple[int, ...],
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
) -> float:
    """Median onnxruntime latency (ms) of a batch of ``input_size`` random inputs, after ``warmup`` runs."""
    session = path_or_session
    if isinstance(session, (str, Path)):
        session = onnx_session(session, threads)
    x = np.random.default_rng(0).standard_normal(input_size, dtype=np.float32)
    return time_calls(lambda: run_onnx(session, x), torch.device("cpu"), warmup, repeats).median_ms


def evaluate_onnx(
    path: str | Path, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], repeats: int = 20
) -> dict[str, float]:
    """Top-1 accuracy (%) of an ONNX model over ``batches`` and its onnxruntime latency.

    Latency is the median over ``repeats`` runs on one image (``latency_ms``), after a
    warm-up run.

    Returns:
        ``{"top1", "images", "latency_ms"}``.
    """
    session = onnx_session(path)
    correct = count = 0
    first = None
    for x, y in batches:
        logits = run_onnx(session, x.numpy())
        correct += int((logits.argmax(1) == y.numpy()).sum())
        count += len(y)
        first = x[:1].numpy() if first is None else first
    if first is None:
        raise ValueError("no images to evaluate the ONNX model on")
    latency = onnx_latency_ms(session, first.shape, warmup=1, repeats=repeats)
    return {"top1": 100.0 * correct / count, "images": count, "latency_ms": latency}
