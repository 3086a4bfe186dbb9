"""Matplotlib figures written straight to PNG files (the Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_points(samples: np.ndarray, data: np.ndarray, path: Path, title: str = "") -> Path:
    """2-D samples (orange) over the data points (grey)."""
    return scatter_panels([(title, samples)], data, path)


def scatter_panels(panels: list[tuple[str, np.ndarray]], data: np.ndarray, path: Path) -> Path:
    """One panel per (title, 2-D samples), each with the samples (orange) over the data points (grey)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False, sharex=True, sharey=True)
    for ax, (title, samples) in zip(axes[0], panels):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.7", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:orange", label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title(title)
    return _save_figure(plt, fig, path)


def _save_figure(plt, fig, path: Path) -> Path:
    """Tight layout, write the PNG (atomically), free the figure."""
    from model.writes import atomic_write

    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def line_panels(x: np.ndarray, panels: dict[str, dict[str, np.ndarray]], path: Path, xlabel: str,
                log_y: tuple[str, ...] = ()) -> Path:
    """One panel per title in `panels`, side by side, each with one line per label against x.

    Panels whose title is in `log_y` get a log y-axis; up to 20 points are also marked, so small T stays readable.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    marker = "o" if len(x) <= 20 else None
    for ax, (title, lines) in zip(axes[0], panels.items()):
        for label, y in lines.items():
            ax.plot(x, y, label=label, marker=marker, ms=3)
        ax.set_yscale("log" if title in log_y else "linear")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_figure(plt, fig, path)


Series = tuple[str, np.ndarray, np.ndarray]  # (label, x, y)
LOSS_STYLES = {"train": dict(lw=0.8, alpha=0.35, c="tab:blue"),  # raw training loss: faint
               "smooth": dict(lw=1.8, c="tab:blue"),  # its moving average
               "val": dict(ls="none", marker="o", ms=5, c="tab:orange")}  # validation: points


def loss_panels(panels: dict[str, dict[str, Series]], path: Path) -> Path:
    """One panel per title, each with series keyed "train", "smooth", "val" (any may be missing) over steps.

    The y-axis is logarithmic when every plotted value is positive.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for role, (label, x, y) in series.items():
            ax.plot(x, y, label=label, **LOSS_STYLES[role])
        positive = all(bool((y > 0).all()) for _, _, y in series.values())
        ax.set_yscale("log" if positive else "linear")
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save_figure(plt, fig, path)


QUALITY_PANELS = (("pixel_fd", "pixel FD / floor's"), ("precision", "precision / floor's"),
                  ("recall", "recall / floor's"))


def quality_panels(runs: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Sample quality over training, each metric over its floor (1 = as good as real images): one column per metric,
    against wall seconds (top row) and optimiser steps (bottom row), one line per run.

    runs: label -> {"step", "elapsed_s", "pixel_fd", "precision", "recall"} arrays, the metrics already as ratios.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(QUALITY_PANELS), figsize=(4.5 * len(QUALITY_PANELS), 7.2), squeeze=False)
    for row, (x_key, xlabel) in enumerate((("elapsed_s", "wall seconds since training started"),
                                           ("step", "optimiser step"))):
        for ax, (metric, title) in zip(axes[row], QUALITY_PANELS):
            for label, series in runs.items():
                ax.plot(series[x_key], series[metric], marker="o", ms=3, label=label)
            ax.axhline(1.0, color="k", lw=0.8, ls="--", label="real floor")
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save_figure(plt, fig, path)
