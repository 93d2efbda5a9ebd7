"""Any experiment over a grid of config values (``prefdyn sweep EXPERIMENT train.beta=0.01,0.1``).

Im & Li (App. D) repeat their experiments over DPO's beta; the sweep does that for any
config key. Every grid point is one run through the harness in its own folder
``<out>/<key>_<value>...`` (model and workspace loaded once, shared), then one combined
folder: summary.json (each scalar headline number per point), a plot of the key numbers
against the first swept key, and one report with every run's section.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from prefdyn.errors import PrefdynError
from prefdyn.experiments.configure import resolve_config, to_yaml_dict
from prefdyn.experiments.harness import Resources, run_spec
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import ExperimentSpec
from prefdyn.reports import Report, plot_curves, plot_grid
from prefdyn.tracking.run_dir import RunDir

log = logging.getLogger(__name__)

KEY_METRICS: dict[str, tuple[str, ...]] = {
    "distinguishability": ("spearman_D_loss_decrease",),
    "misalignment": ("mean_speedup", "mean_speedup_ref_base"),
    "lm misalignment": ("mean_speedup",),
    "lm distinguishability": ("spearman_D_loss_decrease",),
    "lm hh-rlhf": ("alignment_gain", "speedup", "train_alignment_gain", "train_speedup"),
}
"""The summary numbers plotted for each experiment (others: the first scalars)."""

_NOT_OUTCOMES = {"beta", "lr", "steps", "seed", "wall_seconds", "align_steps", "batch_size",
                 "n_train", "n_test", "window", "fallback_share", "steps_per_behavior"}
MAX_PANELS = 6
Grid = list[tuple[str, list[str]]]


def parse_grid(items: Sequence[str]) -> Grid:
    """``["train.beta=0.01,0.1", "seed=0,1"]`` as ``[(key, [values])]``, values in order, no repeats."""
    grid: Grid = []
    for item in items:
        key, sep, values = item.partition("=")
        parts = list(dict.fromkeys(v.strip() for v in values.split(",") if v.strip()))
        if not sep or not key or not parts:
            raise PrefdynError(f"sweep: expected key=v1,v2,..., got {item!r}")
        if key in (k for k, _ in grid):
            raise PrefdynError(f"sweep: {key} given twice")
        grid.append((key, parts))
    if not grid:
        raise PrefdynError("sweep: give at least one key=v1,v2,... (e.g. train.beta=0.01,0.1)")
    return grid


def point_folder(point: Mapping[str, str]) -> str:
    """``{"train.beta": "0.1"}`` -> ``beta_0.1`` (the field name, not its section)."""
    return "_".join(f"{k.rpartition('.')[2]}_{v}" for k, v in point.items())


def scalar_outcomes(summary: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of a summary that are outcomes (not settings)."""
    return {k: float(v) for k, v in summary.items()
            if k not in _NOT_OUTCOMES and not isinstance(v, bool) and isinstance(v, (int, float))}


