import numpy as np
from matplotlib.figure import Figure

from prefdyn.reports.plots_rl import (
    plot_gain_by_std,
    plot_grad_vs_std,
    plot_group_gains,
    plot_prevalence,
    plot_std_census,
    plot_warm_start,
)


def test_std_axes_are_logarithmic_and_a_zero_std_is_drawn():
    std, mean = np.array([0.0, 0.01, 0.5]), np.array([-1.0, -0.9, 0.2])
    fig = plot_std_census({"bandit (train)": (std, mean)}, small_std=0.1,
                          low_reward={"bandit (train)": 0.0})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert sum(len(c.get_offsets()) for c in ax.collections) == 3  # std 0 sits at the floor
    grad = plot_grad_vs_std(std[1:], std[1:] ** 2, slope=2.0, intercept=0.0, envelope=1.0)
    assert grad.axes[0].get_xscale() == grad.axes[0].get_yscale() == "log"
    labels = [line.get_label() for line in grad.axes[0].get_lines()]
    assert labels == ["fit: slope 2.00", "std^(2/3) through the highest point"]


def test_the_other_figures_build():
    figs = [plot_gain_by_std({"train": [0.1, 0.2]}, {"train": [0.0, 0.3]}, bin_labels=["a", "b"],
                             bin_gain={"train": [0.0, 0.3]}, bin_std={"train": [0.1, 0.2]}),
            plot_prevalence([0, 0.5, 1], {"held-out": [0.1, 0.0, -0.2]}, start=-0.5),
            plot_group_gains(["base", "lr x10"], {"small": [0.0, 0.1], "other": [0.2, 0.4]}),
            plot_warm_start(["none", "full"], {"after SFT": [-1, 0], "after RFT": [-0.5, 0.5]},
                            {"before": [10, 10], "after": [10, 2]})]
    assert all(isinstance(f, Figure) for f in figs)
    assert len(figs[-1].axes) == 2
