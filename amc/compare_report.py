"""Reports of a comparison: the results, Markdown and CSV tables, TensorBoard events, PNG figures.

:class:`amc.compare.Comparison` measures; this module only writes what it measured. The PNG
figures need matplotlib (:mod:`amc.plots`); the tables and TensorBoard events do not.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from amc.files import write_atomic


@dataclass
class Result:
    """What one entry measured (``results/<key>.json``); accuracies are test top-1 in %."""

    key: str
    method: str
    label: str
    target: float
    flops_ratio: float
    params_ratio: float
    top1_before: float
    top1_after: float | None
    kept: dict[str, int]
    digest: str
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """Display name, as :attr:`Entry.name`."""
        return f"{self.method} ({self.label})" if self.label else self.method

    @property
    def top1(self) -> float:
        """Accuracy after fine-tuning, or before it when there was none."""
        return self.top1_before if self.top1_after is None else self.top1_after


@dataclass
class Report:
    """A finished comparison: the dense accuracy and every entry's result."""

    title: str
    metric: str
    target: float
    finetune_epochs: int
    dense_top1: float
    results: list[Result]
    units: list[tuple[str, int]] = field(default_factory=list)

    def profiles(self) -> dict[str, list[float]]:
        """Per-unit sparsity (fraction of channels removed) of each entry at the main budget."""
        return {
            r.name: [1.0 - r.kept[name] / channels for name, channels in self.units]
            for r in self.results
            if abs(r.target - self.target) < 1e-9
        }


def markdown_table(report: Report) -> str:
    """The report as a Markdown table, dense model first, then by budget."""
    after = (
        f"top-1 after {report.finetune_epochs}-epoch fine-tune" if report.finetune_epochs else "top-1 after"
    )
    lines = [
        f"| method | budget ({report.metric}) | FLOPs ratio | params ratio | top-1 before fine-tuning "
        f"| {after} | Δ vs dense |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| dense | 1.00 | 1.000 | 1.000 | {report.dense_top1:.2f} % | — | — |",
    ]
    for r in sorted(report.results, key=lambda r: r.target):
        top1_after = "—" if r.top1_after is None else f"{r.top1_after:.2f} %"
        lines.append(
            f"| {r.name} | {r.target:.2f} | {r.flops_ratio:.3f} | {r.params_ratio:.3f} "
            f"| {r.top1_before:.2f} % | {top1_after} | {r.top1 - report.dense_top1:+.2f} |"
        )
    return "\n".join(lines)


CSV_COLUMNS = (
    "method",
    "label",
    "budget",
    "flops_ratio",
    "params_ratio",
    "top1_before",
    "top1_after",
    "delta_vs_dense",
)
"""Columns of ``compare.csv`` (accuracies in %, Δ after fine-tuning when there was one)."""


def csv_rows(report: Report) -> list[list]:
    """The report's rows for ``compare.csv`` (:data:`CSV_COLUMNS`), dense model first."""
    rows = [["dense", "", 1.0, 1.0, 1.0, round(report.dense_top1, 2), "", ""]]
    for r in sorted(report.results, key=lambda r: r.target):
        after = "" if r.top1_after is None else round(r.top1_after, 2)
        delta = round(r.top1 - report.dense_top1, 2)
        rows.append(
            [
                r.method,
                r.label,
                r.target,
                round(r.flops_ratio, 4),
                round(r.params_ratio, 4),
                round(r.top1_before, 2),
                after,
                delta,
            ]
        )
    return rows


def write_tables(report: Report, out: Path) -> list[Path]:
    """Write ``compare.md`` and ``compare.csv`` (atomically) into ``out``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(report))
    written = []
    for name, content in (
        ("compare.md", f"{report.title}\n\n{markdown_table(report)}\n"),
        ("compare.csv", text.getvalue()),
    ):
        written.append(write_atomic(out / name, content))
    return written


def write_tensorboard(report: Report, out: Path) -> None:
    """TensorBoard events in ``out``: the table, the profiles as images, the accuracies as scalars.

    Scalars ``compare/top1_before/<method>`` and ``compare/top1_after/<method>`` use the
    budget in percent as their step, so each method draws accuracy against budget.
    """
    from torch.utils.tensorboard import SummaryWriter

    from amc.plots import profiles_image

    for old in out.glob("events.out.tfevents.*"):  # rebuilt from the results on every run
        old.unlink()
    names = [name for name, _ in report.units]
    profiles = report.profiles()
    with SummaryWriter(str(out)) as writer:
        writer.add_text("compare/table", f"{report.title}\n\n{markdown_table(report)}")
        title = f"per-unit sparsity at {report.metric}={report.target:g}"
        writer.add_image("compare/profiles", profiles_image(names, profiles, title), dataformats="HWC")
        for name, values in profiles.items():
            image = profiles_image(names, {name: values}, f"{name}: {title}")
            writer.add_image(f"profile/{name}", image, dataformats="HWC")
        writer.add_scalar("compare/dense_top1", report.dense_top1, 100)
        for r in report.results:
            step = round(r.target * 100)
            writer.add_scalar(f"compare/top1_before/{r.method}", r.top1_before, step)
            if r.top1_after is not None:
                writer.add_scalar(f"compare/top1_after/{r.method}", r.top1_after, step)


def write_plots(report: Report, out: Path) -> list[Path]:
    """``accuracy_vs_flops.png`` and ``profiles.png`` in ``out`` (needs matplotlib)."""
    from amc.plots import accuracy_vs_flops, profiles_png

    points: dict[str, list[tuple[float, float]]] = {}
    for r in report.results:
        points.setdefault(r.method, []).append((r.flops_ratio, r.top1))
    when = (
        f"after {report.finetune_epochs} fine-tuning epochs"
        if report.finetune_epochs
        else "without fine-tuning"
    )
    return [
        accuracy_vs_flops(
            points, report.dense_top1, out / "accuracy_vs_flops.png", f"{report.title}\ntest top-1 {when}"
        ),
        profiles_png(
            [n for n, _ in report.units],
            report.profiles(),
            out / "profiles.png",
            f"per-unit sparsity at {report.metric}={report.target:g}",
        ),
    ]


def write_report(report: Report, out: str | Path, plots: bool = False) -> list[Path]:
    """Write the tables, the TensorBoard events and (``plots``) the PNG figures; return the files."""
    out = Path(out)
    written = write_tables(report, out)
    write_tensorboard(report, out)
    return written + (write_plots(report, out) if plots else [])
