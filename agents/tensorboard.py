"""TensorBoard pictures and tables of policies (bar chart of per-unit sparsity, text table)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def policy_bar_chart(sparsities: Mapping[str, float], title: str = "") -> np.ndarray:
    """An RGB image (H x W x 3, uint8) of per-unit sparsity as bars, unit names under them."""
    from PIL import Image, ImageDraw

    names, values = list(sparsities), [float(v) for v in sparsities.values()]
    bar, gap, plot_h, label_h, top, left = 18, 6, 200, 130, 28, 40
    width = left + len(names) * (bar + gap) + gap
    img = Image.new("RGB", (max(width, 320), top + plot_h + label_h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title, fill="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h - frac * plot_h
        draw.line([(left - 4, y), (img.width - 2, y)], fill="#dddddd")
        draw.text((2, y - 6), f"{frac:.2f}", fill="black")
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        x = left + gap + i * (bar + gap)
        draw.rectangle([x, top + plot_h - v * plot_h, x + bar, top + plot_h], fill="#3b75af")
        label = Image.new("RGB", (label_h - 4, bar), "white")
        text = ImageDraw.Draw(label)
        text.text((label.width - text.textlength(name[-22:]) - 2, 3), name[-22:], fill="black")
        img.paste(label.rotate(90, expand=True), (x, top + plot_h + 4))
    return np.asarray(img)


def policy_table(sparsities: Mapping[str, float], kept: Mapping[str, int] | None = None) -> str:
    """The policy as a Markdown table (TensorBoard renders Markdown in the text tab)."""
    rows = ["| unit | sparsity | kept |", "|---|---:|---:|"]
    for name, s in sparsities.items():
        rows.append(f"| {name} | {float(s):.3f} | {(kept or {}).get(name, '')} |")
    return "\n".join(rows)
