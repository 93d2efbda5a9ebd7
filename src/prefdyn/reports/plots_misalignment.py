"""Figures of the misalignment experiments (Im & Li, ICML 2024, Fig. 9 and 15-16).

Same contract as :mod:`prefdyn.reports.plots`: arrays in, a pyplot-free
``Figure`` out.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

from prefdyn.reports._style import style
from prefdyn.reports.plots import ArrayLike, Steps, plot_curves

__all__ = ["plot_fallback_curves"]


def plot_fallback_curves(steps: Steps, curves: Mapping[str, ArrayLike], *, base_level: float,
                         budget: float, ylabel: str = "", title: str = "") -> Figure:
    """:func:`plot_curves` of alignment and misalignment runs, with the base model's
    starting value as a dotted line and the end of the speed-up step budget as a
    dashed one (Im & Li, Fig. 15: does the aligned model fall back to the base
    within the first steps?)."""
    fig = plot_curves(steps, curves, ylabel=ylabel, title=title)
    ax = fig.axes[0]
    with style():
        ax.axhline(base_level, color="0.4", lw=1.0, linestyle=":", zorder=1)
        ax.axvline(budget, color="0.7", lw=0.8, linestyle="--", zorder=1)
    return fig
