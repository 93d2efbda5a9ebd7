"""Figure functions: numpy arrays or plain lists in, a matplotlib ``Figure`` out.

Every function takes ``ax=None``: without it, it draws on a new, pyplot-free
``Figure`` (so nothing piles up in pyplot's figure registry and no backend is
ever chosen or forced); with it, it draws on that axes and returns its figure,
which is how :func:`plot_grid` builds small multiples. The prefdyn look is
applied only while drawing (see :mod:`prefdyn.reports._style`).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from prefdyn.reports._style import (
    ACCENT, D_CMAP, FIGSIZE, INK, MUTED, NEUTRAL_BAR, PALETTE, PANEL_SIZE, categorical,
    d_norm, format_number, label_points, style, text_color_on,
)

ArrayLike = Sequence[float] | np.ndarray
Steps = ArrayLike | Mapping[str, ArrayLike] | None

__all__ = [
    "fig_to_png_bytes", "save_figure", "close_figure", "subplots_grid", "plot_grid",
    "plot_curves", "plot_pair_curves", "plot_scatter_rank", "plot_bars",
    "plot_heatmap", "plot_projection_2d", "spearman",
]


# ---------------------------------------------------------------- figures ---

def _root_figure(ax: Axes) -> Figure:
    try:
        return ax.get_figure(root=True)  # matplotlib >= 3.10: skip subfigures
    except TypeError:
        fig = ax.figure
        while hasattr(fig, "figure") and fig.figure is not fig:
            fig = fig.figure
        return fig


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    if ax is not None:
        return _root_figure(ax), ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def fig_to_png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes (white background, tight margins)."""
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.06)
    return buf.getvalue()


def close_figure(fig: Figure) -> None:
    """Release ``fig`` from pyplot's registry if pyplot manages it (else a no-op)."""
    pyplot = sys.modules.get("matplotlib.pyplot")  # never import pyplot ourselves
    if pyplot is not None:
        pyplot.close(fig)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fig_to_png_bytes(fig, dpi=dpi))
    close_figure(fig)
    return path


