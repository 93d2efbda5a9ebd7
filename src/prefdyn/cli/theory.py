"""``prefdyn theory <verb>``: the theory lab (Im & Li, ICML 2024 and 2024b).

Mounted by the main app as ``app.add_typer(theory_app, name="theory")``. Every
command writes the usual run folder (config.yaml, environment.json,
metrics.jsonl, PNGs, summary.json, report.html) under ``--out``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from prefdyn._runtime import resolve_device, set_seed
from prefdyn.cli._options import show_result, with_experiment_options
from prefdyn.data import list_behaviors
from prefdyn.errors import PrefdynError
from prefdyn.experiments import ExperimentConfig, ExperimentResult
from prefdyn.experiments.runner import PERSONA_ATTRIBUTION
from prefdyn.experiments.theory import (GridConfig, ScalingConfig, run_scaling_law, run_theorem_grid,
                                        run_theorems_on_embeddings)
from prefdyn.experiments.workspace import Workspace, prepare_workspace
from prefdyn.reports import Report
from prefdyn.tracking import RunDir
from prefdyn.training import TrainConfig

theory_app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
    help="Theory lab: Im & Li's Theorems 4.1-4.3 and A.3 checked on synthetic and real hidden "
         "states, and the K-concept scaling law of DPO.")

GRID_DEFAULTS = {"train": {"beta": 1.0, "steps": 200, "lr_safety": 0.1, "log_every": 2, "eval_every": 10}}
"""beta is Theorem 4.1's beta' here; lr_safety 0.1 keeps eta lambda_max(H) small, where 4.2's bound speaks."""
REAL_DEFAULTS = {"train": {"steps": 300, "lr_safety": 0.1, "log_every": 2, "eval_every": 10}}
SCALING_DEFAULTS = {"train": {"steps": 300, "log_every": 1, "eval_every": 1}}
SCALING_SAFETY = {"synthetic": 0.1, "persona": 1.0}
"""Share of 1/lambda_max(H) per source. Synthetic: a tenth, so steps-to-margin resolves K = 1
(every step is evaluated). Persona: the full step; real hidden states share a large mean
direction that sets lambda_max(H) while barely entering the DPO update, so smaller steps crawl."""
PERSONA_DIR_N = 64
"""Statements per behavior when a persona folder is given without --n (embedding stays minutes)."""
THEORY_ATTRIBUTION = ("Theory: Im & Li, 'Understanding the Learning Dynamics of Alignment with Human "
                      "Feedback', ICML 2024; Im & Li, 'Can DPO Learn Diverse Human Values? A Theoretical "
                      "Scaling Law', 2024.")


