"""Figures of the vanishing-gradient experiments (Razin et al., ICLR 2024).

Same contract as :mod:`prefdyn.reports.plots`: arrays in, a pyplot-free ``Figure`` out.
Reward std spans orders of magnitude (a token at 1e-4 probability has std ~1e-2), so
std axes are logarithmic; a std of exactly 0 is drawn at the axis floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from prefdyn.reports._style import ACCENT, BAD, INK, MUTED, PALETTE, style
from prefdyn.reports.plots import ArrayLike, _new_axes, _set_title, plot_grid

__all__ = ["plot_gain_by_std", "plot_grad_vs_std", "plot_group_gains", "plot_prevalence",
           "plot_std_census", "plot_warm_start"]

FLOOR = 1e-8


def _pos(x: ArrayLike) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=float), FLOOR, None)


def _census_panel(std: np.ndarray, mean: np.ndarray, small_std: float, low_reward: float,
                  title: str, ax: Axes) -> None:
    flagged = (std < small_std) & (mean < low_reward)
    ax.scatter(_pos(std[~flagged]), mean[~flagged], s=12, color=ACCENT, alpha=0.7, lw=0,
               label="other inputs")
    ax.scatter(_pos(std[flagged]), mean[flagged], s=14, color=BAD, alpha=0.8, lw=0,
               label=f"small std & low reward ({int(flagged.sum())}/{len(std)})")
    ax.set_xscale("log")
    ax.axvline(small_std, color=MUTED, lw=0.8, ls="--")
    ax.axhline(low_reward, color=MUTED, lw=0.8, ls=":")
    ax.set_xlabel("reward std under the model")
    ax.set_ylabel("reward mean under the model")
    ax.legend(fontsize=7, loc="best")
    _set_title(ax, title)


def plot_std_census(panels: Mapping[str, tuple[ArrayLike, ArrayLike]], *, small_std: float,
                    low_reward: Mapping[str, float]) -> Figure:
    """One panel per (task, split): reward mean against std per input (log x), the
    small-std / low-reward inputs (Finding I) in red, thresholds dashed/dotted."""
    def panel(name, std, mean):
        return lambda ax: _census_panel(np.asarray(std, float), np.asarray(mean, float),
                                        small_std, low_reward[name], name, ax)

    return plot_grid([panel(n, s, m) for n, (s, m) in panels.items()], ncols=2,
                     panel_size=(5.2, 3.8))


def plot_gain_by_std(std: Mapping[str, ArrayLike], gain: Mapping[str, ArrayLike], *,
                     bin_labels: Sequence[str], bin_gain: Mapping[str, ArrayLike],
                     bin_std: Mapping[str, ArrayLike], ax: Axes | None = None) -> Figure:
    """Reward gain of each input against its initial std (log x), one colour per split,
    with the mean gain of each std bin as a line (Finding II)."""
    with style():
        fig, ax = _new_axes(ax, (6.4, 4.2))
        for i, split in enumerate(std):
            c = PALETTE[i % len(PALETTE)]
            ax.scatter(_pos(std[split]), np.asarray(gain[split], float), s=10, alpha=0.45,
                       color=c, lw=0)
            ax.plot(_pos(bin_std[split]), np.asarray(bin_gain[split], float), marker="o",
                    color=c, lw=1.6, label=f"{split}: mean gain per std bin")
        ax.set_xscale("log")
        ax.axhline(0, color=MUTED, lw=0.8)
        ax.set_xlabel("initial reward std (before RFT)")
        ax.set_ylabel("reward gain (after RFT - before)")
        ax.legend(fontsize=7)
        _set_title(ax, f"{len(bin_labels)} std bins of equal counts")
    return fig


def plot_grad_vs_std(std: ArrayLike, grad: ArrayLike, *, slope: float, intercept: float,
                     envelope: float | None, groups: ArrayLike | None = None,
                     group_names: Sequence[str] = (), ylabel: str = "||grad V_x||",
                     ax: Axes | None = None) -> Figure:
    """Per-input expected-gradient norm against reward std on log-log axes: the points,
    the least-squares line (``slope``) and ``envelope * std^(2/3)``, the theorem's order
    through the highest point (its constant is measured, not the theorem's)."""
    std, grad = _pos(std), _pos(grad)
    with style():
        fig, ax = _new_axes(ax, (6.4, 4.4))
        g = np.zeros(len(std), int) if groups is None else np.asarray(groups, int)
        for j in np.unique(g):
            name = group_names[j] if j < len(group_names) else None
            ax.scatter(std[g == j], grad[g == j], s=12, alpha=0.7, lw=0,
                       color=PALETTE[j % len(PALETTE)], label=name)
        xs = np.geomspace(std.min(), std.max(), 50)
        ax.plot(xs, np.exp(intercept) * xs ** slope, color=INK, lw=1.2,
                label=f"fit: slope {slope:.2f}")
        if envelope is not None:
            ax.plot(xs, envelope * xs ** (2 / 3), color=BAD, lw=1.2, ls="--",
                    label="std^(2/3) through the highest point")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("reward std under the model")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    return fig


def plot_prevalence(shares: ArrayLike, rewards: Mapping[str, ArrayLike], *, start: float | None = None,
                    ax: Axes | None = None) -> Figure:
    """Reward after the same RFT budget against the share of small-std inputs in the
    training mix, one line per evaluation set (Finding III)."""
    with style():
        fig, ax = _new_axes(ax, (6.0, 4.0))
        x = 100 * np.asarray(shares, float)
        for i, (name, r) in enumerate(rewards.items()):
            ax.plot(x, np.asarray(r, float), marker="o", color=PALETTE[i % len(PALETTE)], label=name)
        if start is not None:
            ax.axhline(start, color=MUTED, lw=0.8, ls=":", label="before RFT (held-out)")
        ax.set_xlabel("small-std inputs in the training mix (%)")
        ax.set_ylabel("mean reward after RFT")
        ax.legend(fontsize=7)
    return fig


def plot_group_gains(names: Sequence[str], gains: Mapping[str, ArrayLike], *,
                     ylabel: str = "reward gain", ax: Axes | None = None) -> Figure:
    """Grouped bars: one group per run (``names``), one bar per input group (``gains``)."""
    names = list(names)
    with style():
        fig, ax = _new_axes(ax, (max(6.0, 1.3 * len(names) + 2), 4.0))
        width = 0.8 / max(1, len(gains))
        x = np.arange(len(names))
        for i, (group, vals) in enumerate(gains.items()):
            bars = ax.bar(x + (i - (len(gains) - 1) / 2) * width, np.asarray(vals, float), width,
                          color=PALETTE[i % len(PALETTE)], label=group)
            ax.bar_label(bars, fmt="%.2g", fontsize=7, padding=2)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.axhline(0, color=MUTED, lw=0.8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    return fig


def plot_warm_start(names: Sequence[str], reward: Mapping[str, ArrayLike],
                    small_counts: Mapping[str, ArrayLike]) -> Figure:
    """Two panels: held-out reward per warm start (after SFT, after RFT) and the number of
    small-std train inputs (before SFT, after SFT)."""
    return plot_grid([lambda ax: plot_group_gains(names, reward, ylabel="held-out mean reward", ax=ax),
                      lambda ax: plot_group_gains(names, small_counts, ylabel="small-std train inputs",
                                                  ax=ax)],
                     ncols=2, panel_size=(6.2, 4.0))
