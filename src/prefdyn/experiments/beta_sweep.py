"""Im & Li (ICML 2024), Appendix D: the experiments repeated over DPO's beta.

Any registered experiment (the last-layer ones and the LM ones in
:data:`prefdyn.experiments.runner.EXPERIMENTS`, and ``hh_rlhf``) is run once per
beta, each in its own sub run folder ``<out>/beta_<beta>``; the model and the
workspace are prepared once and shared. The scalar headline numbers of every
run's ``summary`` are combined into one table, one plot (each key number vs
beta) and one report with every run's section.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefdyn._runtime import resolve_device, set_seed
from prefdyn.errors import PrefdynError
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.reports import Report, plot_curves, plot_grid
from prefdyn.tracking.run_dir import RunDir

log = logging.getLogger(__name__)

KEY_METRICS: dict[str, tuple[str, ...]] = {
    "distinguishability": ("spearman_D_loss_decrease",),
    "misalignment": ("mean_speedup", "mean_speedup_ref_base"),
    "lm_misalignment": ("mean_speedup",),
    "lm_distinguishability": ("spearman_D_loss_decrease",),
    "hh_rlhf": ("alignment_gain", "speedup", "train_alignment_gain", "train_speedup"),
}
"""The summary numbers plotted against beta for each experiment (others: every scalar)."""

_NOT_OUTCOMES = {"beta", "lr", "steps", "seed", "wall_seconds", "align_steps", "batch_size",
                 "n_train", "n_test", "window", "fallback_share", "steps_per_behavior"}
MAX_PANELS = 6


def parse_betas(text: str | Sequence[float]) -> list[float]:
    """``"0.05,0.1,0.5"`` (or a list) as positive floats, in the given order, no repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    betas: list[float] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            b = float(item)
        except ValueError:
            raise PrefdynError(f"--betas: {item!r} is not a number") from None
        if not math.isfinite(b) or b <= 0:
            raise PrefdynError(f"--betas: beta must be > 0, got {item!r}")
        if b not in betas:
            betas.append(b)
    if not betas:
        raise PrefdynError("--betas: give at least one beta, e.g. 0.05,0.1,0.5")
    return betas


def beta_folder(beta: float) -> str:
    return f"beta_{beta:g}"


