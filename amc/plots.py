"""Figures of a comparison: accuracy against FLOPs, and per-unit sparsity profiles.

The PNG files are drawn with matplotlib, an optional extra (``pip install 'amc-pruner[plot]'``);
:func:`profiles_image`, the TensorBoard picture, is drawn with Pillow and always available.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from amc.files import atomic_path

INSTALL_HINT = "pip install 'amc-pruner[plot]'"
COLOURS = ("#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57dbe", "#7f7f7f")
"""Method colours, in order (matplotlib's default cycle, so PNG and TensorBoard agree)."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def require_matplotlib() -> None:
    """Fail with a one-line message naming the install command when matplotlib is missing.

    Raises:
        MissingExtraError: matplotlib cannot be imported.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"the PNG plots need matplotlib: {INSTALL_HINT} (or pass --no-plots)"
        ) from exc


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=(width, height), dpi=120)


def accuracy_vs_flops(
    points: Mapping[str, Sequence[tuple[float, float]]], dense: float, path: str | Path, title: str = ""
) -> Path:
    """Accuracy against FLOPs ratio, one line per method (a single budget is one marker).

    Args:
        points: Method -> ``(FLOPs ratio, top-1 %)`` points.
        dense: Top-1 of the dense model, drawn as a dashed line.
        path: PNG file to write.
        title: Figure title.
    """
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    for i, (method, pts) in enumerate(points.items()):
        xs, ys = zip(*sorted(pts), strict=True)
        single = len(pts) == 1
        ax.plot(
            xs,
            ys,
            marker="*" if single else "o",
            markersize=13 if single else 6,
            color=COLOURS[i % len(COLOURS)],
            label=method,
        )
    ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense ({dense:.2f} %)")
    xs = [x for pts in points.values() for x, _ in pts]
    if xs:  # at least 0.1 of room around the points: one budget is not a zoom on 0.003 of FLOPs
        middle, half = (min(xs) + max(xs)) / 2, max(0.05 + (max(xs) - min(xs)) / 2, 0.1)
        ax.set_xlim(middle - half, middle + half)
    ax.set_xlabel("FLOPs ratio (pruned / dense)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def profiles_png(
    units: Sequence[str], profiles: Mapping[str, Sequence[float]], path: str | Path, title: str = ""
) -> Path:
    """Per-unit sparsity of several methods as grouped bars, units in execution order.

    Args:
        units: Unit names.
        profiles: Method -> sparsity (fraction of channels removed) per unit.
        path: PNG file to write.
        title: Figure title.
    """
    fig = _figure(max(6.4, 0.5 * len(units) + 1.5), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(units))
    width = 0.8 / max(1, len(profiles))
    for i, (method, values) in enumerate(profiles.items()):
        offset = (i - (len(profiles) - 1) / 2) * width
        ax.bar(x + offset, values, width, color=COLOURS[i % len(COLOURS)], label=method)
    ax.set_xticks(x, [u[-20:] for u in units], rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity (fraction of channels removed)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, max(1, len(profiles))))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def profiles_image(
    units: Sequence[str], profiles: Mapping[str, Sequence[float]], title: str = ""
) -> np.ndarray:
    """The grouped-bar picture of :func:`profiles_png` drawn with Pillow: RGB, H x W x 3, uint8."""
    from PIL import Image, ImageDraw

    bar, gap, plot_h, label_h, left = 7, 10, 200, 130, 40
    top = 28 + 14 * len(profiles)  # title, then one legend line per method
    group = bar * max(1, len(profiles)) + gap
    img = Image.new("RGB", (max(left + len(units) * group + gap, 360), top + plot_h + label_h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title, fill="black")
    for i, method in enumerate(profiles):
        y = 22 + 14 * i
        draw.rectangle([left, y + 2, left + 10, y + 10], fill=COLOURS[i % len(COLOURS)])
        draw.text((left + 16, y), method, fill="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h - frac * plot_h
        draw.line([(left - 4, y), (img.width - 2, y)], fill="#dddddd")
        draw.text((2, y - 6), f"{frac:.2f}", fill="black")
    for u, name in enumerate(units):
        x0 = left + gap + u * group
        for i, values in enumerate(profiles.values()):
            v = float(np.clip(values[u], 0.0, 1.0))
            x = x0 + i * bar
            draw.rectangle(
                [x, top + plot_h - v * plot_h, x + bar - 1, top + plot_h], fill=COLOURS[i % len(COLOURS)]
            )
        label = Image.new("RGB", (label_h - 4, 12), "white")
        text = ImageDraw.Draw(label)
        text.text((label.width - text.textlength(name[-22:]) - 2, 0), name[-22:], fill="black")
        img.paste(label.rotate(90, expand=True), (x0, top + plot_h + 4))
    return np.asarray(img)
