"""Run experiments end to end: workspace, run folder, results, report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from prefdyn._runtime import resolve_device, set_seed
from prefdyn.errors import TrainingError
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.diagnostics import run_diagnostics
from prefdyn.experiments.distinguishability import run_distinguishability
from prefdyn.experiments.distribution_change import run_distribution_change
from prefdyn.experiments.lm_distinguishability import run_lm_distinguishability
from prefdyn.experiments.lm_misalignment import run_lm_misalignment
from prefdyn.experiments.lm_priority import run_lm_priority
from prefdyn.experiments.misalignment import run_misalignment
from prefdyn.experiments.priority import highest_gap_pair, run_priority
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.workspace import Workspace, prepare_workspace
from prefdyn.reports import Report
from prefdyn.tracking import RunDir

log = logging.getLogger(__name__)

EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {
    "diagnostics": run_diagnostics,
    "distinguishability": run_distinguishability,
    "priority": run_priority,
    "misalignment": run_misalignment,
    "lm_misalignment": run_lm_misalignment,
    "lm_distinguishability": run_lm_distinguishability,
    "lm_priority": run_lm_priority,
    "distribution_change": run_distribution_change,
}

PERSONA_ATTRIBUTION = (
    "Persona data: Anthropic model-written evaluations (Perez et al. 2022, arXiv 2212.09251), "
    "CC-BY-4.0. Theory: Im & Li, 'Understanding the Learning Dynamics of Alignment with Human "
    "Feedback', ICML 2024.")


def _footer(report: Report, cfg: ExperimentConfig, ws: Workspace) -> None:
    data = cfg.data.path or "prefdyn bundled demo data (written for prefdyn)"
    report.footer({"model": f"{ws.model_name} ({ws.model_fingerprint[:12]})", "data": data,
                   "seed": cfg.seed, "beta": cfg.train.beta, "optimizer": cfg.train.optimizer_for("last_layer"),
                   "steps": cfg.train.steps, "attribution": PERSONA_ATTRIBUTION})


def run_experiment(name: str, cfg: ExperimentConfig, *, progress: bool = False,
                   ws: Workspace | None = None, out: Path | None = None, **kwargs) -> tuple[ExperimentResult, Path]:
    """One experiment in its own run folder ``cfg.out/name`` with its own report."""
    set_seed(cfg.seed)
    out = Path(out or Path(cfg.out) / name)
    with RunDir(out, config=cfg, seed=cfg.seed, device=resolve_device(cfg.model.device)) as run:
        ws = ws or prepare_workspace(cfg.model, cfg.data, cfg.task, progress=progress)
        try:
            result = EXPERIMENTS[name](ws, cfg.train, sink=run, **kwargs)
        except TrainingError as e:
            # metrics.jsonl already holds every step before the failure.
            run.write_summary({"experiment": name, "error": str(e), "failed_at_step": e.step})
            raise
        result.write(run)
        report = Report(f"prefdyn — {result.title}", subtitle=f"{ws.model_name}, {len(ws.names)} behaviors")
        result.add_to(report)
        _footer(report, cfg, ws)
        report.write(run.file("report.html"))
    return result, out


def run_demo(cfg: ExperimentConfig, *, progress: bool = False) -> Path:
    """The main job: diagnostics and the three experiments in one report."""
    set_seed(cfg.seed)
    out = Path(cfg.out)
    ws = prepare_workspace(cfg.model, cfg.data, cfg.task, progress=progress)
    pair = highest_gap_pair(ws)
    plan = [("diagnostics", {}), ("distinguishability", {}), ("priority", {}),
            ("priority_pair", {"which": pair}), ("misalignment", {})]
    report = Report("prefdyn — learning dynamics of preference alignment",
                    subtitle=f"{ws.model_name} on {len(ws.names)} behaviors, last-layer DPO")
    for name, kwargs in plan:
        log.info("running %s", name)
        result, _ = run_experiment(name.removesuffix("_pair"), cfg, progress=progress, ws=ws,
                                   out=out / name, **kwargs)
        result.add_to(report)
    _footer(report, cfg, ws)
    return report.write(out / "report.html")
