"""The one harness: any :class:`ExperimentSpec` in its run folder, the same way.

``run_spec`` seeds once, loads the model once (shared through :class:`Resources` with
later runs of the same process: the demo's parts, a sweep's points), writes the run
folder ``cfg.out/<spec folder>``::

    config.yaml       the resolved config (run.yaml shape, with the preset's name)
    environment.json  seed, device, package versions
    metrics.jsonl     every record the run logged
    *.png             the figures
    summary.json      the headline numbers (or the error and the failed step)
    report.html       the report

and handles errors the same way for every experiment: a :class:`TrainingError`
writes ``summary.json`` naming the failed step (metrics.jsonl keeps every step
before it) and is raised on for the CLI to print as one line.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from prefdyn._runtime import resolve_device, set_seed
from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.experiments.config import ExperimentConfig, ModelConfig
from prefdyn.experiments.configure import to_yaml_dict
from prefdyn.experiments.paper_setting import paper_setting_warnings
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.spec import ExperimentSpec, PartOutcome, RunContext
from prefdyn.reports import Report
from prefdyn.tracking.run_dir import RunDir

log = logging.getLogger(__name__)


class Resources:
    """The loaded model and workspaces, built once per process and shared between runs."""

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}
        self._workspaces: dict[str, Any] = {}

    @staticmethod
    def _model_key(model: ModelConfig) -> tuple:
        return (model.name, model.cache_dir, str(resolve_device(model.device)), model.trust_remote_code)

    def model(self, model: ModelConfig):
        key = self._model_key(model)
        if key not in self._models:
            from prefdyn.models import load_model

            self._models[key] = load_model(model.name, cache_dir=model.cache_dir,
                                           device=resolve_device(model.device),
                                           trust_remote_code=model.trust_remote_code)
        return self._models[key]

    def workspace(self, cfg: ExperimentConfig, *, progress: bool = False):
        from prefdyn.experiments.workspace import prepare_workspace

        key = self._workspace_key(cfg)
        if key not in self._workspaces:
            self._workspaces[key] = prepare_workspace(cfg.model, cfg.data, cfg.task, progress=progress,
                                                      loaded=self.model(cfg.model))
        return self._workspaces[key]

    @classmethod
    def _workspace_key(cls, cfg: ExperimentConfig) -> str:
        return repr((cls._model_key(cfg.model), cfg.model.batch_size, cfg.model.reuse_prefix, cfg.data, cfg.task))

    def add_workspace(self, cfg: ExperimentConfig, ws) -> None:
        """Use ``ws`` for ``cfg`` (a workspace built by the caller, e.g. a test's)."""
        self._workspaces[self._workspace_key(cfg)] = ws

    def built(self, cfg: ExperimentConfig) -> tuple[Any, Any]:
        """(workspace, loaded model) for ``cfg`` if already built, else None each (loads nothing)."""
        return (self._workspaces.get(self._workspace_key(cfg)),
                self._models.get(self._model_key(cfg.model)))


def _footer(ctx: RunContext, spec: ExperimentSpec) -> dict[str, Any]:
    cfg = ctx.cfg
    footer: dict[str, Any] = {}
    ws, loaded = ctx.resources.built(cfg)
    source = ws if ws is not None else loaded
    if source is not None:
        name, fingerprint = (ws.model_name, ws.model_fingerprint) if ws is not None else (loaded.name, loaded.fingerprint)
        footer["model"] = f"{name} ({fingerprint[:12]})"
        footer["data"] = cfg.data.path or "prefdyn bundled demo data (written for prefdyn)"
    footer.update(ctx.footer)
    mode = "last_layer" if spec.last_layer else "full"
    footer.update({"seed": cfg.seed, "beta": cfg.train.beta, "lr": cfg.train.lr,
                   "optimizer": cfg.train.optimizer_for(mode), "steps": cfg.train.steps})
    if cfg.preset:
        footer["preset"] = cfg.preset
    if spec.attribution:
        footer["attribution"] = spec.attribution
    return footer


def write_config(run: RunDir, cfg: ExperimentConfig) -> None:
    if run.writes:
        run.file("config.yaml").write_text(yaml.safe_dump(to_yaml_dict(cfg), sort_keys=False))


def run_spec(spec: ExperimentSpec, cfg: ExperimentConfig, *, resources: Resources | None = None,
             progress: bool = False, out: str | Path | None = None) -> tuple[ExperimentResult, Path]:
    """``spec`` with the resolved ``cfg`` in its run folder (``out`` or ``cfg.out/<folder>``)."""
    if spec.parts:
        return run_suite(spec, cfg, resources=resources, progress=progress, out=out)
    set_seed(cfg.seed)
    resources = resources or Resources()
    cfg = spec.prepare(cfg) if spec.prepare else cfg
    out = Path(out) if out is not None else Path(cfg.out) / spec.folder_for(cfg)
    device = resolve_device(cfg.model.device) if spec.needs_model else "cpu"
    with RunDir(out, seed=cfg.seed, device=device) as run:
        # A re-run (after a crash) logs everything again, restored runs included.
        if run.writes:
            run.file("metrics.jsonl").unlink(missing_ok=True)
        write_config(run, cfg)
        ctx = RunContext(cfg, run, resources, progress)
        try:
            result = spec.run(ctx)
        except TrainingError as e:
            # metrics.jsonl already holds every step before the failure.
            run.write_summary({"experiment": spec.name, "error": str(e), "failed_at_step": e.step})
            raise
        for warning in paper_setting_warnings(spec.name, cfg):
            log.warning(warning)
            result.warnings.append(warning)
        if not run.writes:  # another process of a launched run: rank 0 writes the results
            return result, out
        result.write(run)
        subtitle = ctx.subtitle
        ws, loaded = resources.built(ctx.cfg)
        if subtitle is None and ws is not None:
            subtitle = f"{ws.model_name}, {len(ws.names)} behaviors"
        elif subtitle is None and loaded is not None:
            subtitle = loaded.name
        report = Report(f"prefdyn — {result.title}", subtitle=subtitle or "")
        result.add_to(report)
        report.footer(_footer(ctx, spec))
        report.write(run.file("report.html"))
    return result, out


def run_suite(spec: ExperimentSpec, cfg: ExperimentConfig, *, resources: Resources | None = None,
              progress: bool = False, out: str | Path | None = None) -> tuple[ExperimentResult, Path]:
    """A suite (the demo, the scorecard): every part in its own folder under ``out``, one
    report of all, ``summary.json`` with every part's summary.

    With ``spec.summarize`` a part that fails with a :class:`PrefdynError` does not stop the
    suite: its outcome records the error, and the summary (shown first) says so."""
    from prefdyn.experiments.registry import get_spec

    set_seed(cfg.seed)
    resources = resources or Resources()
    out = Path(out) if out is not None else Path(cfg.out)
    suite = RunDir(out)  # its wall_seconds is the whole suite's time
    write_config(suite, cfg)
    outcomes: dict[str, PartOutcome] = {}
    ctx = last = None
    for folder, name, overrides in spec.parts:
        part = get_spec(name)
        if spec.configure_part:
            part_cfg = spec.configure_part(part, cfg, overrides)
        else:
            params = dataclasses.replace(part.params(), **overrides) if part.params else None
            part_cfg = dataclasses.replace(cfg, experiment=params, preset=cfg.preset)
        log.info("running %s", folder)
        outcome = outcomes[folder] = PartOutcome(part.name, out / folder)
        try:
            outcome.result, _ = run_spec(part, part_cfg, resources=resources, progress=progress,
                                         out=out / folder)
        except PrefdynError as e:
            if spec.summarize is None:
                raise
            log.warning("%s failed: %s", folder, e)
            outcome.error = str(e)
            continue
        ctx, last = RunContext(part_cfg, None, resources, progress), part
    results = [o.result for o in outcomes.values() if o.result is not None]
    report = Report(f"prefdyn — {spec.title}", subtitle="")
    summary: dict[str, Any] = {}
    if spec.summarize:
        board = spec.summarize(outcomes)
        board.add_to(report)
        summary.update(board.summary)
    for result in results:
        result.add_to(report)
    summary.update({r.name: r.summary for r in results})
    if spec.needs_model:
        ws = resources.workspace(cfg, progress=progress)
        report.subtitle = f"{ws.model_name} on {len(ws.names)} behaviors, last-layer DPO"
    if ctx is not None:
        report.footer(_footer(ctx, last))
    if suite.writes:
        report.write(out / "report.html")
    combined = ExperimentResult(name=spec.key, title=spec.title, explanation="", summary=summary)
    suite.write_summary({"experiment": spec.key, **summary,
                         "failed": {f: o.error for f, o in outcomes.items() if o.error}})
    return combined, out
