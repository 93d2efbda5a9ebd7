"""Figures and the self-contained HTML report.

``plots`` turns numpy arrays into matplotlib figures in one consistent look;
``html`` assembles headline numbers, explanations, figures and tables into a
single offline HTML file. Neither needs torch.
"""

from prefdyn.reports._style import D_CMAP, PALETTE, d_colors, style
from prefdyn.reports.html import Link, Report, Section
from prefdyn.reports.plots import (
    close_figure,
    fig_to_png_bytes,
    plot_bars,
    plot_curves,
    plot_grid,
    plot_heatmap,
    plot_pair_curves,
    plot_projection_2d,
    plot_scatter_rank,
    save_figure,
    spearman,
    subplots_grid,
)
from prefdyn.reports.plots_displacement import (
    plot_grouped_bar_panels,
    plot_grouped_bars,
    plot_score_histogram,
)
from prefdyn.reports.plots_misalignment import plot_fallback_curves
from prefdyn.reports.projections import pca_2d, plot_before_after, umap_2d

__all__ = [
    "D_CMAP", "Link", "PALETTE", "Report", "Section", "close_figure", "d_colors", "fig_to_png_bytes",
    "pca_2d", "plot_before_after", "plot_bars", "plot_curves", "plot_fallback_curves",
    "plot_grouped_bar_panels", "plot_grouped_bars", "plot_score_histogram", "plot_grid", "plot_heatmap", "plot_pair_curves",
    "plot_projection_2d", "plot_scatter_rank", "save_figure", "spearman", "style",
    "subplots_grid", "umap_2d",
]
