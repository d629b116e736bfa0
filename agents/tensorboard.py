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


def _colour(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB (dark blue -> teal -> yellow, a viridis-like ramp)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    x = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.minimum(x.astype(int), len(stops) - 2)
    frac = (x - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def policy_heatmap(matrix: np.ndarray, unit_names: list[str], title: str = "") -> np.ndarray:
    """An RGB image of per-unit sparsity (rows: units, columns: episodes), colour bar 0 to 1."""
    from PIL import Image, ImageDraw

    units, episodes = matrix.shape
    cell_h, label_w, top, bar_w = 14, 150, 24, 60
    plot_w = max(300, min(900, episodes * 3))
    cells = Image.fromarray(_colour(matrix)).resize((plot_w, units * cell_h), Image.NEAREST)
    img = Image.new("RGB", (label_w + plot_w + bar_w, top + units * cell_h + 20), "white")
    img.paste(cells, (label_w, top))
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title, fill="black")
    for i, name in enumerate(unit_names):
        draw.text((4, top + i * cell_h + 1), name[-24:], fill="black")
    draw.text((label_w, top + units * cell_h + 4), "episode 1", fill="black")
    draw.text((label_w + plot_w - 60, top + units * cell_h + 4), f"episode {episodes}", fill="black")
    ramp = _colour(np.linspace(1, 0, units * cell_h))[:, None, :].repeat(12, 1)
    img.paste(Image.fromarray(ramp), (label_w + plot_w + 8, top))
    draw.text((label_w + plot_w + 24, top), "1.0", fill="black")
    draw.text((label_w + plot_w + 24, top + units * cell_h - 10), "0.0", fill="black")
    return np.asarray(img)
