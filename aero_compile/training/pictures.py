"""Entropy pictures, as the AERO paper draws them, written as PNG (atomically).

* ``entropy_heatmap.png``: the mean attention entropy of every (layer, head), before and after
  training, on one colour scale [0, E_max]. Dark cells are collapsed heads (attention on one token),
  bright cells overloaded ones (near-uniform attention).
* ``entropy_quarters.png``: the share of heads whose entropy falls in each quarter of [0, E_max],
  before and after. A healthy model spreads its heads; a collapsed one piles them in the first
  quarter, an overloaded one in the last.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..fileio import atomic_path


def quarter_shares(entropies: list[list[float]], e_max: float) -> list[float]:
    """Share of heads in [0, E/4), [E/4, E/2), [E/2, 3E/4), [3E/4, E] (values at or above E_max count last)."""
    flat = np.asarray([value for row in entropies for value in row], dtype=float)
    quarters = np.clip(np.floor(flat / e_max * 4), 0, 3).astype(int)
    counts = np.bincount(quarters, minlength=4)
    return (counts / max(len(flat), 1)).tolist()


def _grid(entropies: list[list[float]]) -> np.ndarray:
    width = max(len(row) for row in entropies)
    grid = np.full((len(entropies), width), np.nan)
    for i, row in enumerate(entropies):
        grid[i, :len(row)] = row
    return grid


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def draw_heatmap(before: list[list[float]], after: list[list[float]], layers: list[int], e_max: float,
                 path: Path, title: str = "") -> None:
    grids = [_grid(before), _grid(after)]
    rows, cols = grids[0].shape
    figure = Figure(figsize=(3.5 + 0.9 * cols, 2.0 + 0.45 * rows), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    image = None
    for axis, grid, label in zip(axes, grids, ("before training", "after training")):
        image = axis.imshow(grid, vmin=0.0, vmax=e_max, cmap="viridis", aspect="auto")
        axis.set_title(label)
        axis.set_xlabel("head")
        axis.set_xticks(range(cols))
        if rows * cols <= 144:  # values stay readable up to 12 x 12
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    axis.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                              color="white" if value < 0.6 * e_max else "black")
    axes[0].set_ylabel("layer")
    axes[0].set_yticks(range(rows), [str(layer) for layer in layers])
    figure.colorbar(image, ax=list(axes), label=f"attention entropy (nats; E_max = log T = {e_max:.2f})")
    figure.suptitle(textwrap.fill(title or "per-head attention entropy", 70), fontsize=9)
    _save(figure, path)


def draw_quarters(before: list[list[float]], after: list[list[float]], e_max: float, path: Path, title: str = "") -> None:
    shares = [quarter_shares(before, e_max), quarter_shares(after, e_max)]
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(4)
    for offset, values, label in zip((-0.2, 0.2), shares, ("before training", "after training")):
        axis.bar(positions + offset, values, width=0.4, label=label)
    axis.set_xticks(positions, ["[0, ¼)", "[¼, ½)", "[½, ¾)", "[¾, 1]"])
    axis.set_xlabel("head entropy / E_max")
    axis.set_ylabel("share of heads")
    axis.set_ylim(0, 1)
    axis.legend()
    axis.set_title(textwrap.fill(title or "distribution of head entropies", 60), fontsize=9)
    _save(figure, path)


def draw_trajectory(points: list[dict], gradual: int, export_ppl: float | None, path: Path, title: str = "") -> None:
    """Validation ppl over the steps (log scale), the --gradual window shaded, the exported model's ppl marked."""
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axis = figure.subplots()
    steps = [p["step"] for p in points]
    axis.plot(steps, [p["val_ppl"] for p in points], marker="o", label="val ppl (training graph)")
    if gradual:
        axis.axvspan(0, gradual, color="tab:orange", alpha=0.12, label=f"conversion window ({gradual} steps)")
    if export_ppl is not None:
        axis.scatter([steps[-1]], [export_ppl], marker="x", color="black", zorder=3, label="exported model.pt2")
    axis.axhline(points[0]["val_ppl"], color="grey", linestyle=":", label="start")
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("validation perplexity")
    axis.legend(fontsize=7)
    axis.set_title(textwrap.fill(title or "validation perplexity", 60), fontsize=9)
    _save(figure, path)
