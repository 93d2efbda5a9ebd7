"""Figures of the likelihood-displacement experiments and the pair filter (Razin et al. 2024).

Same contract as :mod:`prefdyn.reports.plots`: plain lists or arrays in, a
pyplot-free matplotlib ``Figure`` out, drawn in the prefdyn look.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from prefdyn.reports._style import MUTED, style
from prefdyn.reports.plots import _new_axes, subplots_grid

__all__ = ["plot_grouped_bar_panels", "plot_grouped_bars", "plot_score_histogram"]

ArrayLike = Sequence[float] | np.ndarray


def plot_grouped_bars(groups: Sequence[str], series: Mapping[str, ArrayLike], *, ylabel: str = "",
                      rotate: bool = False, legend: bool = True, zero_line: bool = False,
                      figsize: tuple[float, float] = (6.4, 3.4), ax: Axes | None = None) -> Figure:
    """One cluster of bars per group, one bar per series (``{label: value per group}``),
    e.g. pi(y+)/pi(y-) before and after per answer pair, or a statistic per run and
    evaluation set."""
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    with style():
        fig, ax = _new_axes(ax, figsize)
        for j, (label, values) in enumerate(series.items()):
            offset = (j - (len(series) - 1) / 2) * width
            ax.bar(x + offset, np.asarray(values, dtype=float), width=width, label=label)
        ax.set_xticks(x, list(groups), rotation=20 if rotate else 0, ha="right" if rotate else "center")
        ax.set_ylabel(ylabel)
        if zero_line:
            ax.axhline(0, color=MUTED, lw=0.8)
        if legend:
            ax.legend(fontsize=8)
    return fig


def plot_grouped_bar_panels(groups: Sequence[str], panels: Mapping[str, Mapping[str, ArrayLike]],
                            *, rotate: bool = True) -> Figure:
    """Side-by-side :func:`plot_grouped_bars`, one panel per ``{ylabel: series}``; the
    legend is drawn on the first panel only."""
    fig, axes = subplots_grid(len(panels), ncols=len(panels), panel_size=(4.5, 3.4))
    for k, (ax, (ylabel, series)) in enumerate(zip(axes, panels.items())):
        plot_grouped_bars(groups, series, ylabel=ylabel, rotate=rotate, legend=k == 0,
                          zero_line=True, ax=ax)
    return fig


def plot_score_histogram(scores: ArrayLike, *, xlabel: str, threshold: float | None = None,
                         threshold_label: str = "lowest dropped score") -> Figure:
    """Histogram of per-pair scores; ``threshold`` marks where dropping starts."""
    scores = np.asarray(scores, dtype=float)
    with style():
        fig, ax = _new_axes(None, (6.0, 3.2))
        ax.hist(scores, bins=min(50, max(5, len(scores) // 5)), color="#7a8ca6")
        if threshold is not None:
            ax.axvline(float(threshold), color="#c0392b", linestyle="--", label=threshold_label)
            ax.legend()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
    return fig
