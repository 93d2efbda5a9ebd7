"""An experiment is a spec: a name, a typed config, a function composing library pieces.

Adding an experiment means writing one module that defines a run function and
registers an :class:`ExperimentSpec`; the harness (:mod:`prefdyn.experiments.harness`)
resolves its config, seeds, loads the model, writes the run folder and handles
errors, and the CLI (:mod:`prefdyn.cli`) gets a verb with the common options::

    @dataclass
    class MyParams:
        k: int = 3

    def run_mine(ctx: RunContext) -> ExperimentResult:
        ws = ctx.workspace()                 # behaviors, embeddings, W_U (cached)
        ...                                  # library calls; ctx.sink gets metrics
        return ExperimentResult(name="mine", title=..., explanation=..., summary={...})

    register(ExperimentSpec(name="mine", title="...", params=MyParams, run=run_mine))

``prefdyn mine --k 5 --steps 10`` then runs it; presets are YAML files in
``experiments/presets/mine/`` (see :mod:`prefdyn.experiments.configure`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefdyn.errors import PrefdynError
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.result import ExperimentResult


@dataclass(frozen=True)
class Option:
    """A params field offered as a CLI flag: its flag name (default: the field's) and help."""

    help: str
    flag: str | None = None


@dataclass(frozen=True)
class ExperimentSpec:
    """What the harness and the CLI need to know about one experiment.

    ``name`` is the CLI path ("distinguishability", "lm misalignment"); ``params`` the
    dataclass of its ``experiment:`` section (None: it has none); ``run(ctx)`` the
    experiment itself; ``folder(cfg)`` its run folder under ``cfg.out`` (default: the
    name with ``_`` for spaces); ``default_out`` the ``out`` default; ``default_preset`` the
    preset loaded when none is named; ``options`` the params offered as flags;
    ``last_layer``: trains the unembedding only with the curvature step size (the sweep
    refuses a beta sweep there unless lr is fixed); ``needs_model``: load the model (and
    build the workspace) before ``run``; ``parts``: a suite of other specs (the demo).
    """

    name: str
    title: str
    help: str = ""
    """One line for ``prefdyn <name> --help`` (default: the title)."""
    run: Callable[[RunContext], ExperimentResult] | None = None
    params: type | None = None
    folder: Callable[[ExperimentConfig], str] | None = None
    default_out: str = "runs"
    default_preset: str | None = "default"
    options: dict[str, Option] = field(default_factory=dict)
    last_layer: bool = False
    needs_model: bool = True
    attribution: str = ""
    prepare: Callable[[ExperimentConfig], ExperimentConfig] | None = None
    """Settings that follow from the resolved config (e.g. a per-source default), applied
    before config.yaml is written so that it records what ran."""
    parts: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    """Suite only: (folder, spec name, params overrides) run in order into one report."""
    data_argument: str | None = None
    """When set (its help text), the verb takes an optional positional DATA that sets ``data.path``."""
    check: Callable[[ExperimentResult], None] | None = None
    """Called by the CLI after the run folder and report are written; raises a
    :class:`~prefdyn.errors.PrefdynError` to exit non-zero (e.g. diagnose's ``--fail-on``)."""
    configure_part: Callable[[ExperimentSpec, ExperimentConfig, dict[str, Any]], ExperimentConfig] | None = None
    """Suite only: the config of one part from (part spec, the suite's config, its overrides);
    default: the suite's config with the part's params and the overrides."""
    summarize: Callable[[dict[str, PartOutcome]], ExperimentResult] | None = None
    """Suite only: a result computed from every part's outcome (the scorecard), shown first
    in the report; with it, a part that fails with a :class:`PrefdynError` is recorded in its
    outcome and the suite goes on."""

    @property
    def key(self) -> str:
        """The name as a folder / file name: ``lm misalignment`` -> ``lm-misalignment``."""
        return self.name.replace(" ", "-")

    def folder_for(self, cfg: ExperimentConfig) -> str:
        return self.folder(cfg) if self.folder else self.name.replace(" ", "_").replace("-", "_")


@dataclass
class PartOutcome:
    """One part of a suite: its result (None if it failed), its run folder and its error."""

    spec: str
    folder: Path
    result: ExperimentResult | None = None
    error: str | None = None


@dataclass
class RunContext:
    """What a spec's ``run`` gets: the resolved config, the metrics sink, shared resources.

    ``subtitle`` and ``footer`` may be set by ``run`` for the report (the harness fills
    model, data, seed and the training settings itself).
    """

    cfg: ExperimentConfig
    sink: Any
    resources: Any
    progress: bool = False
    subtitle: str | None = None
    footer: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> Any:
        return self.cfg.experiment

    @property
    def train(self):
        return self.cfg.train

    def model(self):
        """The loaded model (loaded once per process for this ``model`` config)."""
        return self.resources.model(self.cfg.model)

    def workspace(self):
        """Behaviors, their embeddings and the unembedding for this config (cached)."""
        return self.resources.workspace(self.cfg, progress=self.progress)


REGISTRY: dict[str, ExperimentSpec] = {}


def register(spec: ExperimentSpec) -> ExperimentSpec:
    """Add ``spec`` to the registry (the CLI and the sweep read it); returns it."""
    if spec.params is not None and not dataclasses.is_dataclass(spec.params):
        raise PrefdynError(f"spec {spec.name!r}: params must be a dataclass")
    REGISTRY[spec.name] = spec
    return spec



def on_workspace(fn: Callable[..., ExperimentResult]) -> Callable[[RunContext], ExperimentResult]:
    """``run(ctx)`` for a last-layer experiment ``fn(ws, train, *, sink)``."""

    def run(ctx: RunContext) -> ExperimentResult:
        return fn(ctx.workspace(), ctx.train, sink=ctx.sink)

    run.__doc__ = fn.__doc__
    return run


def check_mode(mode: str) -> str:
    """``mode`` if it is a training mode of the LM experiments (full or lora)."""
    if mode not in ("full", "lora"):
        raise PrefdynError(f"--mode (experiment.mode) must be full or lora, got {mode!r}")
    return mode


PERSONA_ATTRIBUTION = (
    "Persona data: Anthropic model-written evaluations (Perez et al. 2022, arXiv 2212.09251), "
    "CC-BY-4.0. Theory: Im & Li, 'Understanding the Learning Dynamics of Alignment with Human "
    "Feedback', ICML 2024.")