def combine(name: str, points: Sequence[Mapping[str, str]], results: Sequence[ExperimentResult]
            ) -> ExperimentResult:
    """One result from the grid's runs: table and plot of the key numbers per point."""
    outcomes = [scalar_outcomes(r.summary) for r in results]
    keys = list(dict.fromkeys(k for o in outcomes for k in o))
    plotted = [k for k in KEY_METRICS.get(name, ()) if k in keys] or keys[:MAX_PANELS]
    labels = [", ".join(f"{k}={v}" for k, v in p.items()) for p in points]
    table = [{**p, **{k: o.get(k, float("nan")) for k in keys}} for p, o in zip(points, outcomes)]
    series = {k: [o.get(k, float("nan")) for o in outcomes] for k in keys}
    res = ExperimentResult(
        name=f"sweep_{name.replace(' ', '_')}", title=f"Sweep: {name}",
        explanation=(f"The {name} experiment run once per grid point ({'; '.join(labels)}) with "
                     "everything else fixed (same data, seed and settings); each run has its own "
                     "folder with its own report. Im & Li (App. D) repeat their experiments over "
                     "beta to show the findings do not hinge on it."),
        summary={"experiment": name, "points": [dict(p) for p in points], "metrics": series,
                 "key_metrics": plotted},
        headlines=[(k, " / ".join(fmt(v) for v in series[k]), "at " + " / ".join(labels)) for k in plotted[:3]])
    first = next(iter(points[0])) if points else None
    try:
        x = np.asarray([float(p[first]) for p in points])
    except (TypeError, ValueError):
        x = np.arange(len(points), dtype=float)
    if plotted:
        order = np.argsort(x)
        panels = [functools.partial(plot_curves, x[order], {k: np.asarray(series[k])[order]},
                                    xlabel=first, ylabel=k) for k in plotted]
        fig = plot_grid(panels, ncols=min(3, len(panels)), titles=plotted,
                        suptitle=f"{name}: headline numbers vs {first}")
        if len(x) > 1 and x.min() > 0 and x.max() / x.min() >= 10:
            for ax in fig.axes:
                ax.set_xscale("log")
        res.add_figure(res.name, fig, f"Each run's headline numbers against {first}.")
    res.tables.append(("Headline numbers per grid point", table))
    flat = [k for k in plotted if np.ptp([v for v in series[k] if np.isfinite(v)] or [0]) == 0]
    if flat:
        res.notes.append(f"{', '.join(flat)} did not change over the grid.")
    return res


def run_sweep(spec: ExperimentSpec, grid_items: Sequence[str], *, preset: str | None = None,
              config_file: str | Path | None = None, flags: Mapping[str, Any] | None = None,
              sets: Sequence[str] = (), out: str | Path | None = None, progress: bool = False
              ) -> tuple[ExperimentResult, Path]:
    """``spec`` once per point of the grid (each point's values go above every other layer)."""
    if spec.parts:
        raise PrefdynError(f"{spec.name} is a suite; sweep one of its experiments instead")
    grid = parse_grid(grid_items)
    base = resolve_config(spec, preset=preset, config_file=config_file, flags=flags, sets=sets)
    points = [dict(zip([k for k, _ in grid], values)) for values in itertools.product(*(v for _, v in grid))]
    configs = [resolve_config(spec, preset=preset, config_file=config_file, flags=flags,
                              sets=[*sets, *(f"{k}={v}" for k, v in p.items())]) for p in points]
    if spec.last_layer and "train.beta" in dict(grid) and any(c.train.lr is None for c in configs):
        raise PrefdynError(
            f"{spec.name} trains the last layer with the curvature step size (lr not fixed): its "
            "curves depend on lr*beta^2 only and that step size scales as 1/beta^2, so every beta "
            "gives the same curves. Fix the step size (--lr, or train.lr=... in the grid) to sweep beta.")
    out = Path(out) if out is not None else Path(base.out) / f"sweep_{spec.folder_for(base)}"
    resources = Resources()
    results = []
    for point, cfg in zip(points, configs):
        log.info("sweep %s: %s", spec.name, point)
        results.append(run_spec(spec, cfg, resources=resources, progress=progress, out=out / point_folder(point))[0])
    combined = combine(spec.name, points, results)
    with RunDir(out, seed=base.seed, device="cpu") as run:
        run.file("config.yaml").write_text(yaml.safe_dump(
            {"experiment": spec.name, "grid": {k: v for k, v in grid}, "base": to_yaml_dict(base)}, sort_keys=False))
        combined.write(run)
        report = Report(f"prefdyn — {combined.title}", subtitle=f"{len(points)} grid points")
        combined.add_to(report)
        for point, r in zip(points, results):
            r.title = f"{r.title} ({', '.join(f'{k}={v}' for k, v in point.items())})"
            r.add_to(report, headlines=False)
        report.write(run.file("report.html"))
    return combined, out