def scalar_outcomes(summary: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of a summary that are outcomes (not settings)."""
    out = {}
    for k, v in summary.items():
        if k in _NOT_OUTCOMES or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = float(v)
    return out


def combine(experiment: str, betas: Sequence[float], results: Sequence[ExperimentResult]
            ) -> ExperimentResult:
    """One result from the per-beta runs: table, plot of the key numbers vs beta."""
    outcomes = [scalar_outcomes(r.summary) for r in results]
    keys = [k for k in dict.fromkeys(k for o in outcomes for k in o)]
    plotted = [k for k in KEY_METRICS.get(experiment, ()) if k in keys] or keys[:MAX_PANELS]
    table = [{"beta": b, **{k: o.get(k, float("nan")) for k in keys}} for b, o in zip(betas, outcomes)]
    series = {k: [o.get(k, float("nan")) for o in outcomes] for k in keys}
    summary = {"experiment": experiment, "betas": list(betas), "metrics": series,
               "key_metrics": plotted}
    res = ExperimentResult(
        name=f"beta_sweep_{experiment}", title=f"Beta sweep: {experiment}",
        explanation=(
            f"The {experiment} experiment run once per beta ({', '.join(f'{b:g}' for b in betas)}) "
            "with everything else fixed (same data, seed and step size settings); each run has "
            f"its own folder {beta_folder(betas[0])}, ... with its own report. Im & Li (App. D) "
            "repeat their experiments over beta to show the findings do not hinge on it."),
        summary=summary,
        headlines=[(k, " / ".join(fmt(v) for v in series[k]),
                    "at beta " + " / ".join(f"{b:g}" for b in betas)) for k in plotted[:3]])
    if plotted:
        x = np.asarray(betas, dtype=float)
        order = np.argsort(x)
        panels = [functools.partial(plot_curves, x[order], {k: np.asarray(series[k])[order]},
                                    xlabel="beta", ylabel=k) for k in plotted]
        fig = plot_grid(panels, ncols=min(3, len(panels)), titles=plotted,
                        suptitle=f"{experiment}: headline numbers vs beta")
        if len(betas) > 1 and x.min() > 0 and x.max() / x.min() >= 10:
            for ax in fig.axes:
                ax.set_xscale("log")
        res.add_figure(f"beta_sweep_{experiment}", fig,
                       "Each run's headline numbers against DPO's beta.")
    res.tables.append(("Headline numbers per beta", table))
    flat = [k for k in plotted if np.ptp([v for v in series[k] if np.isfinite(v)] or [0]) == 0]
    if flat:
        res.notes.append(f"{', '.join(flat)} did not change with beta.")
    return res


def run_beta_sweep(experiment: str, betas: Sequence[float],
                   run_one: Callable[[float, Path], ExperimentResult], *, out: str | Path,
                   config: Any = None, seed: int | None = None, device: Any = None
                   ) -> tuple[ExperimentResult, list[ExperimentResult], Path]:
    """``run_one(beta, sub_folder)`` for every beta, then the combined folder ``out``
    (config, summary.json, plot, report with every run's section)."""
    out = Path(out)
    betas = parse_betas(betas)
    with RunDir(out, config={"experiment": experiment, "betas": betas, "run": config},
                seed=seed, device=device) as run:
        results = []
        for b in betas:
            log.info("beta sweep %s: beta %g", experiment, b)
            results.append(run_one(b, out / beta_folder(b)))
        combined = combine(experiment, betas, results)
        combined.write(run)
        report = Report(f"prefdyn — {combined.title}", subtitle=f"{len(betas)} values of beta")
        combined.add_to(report)
        for b, r in zip(betas, results):
            r.title = f"{r.title} (beta {b:g})"
            r.add_to(report, headlines=False)
        report.write(run.file("report.html"))
    return combined, results, out


def is_lm_experiment(fn: Callable) -> bool:
    """LM experiments take the loaded model and a preset (see :mod:`.lm_common`)."""
    return "loaded" in inspect.signature(fn).parameters


def sweep_experiment(experiment: str, cfg: ExperimentConfig, betas: Sequence[float], *,
                     preset: Any = None, pairs: str | Path | None = None, mode: str = "lora",
                     progress: bool = False, out: str | Path | None = None, **kwargs
                     ) -> tuple[ExperimentResult, Path]:
    """Sweep a registered experiment (``runner.EXPERIMENTS``) or ``hh_rlhf`` over beta.

    ``cfg`` is the base config (its ``train.beta`` is replaced per run). LM experiments
    need ``preset`` (an :class:`LMExperimentPreset`); ``hh_rlhf`` needs ``pairs`` and an
    :class:`HHPreset`. The model and workspace are loaded once for every run.
    """
    from prefdyn.experiments.runner import EXPERIMENTS, run_experiment
    from prefdyn.experiments.workspace import prepare_workspace
    from prefdyn.models import load_model

    known = sorted([*EXPERIMENTS, "hh_rlhf"])
    if experiment not in known:
        raise PrefdynError(f"unknown experiment {experiment!r}; choose from {known}")
    betas = parse_betas(betas)
    set_seed(cfg.seed)
    out = Path(out or Path(cfg.out) / f"beta_sweep_{experiment}")
    device = resolve_device(cfg.model.device)

    def load():
        return load_model(cfg.model.name, cache_dir=cfg.model.cache_dir, device=device,
                          trust_remote_code=cfg.model.trust_remote_code)

    if experiment == "hh_rlhf":
        from prefdyn.experiments.hh_rlhf import run_hh_experiment
        if pairs is None or preset is None:
            raise PrefdynError("the hh_rlhf sweep needs the pairs file and a preset")
        loaded = load()

        def run_one(beta: float, sub: Path) -> ExperimentResult:
            return run_hh_experiment(pairs, dataclasses.replace(preset, beta=beta), model=cfg.model,
                                     mode=mode, seed=cfg.seed, loss=cfg.train.loss, out=sub,
                                     loaded=loaded)[0]
    else:
        fn = EXPERIMENTS[experiment]
        extra = dict(kwargs)
        loaded = None
        if is_lm_experiment(fn):
            if preset is None:
                raise PrefdynError(f"{experiment} is an LM experiment: give it a preset")
            loaded = load()
            extra.update(loaded=loaded, preset=preset)
        ws = prepare_workspace(cfg.model, cfg.data, cfg.task, progress=progress, loaded=loaded)

        def run_one(beta: float, sub: Path) -> ExperimentResult:
            cfg_b = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, beta=beta))
            return run_experiment(experiment, cfg_b, progress=progress, ws=ws, out=sub, **extra)[0]

    combined, _, out = run_beta_sweep(experiment, betas, run_one, out=out,
                                      config={"cfg": cfg, "preset": preset, "pairs": pairs},
                                      seed=cfg.seed, device=device)
    return combined, out
