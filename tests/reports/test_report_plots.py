"""Figure functions: small synthetic arrays in, the expected artists out."""

from __future__ import annotations

import functools
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from prefdyn.reports import (
    D_CMAP, d_colors, fig_to_png_bytes, plot_bars, plot_curves, plot_grid, plot_heatmap,
    plot_pair_curves, plot_projection_2d, plot_scatter_rank, save_figure, spearman, subplots_grid,
)

STEPS = np.arange(10)
CURVES = {"a": np.linspace(0.7, 0.1, 10), "b": np.linspace(0.7, 0.3, 10),
          "c": np.linspace(0.7, 0.5, 10)}
D = {"a": 0.9, "b": 0.5, "c": 0.1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_curves_one_line_each_coloured_by_d_with_colorbar():
    fig = plot_curves(STEPS, CURVES, color_values=D, ylabel="DPO loss", title="loss")
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert len(ax.lines) == 3
    assert len(fig.axes) == 2  # the plot and its colour bar
    assert fig.axes[1].get_ylabel() == "D"
    # Largest D first in the legend, drawn in the top colour of the D map.
    assert legend_texts(ax) == ["a (D=0.9)", "b (D=0.5)", "c (D=0.1)"]
    np.testing.assert_allclose(ax.lines[0].get_color(), D_CMAP(1.0))
    np.testing.assert_allclose(ax.lines[2].get_color(), D_CMAP(0.0))


def test_d_colors_span_the_d_colour_map():
    colors = d_colors({"slow": 0.0, "mid": 1.0, "fast": 2.0})
    np.testing.assert_allclose(colors["slow"], D_CMAP(0.0))
    np.testing.assert_allclose(colors["mid"], D_CMAP(0.5))
    np.testing.assert_allclose(colors["fast"], D_CMAP(1.0))
    assert d_colors({"only": 0.4})["only"] == D_CMAP(0.5)  # one value: the middle colour


def test_curves_bounds_dashed_and_bands_add_their_artists():
    bounds = {k: v + 0.1 for k, v in CURVES.items()}
    fig = plot_curves(STEPS, CURVES, color_values=D, bounds=bounds, ylabel="||W(t)-W(0)||")
    ax = fig.axes[0]
    assert len(ax.lines) == 6
    dashed_lines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed_lines) == 3
    # A bound has its curve's colour.
    assert dashed_lines[0].get_color() == ax.lines[0].get_color()

    bands = {"a": (CURVES["a"] - 0.05, CURVES["a"] + 0.05)}
    fig = plot_curves(STEPS, CURVES, dashed={"a": CURVES["a"] + 0.02}, bands=bands)
    ax = fig.axes[0]
    assert len(ax.lines) == 4
    assert len(ax.collections) == 1  # the one band
    assert len(fig.axes) == 1  # no colour bar without color_values


def test_curves_take_per_curve_steps_and_reject_mismatched_lengths():
    fig = plot_curves({"a": np.arange(3), "b": np.arange(5)},
                      {"a": [3, 2, 1], "b": [5, 4, 3, 2, 1]}, logy=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [len(ln.get_xdata()) for ln in ax.lines] == [3, 5]
    with pytest.raises(ValueError, match="steps"):
        plot_curves(np.arange(4), {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="color_values"):
        plot_curves(STEPS, CURVES, color_values={"a": 1.0})


def test_curves_draw_on_a_given_axes():
    fig, axes = subplots_grid(2, ncols=2)
    out = plot_curves(STEPS, CURVES, ax=axes[1])
    assert out is fig
    assert len(axes[1].lines) == 3 and len(axes[0].lines) == 0


def test_scatter_rank_reports_spearman_of_a_monotone_example():
    x = [0.1, 0.2, 0.4, 0.8, 1.6]
    y = [1.0, 1.1, 5.0, 5.1, 9.0]  # increasing but not linear: rho = 1
    fig = plot_scatter_rank(x, y, ["p", "q", "r", "s", "t"], xlabel="D", ylabel="decrease",
                            title="D predicts speed")
    ax = fig.axes[0]
    assert "Spearman ρ = 1.00" in ax.get_title()
    assert "n = 5" in ax.get_title()
    assert ax.get_title().startswith("D predicts speed\n")
    assert len(ax.collections[0].get_offsets()) == 5
    assert sorted(t.get_text() for t in ax.texts) == ["p", "q", "r", "s", "t"]
    assert len(ax.lines) == 1  # the least-squares line

    fig = plot_scatter_rank(x, y[::-1], xlabel="D", ylabel="decrease", title="")
    assert "Spearman ρ = -1.00" in fig.axes[0].get_title()


def test_spearman_matches_hand_computed_values_and_handles_degenerate_input():
    # Ranks (1, 2, 3, 4) vs (2, 1, 4, 3): d^2 = 4, rho = 1 - 6*4 / (4*15) = 0.6.
    rho, p = spearman([1, 2, 3, 4], [20, 10, 40, 30])
    assert rho == pytest.approx(0.6)
    assert 0 < p < 1
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])[0])
    fig = plot_scatter_rank([1, 1, 1], [1, 2, 3], xlabel="", ylabel="", title="flat")
    assert "n/a" in fig.axes[0].get_title()