def _numbers(text: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise PrefdynError(f"--{what}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise PrefdynError(f"--{what}: empty list")
    return values


def run_theory(name: str, cfg: ExperimentConfig, settings: object,
               compute: Callable[[RunDir], tuple[ExperimentResult, str, dict]], *, device: str = "cpu") -> Path:
    """One theory experiment in its run folder ``cfg.out/name``: seed once, write the resolved
    config (experiment and theory settings), environment, metrics, plots, summary and report.
    ``compute(run)`` returns the result, the report's subtitle and its footer entries."""
    set_seed(cfg.seed)
    out = Path(cfg.out) / name
    with RunDir(out, config={"experiment": cfg, "theory": settings}, seed=cfg.seed, device=device) as run:
        result, subtitle, footer = compute(run)
        result.write(run)
        report = Report(f"prefdyn — {result.title}", subtitle=subtitle)
        result.add_to(report)
        report.footer({**footer, "seed": cfg.seed, "steps": cfg.train.steps, "optimizer": cfg.train.optimizer_for("last_layer"),
                       "attribution": THEORY_ATTRIBUTION})
        report.write(run.file("report.html"))
    show_result(result, out)
    return out


def _workspace(cfg: ExperimentConfig, max_behaviors: int) -> Workspace:
    """Persona behaviors: the bundled demo, or a folder capped to ``max_behaviors`` seeded
    behaviors and :data:`PERSONA_DIR_N` statements each unless --behaviors / --n say otherwise."""
    if cfg.data.path is not None:
        if cfg.data.behaviors is None:
            names = list_behaviors(cfg.data.path)
            pick = torch.randperm(len(names), generator=torch.Generator().manual_seed(cfg.seed))
            cfg.data.behaviors = sorted(names[i] for i in pick[:max_behaviors].tolist())
        if cfg.task.n_per_behavior is None:
            cfg.task = dataclasses.replace(cfg.task, n_per_behavior=PERSONA_DIR_N)
    return prepare_workspace(cfg.model, cfg.data, cfg.task, progress=True)


def _persona_footer(cfg: ExperimentConfig, ws: Workspace) -> dict:
    return {"model": f"{ws.model_name} ({ws.model_fingerprint[:12]})", "beta": cfg.train.beta,
            "data": cfg.data.path or "prefdyn bundled demo data (written for prefdyn)",
            "persona data": PERSONA_ATTRIBUTION}


@theory_app.command()
@with_experiment_options(GRID_DEFAULTS)
def grid(cfg: ExperimentConfig,
         ds: Annotated[str, typer.Option(help="Embedding widths d, comma-separated.")] = "16,64,256",
         deltas: Annotated[str, typer.Option(help="Exponents Delta (D = d^Delta), comma-separated.")] = "0.1,0.25,0.4",
         alphas: Annotated[str, typer.Option(help="Tail shapes alpha in (0, 2]: 2 Gaussian, 1 Laplace.")] = "2,1,0.5",
         samples: Annotated[int, typer.Option(help="Training samples per grid point.")] = 2000,
         test_samples: Annotated[int, typer.Option(help="Held-out samples per grid point.")] = 1000,
         sigma: Annotated[float, typer.Option(help="Noise scale of both classes.")] = 1.0,
         common_mean: Annotated[float, typer.Option(help="Norm of a mean shared by both classes (0: centered).")] = 0.0,
         pos_share: Annotated[float, typer.Option(help="Share of samples preferring Yes.")] = 0.5) -> None:
    """Theorems 4.1-4.3 and A.3 on synthetic alpha-subexponential data over d x Delta x alpha.

    Here --beta is Theorem 4.1's beta' (DPO's beta = beta' / sqrt(d)); --lr fixes one eta for
    every point, else each d derives lr_safety / lambda_max(H)."""
    settings = GridConfig(ds=_numbers(ds, int, "ds"), deltas=_numbers(deltas, float, "deltas"),
                          alphas=_numbers(alphas, float, "alphas"), n=samples, n_test=test_samples,
                          sigma=sigma, common_mean=common_mean, pos_share=pos_share)

    def compute(run):
        res = run_theorem_grid(settings, cfg.train, seed=cfg.seed, sink=run)
        sub = f"synthetic, {len(settings.ds) * len(settings.deltas) * len(settings.alphas)} grid points"
        return res, sub, {"data": "synthetic (prefdyn.theory.synthetic)", "beta'": cfg.train.beta}

    run_theory("theory_grid", cfg, settings, compute)


@theory_app.command()
@with_experiment_options(REAL_DEFAULTS)
def real(cfg: ExperimentConfig) -> None:
    """The same checks on real hidden states of persona behaviors: which assumptions hold there?"""
    def compute(run):
        ws = _workspace(cfg, 8)
        res = run_theorems_on_embeddings(ws, cfg.train, sink=run)
        return res, f"{ws.model_name}, {len(ws.names)} behaviors", _persona_footer(cfg, ws)

    run_theory("theory_real", cfg, None, compute, device=str(resolve_device(cfg.model.device)))


@theory_app.command()
@with_experiment_options(SCALING_DEFAULTS)
def scaling(cfg: ExperimentConfig,
            source: Annotated[str, typer.Option(
                help="synthetic (fast) or persona (behaviors as concepts).")] = "synthetic",
            ks: Annotated[str, typer.Option(help="Numbers of concepts K, comma-separated.")] = "1,2,4,8,16",
            qs: Annotated[Optional[str], typer.Option(help="Samples per cluster Q (default: 8,32,128 synthetic; "
                                                           "three sizes up to what persona data holds).")] = None,
            dim: Annotated[int, typer.Option(help="Synthetic: embedding width d.")] = 64,
            sep: Annotated[float, typer.Option(help="Synthetic: per-concept D = ||mu+ - mu-||.")] = 4.0,
            rho: Annotated[float, typer.Option(help="Synthetic: cosine between concepts' directions.")] = 0.0,
            center_norm: Annotated[float, typer.Option(help="Synthetic: norm of each concept's center.")] = 4.0,
            global_mean: Annotated[float, typer.Option(help="Synthetic: norm of a mean shared by all concepts.")] = 0.0,
            alpha: Annotated[float, typer.Option(help="Synthetic: noise tail shape in (0, 2].")] = 2.0,
            target: Annotated[Optional[float], typer.Option(
                help="Target reward margin (default: half the smallest final test margin at the largest Q).")] = None,
            safety: Annotated[Optional[float], typer.Option(
                help="Step size as a share of 1/lambda_max(H) (default: 0.1 synthetic, 1.0 persona).")] = None) -> None:
    """Reward-margin dynamics of K concepts x Q samples (Im & Li 2024b) and the cluster-structure check."""
    if source not in ("synthetic", "persona"):
        raise PrefdynError(f"--source must be synthetic or persona, got {source!r}")
    if safety is None and cfg.train.lr_safety == TrainConfig.lr_safety:  # not set by a --config file either
        safety = SCALING_SAFETY[source]
    if safety is not None:
        cfg.train = dataclasses.replace(cfg.train, lr_safety=safety)
    settings = ScalingConfig(ks=_numbers(ks, int, "ks"), qs=_numbers(qs, int, "qs") if qs else None, d=dim, D=sep,
                             rho=rho, center_norm=center_norm, global_mean=global_mean, alpha=alpha, target=target)

    def compute(run):
        if source == "synthetic":
            res = run_scaling_law(settings, cfg.train, seed=cfg.seed, sink=run)
            return res, "synthetic concepts", {"data": "synthetic (prefdyn.theory.concept_law)", "beta": cfg.train.beta}
        ws = _workspace(cfg, max(settings.ks))
        res = run_scaling_law(settings, cfg.train, ws=ws, seed=cfg.seed, sink=run)
        return res, f"{ws.model_name}, {len(ws.names)} behaviors as concepts", _persona_footer(cfg, ws)

    run_theory(f"theory_scaling_{source}", cfg, settings, compute,
               device="cpu" if source == "synthetic" else str(resolve_device(cfg.model.device)))