def subplots_grid(n: int, ncols: int = 3, *, panel_size: tuple[float, float] = PANEL_SIZE,
                  sharex: bool = False, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels in rows of ``ncols``; returns the ``n`` axes, flat.

    Unused cells of the last row are removed.
    """
    if n < 1:
        raise ValueError(f"subplots_grid needs n >= 1, got {n}")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    with style():
        fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
        grid = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    axes = list(grid.ravel())
    for extra in axes[n:]:
        extra.remove()
    return fig, axes[:n]


def plot_grid(panels: Sequence[Callable[..., object]], *, ncols: int = 3,
              titles: Sequence[str] | None = None, suptitle: str | None = None,
              panel_size: tuple[float, float] = PANEL_SIZE, sharex: bool = False,
              sharey: bool = False) -> Figure:
    """Small multiples: ``panels[i](ax=axes[i])`` draws panel ``i``.

    Any plot function here fits, e.g.
    ``functools.partial(plot_curves, steps, curves, ylabel="loss")``.
    """
    fig, axes = subplots_grid(len(panels), ncols, panel_size=panel_size,
                              sharex=sharex, sharey=sharey)
    ncols = max(1, min(ncols, len(panels)))
    with style():
        for i, (panel, ax) in enumerate(zip(panels, axes)):
            panel(ax=ax)
            if titles is not None:
                _set_title(ax, titles[i])
            # Shared axes need their labels only on the outer panels.
            if sharey and i % ncols:
                ax.set_ylabel("")
                ax.tick_params(labelleft=False)
            if sharex and i + ncols < len(panels):
                ax.set_xlabel("")
                ax.tick_params(labelbottom=False)
        if suptitle:
            fig.suptitle(suptitle, x=0.01, ha="left", fontsize=11, fontweight="bold")
    return fig


# --------------------------------------------------------------- helpers ---

def _curves_figsize(n_names: int) -> tuple[float, float]:
    # Past eight names the legend moves outside, to the right: make room for it.
    return (FIGSIZE[0] + 2.4, FIGSIZE[1]) if n_names > 8 else FIGSIZE


def _set_title(ax: Axes, title: str, pad: float | None = None) -> None:
    # Left-aligned like a heading, but in the centre slot so ax.get_title() finds it.
    ax.set_title(title, loc="center", x=0.0, ha="left", pad=pad)


def _steps_for(steps: Steps, name: str, n: int, what: str) -> np.ndarray:
    if steps is None:
        return np.arange(n)
    x = np.asarray(steps[name] if isinstance(steps, Mapping) else steps, dtype=float)
    if x.shape != (n,):
        raise ValueError(f"{what} {name!r} has {n} values but its steps have shape {x.shape}")
    return x


def _style_legend(ax: Axes, entries: list[tuple[str, str]], **kw) -> None:
    """A grey key for line styles (e.g. solid = train, dashed = test)."""
    handles = [Line2D([], [], color=MUTED, linestyle=ls, lw=1.5) for ls, _ in entries]
    leg = ax.legend(handles, [label for _, label in entries], **kw)
    ax.add_artist(leg)


def _name_legend(ax: Axes, handles: list[Line2D], labels: list[str]) -> None:
    if len(labels) <= 1:
        return  # a lone curve is named by the title
    if len(labels) <= 8:
        ax.legend(handles, labels, loc="best")
    else:  # many behaviours: outside, to the right, in two columns if long
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=1 if len(labels) <= 16 else 2, fontsize=7.5)


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return "p = n/a"
    return f"p = {p:.2g}" if p >= 1e-3 else "p < 0.001"


def spearman(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (NaN when undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan"), float("nan")
    res = stats.spearmanr(x[ok], y[ok])
    return float(res[0]), float(res[1])


# ---------------------------------------------------------------- curves ---

def plot_curves(steps: Steps, curves: Mapping[str, ArrayLike], *,
                color_values: Mapping[str, float] | None = None, color_label: str = "D",
                ylabel: str = "", title: str = "", xlabel: str = "step", logy: bool = False,
                bands: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
                bounds: Mapping[str, ArrayLike] | None = None,
                dashed: Mapping[str, ArrayLike] | None = None, dashed_steps: Steps = None,
                solid_label: str | None = None, dashed_label: str | None = None,
                bound_label: str = "bound", figsize: tuple[float, float] | None = None,
                ax: Axes | None = None) -> Figure:
    """One curve per name (e.g. per-behaviour DPO loss), optionally coloured by D.

    ``color_values`` colours each curve by its value on the distinguishability
    colour map and adds a colour bar labelled ``color_label`` (Im & Li 2024,
    Fig. 3). ``bands`` shades ``(lo, hi)`` around a curve (e.g. seeds),
    ``bounds`` draws a dashed line of the same colour (the Theorem 4.1 bound next
    to the measured ``||W(t) - W(0)||``, Fig. 4), ``dashed`` draws a second
    curve per name (e.g. test next to train) on ``dashed_steps`` (default
    ``steps``). ``steps`` is one array for all curves, a mapping name -> array,
    or None (0, 1, 2, ...).
    """
    names = list(curves)
    if color_values is not None:
        missing = [n for n in names if n not in color_values]
        if missing:
            raise ValueError(f"color_values has no value for {missing}")
        # Legend reads in the colour bar's order: largest value on top.
        names.sort(key=lambda n: -float(color_values[n]))
        norm = d_norm([color_values[n] for n in names])
        colors = {n: D_CMAP(norm(float(color_values[n]))) for n in names}
    else:
        colors = categorical(names)
    with style():
        fig, ax = _new_axes(ax, figsize or _curves_figsize(len(names)))
        handles, labels = [], []
        for name in names:
            y = np.asarray(curves[name], dtype=float)
            x = _steps_for(steps, name, len(y), "curve")
            (line,) = ax.plot(x, y, color=colors[name], zorder=3)
            handles.append(line)
            labels.append(name if color_values is None
                          else f"{name} ({color_label}={float(color_values[name]):.2g})")
            if bands and name in bands:
                lo, hi = (np.asarray(b, dtype=float) for b in bands[name])
                ax.fill_between(x, lo, hi, color=colors[name], alpha=0.16, lw=0, zorder=2)
            if bounds and name in bounds:
                yb = np.asarray(bounds[name], dtype=float)
                ax.plot(_steps_for(steps, name, len(yb), "bound"), yb, color=colors[name],
                        linestyle="--", lw=1.3, zorder=3)
            if dashed and name in dashed:
                yd = np.asarray(dashed[name], dtype=float)
                xd = _steps_for(dashed_steps if dashed_steps is not None else steps,
                                name, len(yd), "dashed curve")
                ax.plot(xd, yd, color=colors[name], linestyle=":" if bounds else "--",
                        lw=1.4, zorder=3)
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.margins(x=0.01)
        keys = []
        if dashed:
            keys += [("-", solid_label or "train"),
                     (":" if bounds else "--", dashed_label or "test")]
        if bounds:
            if not dashed:
                keys.append(("-", solid_label or "measured"))
            keys.append(("--", bound_label))
        if keys:
            _style_legend(ax, keys, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                          ncol=len(keys), borderaxespad=0.2, handlelength=2.4)
        _name_legend(ax, handles, labels)
        if color_values is not None:
            cbar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=D_CMAP), ax=ax,
                                pad=0.02, fraction=0.04, aspect=30)
            cbar.set_label(color_label)
            cbar.outline.set_visible(False)
            cbar.ax.tick_params(labelsize=8)
        # The line-style key sits just above the axes; lift the title over it.
        _set_title(ax, title, pad=22 if keys else None)
    return fig


def plot_pair_curves(steps: Steps, curves_a: Mapping[str, ArrayLike],
                     curves_b: Mapping[str, ArrayLike], *, label_a: str, label_b: str,
                     ylabel: str = "", title: str = "", xlabel: str = "step",
                     annotations: Mapping[str, str] | None = None, logy: bool = False,
                     steps_b: Steps = None, figsize: tuple[float, float] | None = None,
                     ax: Axes | None = None) -> Figure:
    """Two curves per name in one colour: ``curves_a`` solid, ``curves_b`` dashed.

    E.g. misalignment trained from the base model (a) and from the aligned
    model (b); ``annotations[name]`` (e.g. ``"3.2x faster"``) goes into the legend.
    """
    names = list(dict.fromkeys([*curves_a, *curves_b]))
    colors = categorical(names)
    with style():
        fig, ax = _new_axes(ax, figsize or _curves_figsize(len(names)))
        handles, labels = [], []
        for name in names:
            if name in curves_a:
                y = np.asarray(curves_a[name], dtype=float)
                ax.plot(_steps_for(steps, name, len(y), label_a), y, color=colors[name], zorder=3)
            if name in curves_b:
                y = np.asarray(curves_b[name], dtype=float)
                xb = _steps_for(steps_b if steps_b is not None else steps, name, len(y), label_b)
                ax.plot(xb, y, color=colors[name], linestyle="--", zorder=3)
            handles.append(Line2D([], [], color=colors[name], lw=2.2))
            note = (annotations or {}).get(name)
            labels.append(f"{name}: {note}" if note else name)
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.margins(x=0.01)
        _style_legend(ax, [("-", label_a), ("--", label_b)], loc="lower left",
                      bbox_to_anchor=(0.0, 1.0), ncol=2, borderaxespad=0.2, handlelength=2.4)
        _name_legend(ax, handles, labels)
        _set_title(ax, title, pad=22)
    return fig


# ------------------------------------------------------------- scatter ---

def plot_scatter_rank(x: ArrayLike, y: ArrayLike, labels: Sequence[str] | None = None, *,
                      xlabel: str = "", ylabel: str = "", title: str = "",
                      figsize: tuple[float, float] | None = None,
                      ax: Axes | None = None, p: float | None = None,
                      p_label: str = "") -> Figure:
    """Scatter with labelled points, a least-squares line and Spearman's rho in the title.

    ``p``: the p-value to print, from the caller's test (e.g. an exact permutation p for a
    few points, where scipy's t approximation says p < 0.001 for n = 3), so that the plot
    shows the same test as the headline; ``p_label`` names it ("exact"). Default: scipy's."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length, got {x.shape} and {y.shape}")
    rho, scipy_p = spearman(x, y)
    p = scipy_p if p is None else p
    p_text = f"{p_label} {_format_p(p)}".strip()
    stat = (f"Spearman ρ = {rho:.2f}, {p_text}, n = {len(x)}" if np.isfinite(rho)
            else f"Spearman ρ = n/a, n = {len(x)}")
    with style():
        fig, ax = _new_axes(ax, figsize or (5.6, 4.0))
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
            slope, intercept = np.polyfit(x[ok], y[ok], 1)
            xs = np.linspace(x[ok].min(), x[ok].max(), 50)
            ax.plot(xs, slope * xs + intercept, color=MUTED, lw=1.1, linestyle="--",
                    zorder=2, label="least squares")
        ax.scatter(x, y, s=42, color=ACCENT, edgecolor="white", linewidth=0.8, zorder=3)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        _set_title(ax, f"{title}\n{stat}" if title else stat)
        ax.margins(0.12)
        if labels is not None:
            label_points(ax, x, y, [str(label) for label in labels], fontsize=8.0)
    return fig


def plot_projection_2d(points: np.ndarray, classes: ArrayLike, *, title: str = "",
                       class_names: Sequence[str] = ("prefers Yes", "prefers No"),
                       xlabel: str = "component 1", ylabel: str = "component 2",
                       figsize: tuple[float, float] | None = None,
                       ax: Axes | None = None) -> Figure:
    """A 2-D projection (PCA, UMAP) of embeddings, one colour per class.

    ``classes`` are indices into ``class_names``: ``0``/``False`` is
    ``class_names[0]``, ``1``/``True`` is ``class_names[1]``, and so on.
    """
    points = np.asarray(points, dtype=float)
    classes = np.asarray(classes).astype(int)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(classes):
        raise ValueError(f"points must be (n, 2) with n = len(classes); got {points.shape} "
                         f"and {len(classes)} classes")
    with style():
        fig, ax = _new_axes(ax, figsize or (4.8, 4.0))
        for k in np.unique(classes):
            sel = classes == k
            name = class_names[k] if 0 <= k < len(class_names) else f"class {k}"
            ax.scatter(points[sel, 0], points[sel, 1], s=16, alpha=0.75, linewidth=0,
                       color=PALETTE[k % len(PALETTE)], label=f"{name} (n={sel.sum()})")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        _set_title(ax, title)
        if len(classes):
            ax.legend(loc="best", markerscale=1.4)
    return fig


# ------------------------------------------------------- bars, heatmaps ---

def plot_bars(names: Sequence[str], values: ArrayLike, *, ylabel: str = "", title: str = "",
              highlight: str | None = None, errors: ArrayLike | None = None, sort: bool = True,
              horizontal: bool | None = None, value_format: str = "{:.3g}",
              figsize: tuple[float, float] | None = None,
              ax: Axes | None = None) -> Figure:
    """A bar per name with its value printed; ``highlight`` names the one bar in colour.

    With no ``highlight`` every bar is in the accent colour. ``horizontal``
    defaults to True when names are long or many (they stay readable).
    """
    names = [str(n) for n in names]
    values = np.asarray(values, dtype=float)
    errs = None if errors is None else np.asarray(errors, dtype=float)
    if len(names) != len(values):
        raise ValueError(f"{len(names)} names but {len(values)} values")
    order = np.argsort(-values, kind="stable") if sort else np.arange(len(values))
    names, values = [names[i] for i in order], values[order]
    errs = None if errs is None else errs[order]
    if horizontal is None:
        horizontal = len(names) > 8 or max((len(n) for n in names), default=0) > 12
    colors = [ACCENT if highlight is None or n == highlight else NEUTRAL_BAR for n in names]
    with style():
        size = (6.4, max(2.2, 0.32 * len(names) + 0.9)) if horizontal else FIGSIZE
        fig, ax = _new_axes(ax, figsize or size)
        if horizontal:
            bars = ax.barh(names, values, xerr=errs, color=colors, height=0.68,
                           error_kw={"ecolor": INK, "lw": 0.9, "capsize": 2.5})
            ax.invert_yaxis()  # first (largest) on top
            ax.set_xlabel(ylabel)
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.12)
        else:
            bars = ax.bar(names, values, yerr=errs, color=colors, width=0.68,
                          error_kw={"ecolor": INK, "lw": 0.9, "capsize": 2.5})
            ax.set_ylabel(ylabel)
            ax.grid(axis="x", visible=False)
            ax.margins(y=0.12)
            if any(len(n) > 6 for n in names):
                ax.tick_params(axis="x", labelrotation=30)
                for label in ax.get_xticklabels():
                    label.set_horizontalalignment("right")
        ax.bar_label(bars, labels=[format_number(value_format, v) for v in values], padding=3,
                     fontsize=8, color=INK)
        (ax.axvline if horizontal else ax.axhline)(0, color=MUTED, lw=0.8)
        _set_title(ax, title)
    return fig