def test_bars_sorted_highlighted_and_labelled():
    fig = plot_bars(["x", "y", "z"], [1.0, 3.0, 2.0], ylabel="D", title="D",
                    highlight="z", errors=[0.1, 0.1, 0.1])
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["y", "z", "x"]
    colors = [p.get_facecolor() for p in ax.patches]
    assert colors[1] != colors[0] and colors[0] == colors[2]  # only z stands out
    assert [t.get_text() for t in ax.texts] == ["3", "2", "1"]

    fig = plot_bars(["a-very-long-behaviour-name", "b"], [1, 2], sort=False)
    ax = fig.axes[0]  # long names: horizontal bars, in the given order
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a-very-long-behaviour-name", "b"]


def test_heatmap_annotates_every_finite_cell():
    m = np.array([[np.nan, 0.25, -0.5], [0.1, np.nan, 0.0]])
    fig = plot_heatmap(m, ["r1", "r2"], ["c1", "c2", "c3"], title="priority gap")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["0.25", "−0.50", "0.10", "0.00"])
    assert len(fig.axes) == 2  # with a colour bar
    # centre 0: symmetric colour limits.
    norm = ax.images[0].norm
    assert (norm.vmin, norm.vmax) == pytest.approx((-0.5, 0.5))
    fig = plot_heatmap(m, ["r1", "r2"], ["c1", "c2", "c3"], annotate=False)
    assert len(fig.axes[0].texts) == 0
    with pytest.raises(ValueError):
        plot_heatmap(m, ["r1"], ["c1", "c2", "c3"])


def test_pair_curves_solid_and_dashed_in_one_colour_with_annotations():
    a = {"p": np.linspace(0, 1, 10), "q": np.linspace(0, 0.5, 10)}
    b = {"p": np.linspace(0, 1, 10) ** 0.5, "q": np.linspace(0, 0.8, 10)}
    fig = plot_pair_curves(STEPS, a, b, label_a="from base", label_b="from aligned",
                           ylabel="misalignment", title="", annotations={"p": "3.0× faster"})
    ax = fig.axes[0]
    assert len(ax.lines) == 4
    assert [ln.get_linestyle() for ln in ax.lines] == ["-", "--", "-", "--"]
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    assert legend_texts(ax) == ["p: 3.0× faster", "q"]
    style_key = [t.get_text() for leg in ax.artists for t in leg.get_texts()]
    assert style_key == ["from base", "from aligned"]


def test_projection_one_scatter_per_class():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    classes = np.r_[np.ones(10, bool), np.zeros(20, bool)]
    fig = plot_projection_2d(points, classes, title="PCA")
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [20, 10]
    assert legend_texts(ax) == ["prefers Yes (n=20)", "prefers No (n=10)"]
    with pytest.raises(ValueError):
        plot_projection_2d(points[:, :1], classes)


def test_grid_of_small_multiples():
    fig, axes = subplots_grid(5, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 5
    panels = [functools.partial(plot_curves, STEPS, {k: v}) for k, v in CURVES.items()]
    fig = plot_grid(panels, ncols=2, titles=list(CURVES), suptitle="loss", sharey=True)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    assert all(len(ax.lines) == 1 for ax in fig.axes)
    assert fig.axes[1].get_ylabel() == ""  # inner panel of a shared row


def test_png_bytes_and_save_figure(tmp_path):
    fig = plot_bars(["a", "b"], [1, 2])
    assert fig_to_png_bytes(fig).startswith(PNG_MAGIC)
    path = save_figure(fig, tmp_path / "sub" / "bars.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_save_figure_closes_a_pyplot_figure(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots()
    plot_bars(["a", "b"], [1, 2], ax=ax)
    save_figure(fig, tmp_path / "bars.png")
    assert not plt.fignum_exists(fig.number)


def test_plotting_leaves_global_rc_params_alone():
    before = {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != "backend"}
    plot_curves(STEPS, CURVES, color_values=D)
    fig_to_png_bytes(plot_bars(["a"], [1.0]))
    after = {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != "backend"}
    assert [k for k in before if before[k] != after[k]] == []


def test_import_and_plotting_choose_no_style_and_no_backend():
    # In a fresh interpreter: nothing global changes, and pyplot (which would
    # pick a backend) is never imported. Reading rcParams["backend"] would
    # itself resolve the backend, so it is left out of the comparison.
    code = """
import sys, matplotlib
snap = lambda: {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != "backend"}
before = snap()
import prefdyn.reports as R
assert snap() == before
R.Report("t").section("s").figure(R.plot_curves(None, {"a": [1.0, 2.0]}))
assert snap() == before
assert "matplotlib.pyplot" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)
