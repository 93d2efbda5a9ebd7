"""One look for every prefdyn figure and report.

The matplotlib settings are applied only inside :func:`style` (a
``matplotlib.rc_context``), never at import, so importing prefdyn leaves a
user's own plots alone. The HTML report reuses the same colours
(:data:`ACCENT`, :data:`INK`, ...) so that figures and page match.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from cycler import cycler
from matplotlib import colors as mcolors
from matplotlib import colormaps, rc_context
from matplotlib.colors import Colormap, LinearSegmentedColormap, Normalize

if TYPE_CHECKING:
    from matplotlib.axes import Axes

INK = "#1f2933"        # text
MUTED = "#616e7c"      # secondary text, tick labels
RULE = "#d9dee4"       # axis lines, table borders
GRID = "#eceff3"
ACCENT = "#2f6fb3"     # the highlighted bar, scatter points, card edges
WARN = "#b7791f"
BAD = "#c0392b"
GOOD = "#2f855a"
NEUTRAL_BAR = "#b8c2cc"

# Categorical colours (behaviours without a D value, classes, pairs):
# distinguishable in print and for the common colour-vision deficiencies.
PALETTE: tuple[str, ...] = (
    "#2f6fb3", "#e07b39", "#3f9a5b", "#c44e52", "#8064b4",
    "#8c6d4f", "#d177b0", "#6b7785", "#b9a23a", "#3ea6c0",
)

# Distinguishability D: sequential, dark (small D, slow to learn) to warm
# (large D, fast). Plasma without its pale-yellow end, so that every value
# stays visible as a thin line on white paper.
D_CMAP: Colormap = LinearSegmentedColormap.from_list(
    "prefdyn_D",
    [mcolors.to_hex(c) for c in colormaps["plasma"](np.linspace(0.0, 0.86, 32))],
)

RC: dict[str, object] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "sans-serif"],
    "font.size": 9.5,
    "text.color": INK,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlepad": 8.0,
    "axes.labelsize": 9.5,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#9aa5b1",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=list(PALETTE)),
    "axes.facecolor": "white",
    "grid.color": GRID,
    "grid.linewidth": 0.7,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": MUTED,
    "ytick.labelcolor": MUTED,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "xtick.major.size": 3.0,
    "ytick.major.size": 3.0,
    # A translucent white box keeps a legend readable over the curves it sits on.
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "legend.facecolor": "white",
    "legend.edgecolor": "none",
    "legend.fancybox": False,
    "legend.fontsize": 8.5,
    "legend.title_fontsize": 8.5,
    "legend.handlelength": 1.8,
    "lines.linewidth": 1.7,
    "lines.solid_capstyle": "round",
    "patch.linewidth": 0.0,
    "figure.facecolor": "white",
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "savefig.facecolor": "white",
    "image.cmap": "viridis",
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
}

FIGSIZE = (6.4, 3.8)      # one full-width panel
PANEL_SIZE = (3.1, 2.5)   # one small multiple


@contextmanager
def style() -> Iterator[None]:
    """Apply the prefdyn look for the duration of the block."""
    with rc_context(RC):
        yield


def d_norm(values: Sequence[float] | np.ndarray) -> Normalize:
    """A colour normalisation spanning ``values`` (never a zero-width range)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
    return Normalize(lo, hi)


def d_colors(values: dict[str, float], cmap: Colormap = D_CMAP) -> dict[str, tuple]:
    """Map each name's distinguishability value to an RGBA colour."""
    norm = d_norm(list(values.values()))
    return {name: cmap(norm(float(v))) for name, v in values.items()}


def categorical(names: Sequence[str]) -> dict[str, str]:
    """One palette colour per name, in order (cycling past ten)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def text_color_on(rgba) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = mcolors.to_rgb(rgba)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return INK if luminance > 0.5 else "white"


def format_number(fmt: str, value: float) -> str:
    """``fmt.format(value)`` with a typographic minus and never ``-0.00``."""
    text = fmt.format(value)
    if text.startswith("-") and not any(c in "123456789" for c in text.split("e")[0]):
        text = text[1:]
    return text.replace("-", "\u2212")


# Where a point's label may go: (dx, dy) in points from the point, ha, va.
_LABEL_SPOTS = ((5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
                (-5, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"))


def label_points(ax: Axes, x: np.ndarray, y: np.ndarray, labels: list[str],
                 fontsize: float) -> None:
    """Label each point at the spot (of six around it) that overlaps least.

    Overlap with earlier labels, with the points and with the axes edge is
    estimated in points from the current limits; good enough to keep the
    handful of behaviour names in a rank plot apart, with no renderer needed.
    """
    fig = ax.figure
    while getattr(fig, "figure", fig) is not fig:  # a subfigure: size comes from the root
        fig = fig.figure
    pos = ax.get_position()
    width, height = pos.width * fig.get_figwidth() * 72, pos.height * fig.get_figheight() * 72
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    px = (x - x0) / ((x1 - x0) or 1) * width
    py = (y - y0) / ((y1 - y0) or 1) * height
    dots = [(a - 3.5, b - 3.5, a + 3.5, b + 3.5) for a, b in zip(px, py) if np.isfinite(a + b)]
    boxes: list[tuple[float, float, float, float]] = []

    def overlap(r, q):  # area shared by boxes (left, bottom, right, top)
        dx = min(r[2], q[2]) - max(r[0], q[0])
        dy = min(r[3], q[3]) - max(r[1], q[1])
        return max(0.0, dx) * max(0.0, dy)

    for xi, yi, a, b, label in zip(x, y, px, py, labels):
        if not np.isfinite(a + b):
            continue
        w, h = 0.58 * fontsize * len(label), 1.25 * fontsize
        best = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            left = a + dx - {"left": 0, "right": w, "center": w / 2}[ha]
            bottom = b + dy - (0 if va == "bottom" else h)
            box = (left, bottom, left + w, bottom + h)
            outside = w * h - overlap(box, (0, 0, width, height))
            cost = (sum(overlap(box, q) for q in boxes) + sum(overlap(box, q) for q in dots)
                    + 2 * outside)
            if best is None or cost < best[0] - 1e-9:
                best = (cost, box, dx, dy, ha, va)
        _, box, dx, dy, ha, va = best
        boxes.append(box)
        ax.annotate(label, (xi, yi), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                    fontsize=fontsize, color=INK, zorder=4)