def plot_heatmap(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str], *,
                 title: str = "", cmap: str | Colormap = "RdBu_r", center: float | None = 0.0,
                 annotate: bool = True, value_format: str = "{:.2f}",
                 colorbar_label: str = "", figsize: tuple[float, float] | None = None,
                 ax: Axes | None = None) -> Figure:
    """A labelled matrix (e.g. the priority gap between behaviours), values printed in cells.

    With ``center`` the colour scale is symmetric around it (diverging maps);
    NaN cells (e.g. a diagonal) are pale grey and unlabelled.
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(row_names), len(col_names)):
        raise ValueError(f"matrix is {m.shape} but there are {len(row_names)} row and "
                         f"{len(col_names)} column names")
    finite = m[np.isfinite(m)]
    if center is not None:
        half = float(np.max(np.abs(finite - center))) if finite.size else 1.0
        half = half or 1.0
        norm = Normalize(center - half, center + half)
    else:
        norm = d_norm(finite)
    rows, cols = m.shape
    with style():
        default = (min(2.2 + 0.62 * cols, 9.0), min(1.6 + 0.42 * rows, 8.0))
        fig, ax = _new_axes(ax, figsize or default)
        cmap = colormaps[cmap] if isinstance(cmap, str) else cmap
        image = ax.imshow(np.ma.masked_invalid(m), norm=norm, aspect="auto",
                          interpolation="nearest",
                          cmap=cmap.with_extremes(bad="#f1f3f5"))  # NaN cells: pale grey
        ax.set_xticks(range(cols), [str(c) for c in col_names], rotation=35, ha="right")
        ax.set_yticks(range(rows), [str(r) for r in row_names])
        ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
        ax.grid(False)
        ax.grid(which="minor", color="white", linewidth=1.5)  # cell borders
        ax.tick_params(which="both", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if annotate:
            for i in range(rows):
                for j in range(cols):
                    if np.isfinite(m[i, j]):
                        ax.text(j, i, format_number(value_format, m[i, j]), ha="center",
                                va="center", fontsize=7.5,
                                color=text_color_on(image.cmap(norm(m[i, j]))))
        cbar = ax.figure.colorbar(image, ax=ax, pad=0.02, fraction=0.05, aspect=25)
        cbar.set_label(colorbar_label)
        cbar.outline.set_visible(False)
        cbar.ax.tick_params(labelsize=8)
        _set_title(ax, title)
    return fig
