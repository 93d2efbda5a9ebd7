import numpy as np

from prefdyn.reports import (
    plot_fallback_curves,
    plot_grouped_bar_panels,
    plot_grouped_bars,
    plot_score_histogram,
)


def test_grouped_bars_draw_one_bar_per_group_and_series():
    fig = plot_grouped_bars(["a>b", "c>d", "e>f"], {"before": [0.1, 0.2, 0.3], "after": [0.4, 0.5, 0.6]})
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a>b", "c>d", "e>f"]


def test_grouped_bar_panels_one_axes_each_legend_on_the_first():
    fig = plot_grouped_bar_panels(["all", "drop"], {"x": {"held": [1, 2], "train": [3, 4]},
                                                    "y": {"held": [0, 1], "train": [1, 0]}})
    assert len(fig.axes) == 2 and [ax.get_ylabel() for ax in fig.axes] == ["x", "y"]
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_legend() is None


def test_histogram_marks_the_threshold_only_when_given():
    scores = np.arange(20.0)
    with_line = plot_score_histogram(scores, xlabel="ches", threshold=15.0).axes[0]
    assert [line.get_xdata()[0] for line in with_line.lines] == [15.0]
    assert len(plot_score_histogram(scores, xlabel="ches").axes[0].lines) == 0


def test_fallback_curves_mark_base_level_and_budget():
    fig = plot_fallback_curves([0, 5, 10], {"from base": [1, 0.5, 0], "from aligned": [3, 1, 0]},
                               base_level=1.0, budget=5, ylabel="logp_diff")
    ax = fig.axes[0]
    marks = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines[-2:]]
    assert marks[0][1] == (1.0, 1.0) and marks[1][0] == (5, 5)
