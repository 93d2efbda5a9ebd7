"""The theory lab's specs (``prefdyn theory grid|real|scaling``): Im & Li's theorems checked
numerically on synthetic and real hidden states, and the K-concept scaling law.

The experiments themselves are in :mod:`prefdyn.experiments.theory`; this module says how
their configs reach them. Presets: ``experiments/presets/theory-*/default.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from prefdyn.data import list_behaviors
from prefdyn.errors import PrefdynError
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.spec import PERSONA_ATTRIBUTION, ExperimentSpec, Option, RunContext, register
from prefdyn.experiments.theory import (GridConfig, ScalingConfig, run_scaling_law, run_theorem_grid,
                                        run_theorems_on_embeddings)

THEORY_ATTRIBUTION = ("Theory: Im & Li, 'Understanding the Learning Dynamics of Alignment with Human "
                      "Feedback', ICML 2024; Im & Li, 'Can DPO Learn Diverse Human Values? A Theoretical "
                      "Scaling Law', 2024.")
SCALING_SAFETY = {"synthetic": 0.1, "persona": 1.0}
"""Share of 1/lambda_max(H) per source when ``experiment.safety`` is not given. Synthetic: a
tenth, so steps-to-margin resolves K = 1 (every step is evaluated). Persona: the full step; real
hidden states share a large mean direction that sets lambda_max(H) while barely entering the DPO
update, so smaller steps crawl."""
PERSONA_DIR_N = 64
"""Statements per behavior when a persona folder is given without --n (embedding stays minutes)."""


def persona_workspace(ctx: RunContext, max_behaviors: int):
    """Persona behaviors: the bundled demo, or a folder capped to ``max_behaviors`` seeded
    behaviors and :data:`PERSONA_DIR_N` statements each unless --behaviors / --n say otherwise."""
    cfg: ExperimentConfig = ctx.cfg
    if cfg.data.path is not None:
        if cfg.data.behaviors is None:
            names = list_behaviors(cfg.data.path)
            pick = torch.randperm(len(names), generator=torch.Generator().manual_seed(cfg.seed))
            cfg.data.behaviors = sorted(names[i] for i in pick[:max_behaviors].tolist())
        if cfg.task.n_per_behavior is None:
            cfg.task = dataclasses.replace(cfg.task, n_per_behavior=PERSONA_DIR_N)
    ws = ctx.workspace()
    ctx.subtitle = f"{ws.model_name}, {len(ws.names)} behaviors"
    ctx.footer["persona data"] = PERSONA_ATTRIBUTION
    return ws


def run_grid_spec(ctx: RunContext) -> ExperimentResult:
    """Theorems 4.1-4.3 and A.3 on synthetic alpha-subexponential data over d x Delta x alpha
    (see :func:`run_theorem_grid`); ``train.beta`` is Theorem 4.1's beta'."""
    grid = ctx.params
    ctx.subtitle = f"synthetic, {len(grid.ds) * len(grid.deltas) * len(grid.alphas)} grid points"
    ctx.footer.update({"data": "synthetic (prefdyn.theory.synthetic)", "beta'": ctx.train.beta})
    return run_theorem_grid(grid, ctx.train, seed=ctx.cfg.seed, sink=ctx.sink)


def run_real_spec(ctx: RunContext) -> ExperimentResult:
    """The same checks on real hidden states of persona behaviors: which assumptions hold there?"""
    return run_theorems_on_embeddings(persona_workspace(ctx, 8), ctx.train, sink=ctx.sink)


@dataclass
class ScalingParams(ScalingConfig):
    """:class:`ScalingConfig` plus the ``source`` of the concepts and the step size share
    ``safety`` of 1/lambda_max(H) (None: :data:`SCALING_SAFETY` of the source; it replaces
    ``train.lr_safety`` here)."""

    source: str = "synthetic"
    safety: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in SCALING_SAFETY:
            raise PrefdynError(f"--source must be synthetic or persona, got {self.source!r}")


def scaling_step_size(cfg: ExperimentConfig) -> ExperimentConfig:
    """``train.lr_safety`` = ``experiment.safety``, or the source's :data:`SCALING_SAFETY`."""
    p = cfg.experiment
    safety = SCALING_SAFETY[p.source] if p.safety is None else p.safety
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr_safety=safety))


def run_scaling_spec(ctx: RunContext) -> ExperimentResult:
    """Reward-margin dynamics of K concepts x Q samples (Im & Li 2024b) and the cluster-structure
    check, on synthetic concepts or persona behaviors (see :func:`run_scaling_law`)."""
    p, train = ctx.params, ctx.train
    if p.source == "synthetic":
        ctx.subtitle = "synthetic concepts"
        ctx.footer["data"] = "synthetic (prefdyn.theory.concept_law)"
        return run_scaling_law(p, train, seed=ctx.cfg.seed, sink=ctx.sink)
    ws = persona_workspace(ctx, max(p.ks))
    ctx.subtitle = f"{ws.model_name}, {len(ws.names)} behaviors as concepts"
    return run_scaling_law(p, train, ws=ws, seed=ctx.cfg.seed, sink=ctx.sink)


GRID = register(ExperimentSpec(
    name="theory grid", title="Theorems 4.1-4.3 on synthetic data",
    help="Theorems 4.1-4.3 and A.3 on synthetic alpha-subexponential data over d x Delta x alpha. "
         "Here --beta is Theorem 4.1's beta' (DPO's beta = beta' / sqrt(d)); --lr fixes one eta for "
         "every point, else each d derives lr_safety / lambda_max(H).",
    run=run_grid_spec, params=GridConfig, needs_model=False, last_layer=True, attribution=THEORY_ATTRIBUTION,
    options={"ds": Option("Embedding widths d, comma-separated."),
             "deltas": Option("Exponents Delta (D = d^Delta), comma-separated."),
             "alphas": Option("Tail shapes alpha in (0, 2]: 2 Gaussian, 1 Laplace."),
             "n": Option("Training samples per grid point.", flag="samples"),
             "n_test": Option("Held-out samples per grid point.", flag="test_samples"),
             "sigma": Option("Noise scale of both classes."),
             "common_mean": Option("Norm of a mean shared by both classes (0: centered)."),
             "pos_share": Option("Share of samples preferring Yes."),
             "step_rule": Option("Step size without --lr: curvature (lr_safety / lambda_max(H), outside Theorem "
                                 "4.1's hypotheses) or paper (beta'^2 eta c_n^2 = 1/4)."),
             "paper_d": Option("Width of the extra point inside Theorems 4.2-4.3's conditions (0: none).")}))
REAL = register(ExperimentSpec(
    name="theory real", title="Theorems 4.1-4.3 on real hidden states",
    help="The same checks on real hidden states of persona behaviors: which assumptions hold there?",
    run=run_real_spec, last_layer=True, attribution=THEORY_ATTRIBUTION))
SCALING = register(ExperimentSpec(
    name="theory scaling", title="The K-concept scaling law",
    help="Reward-margin dynamics of K concepts x Q samples (Im & Li 2024b) and the cluster-structure check.",
    run=run_scaling_spec, params=ScalingParams, prepare=scaling_step_size, needs_model=False, last_layer=True,
    folder=lambda cfg: f"theory_scaling_{cfg.experiment.source}", attribution=THEORY_ATTRIBUTION,
    options={"source": Option("synthetic (fast) or persona (behaviors as concepts)."),
             "ks": Option("Numbers of concepts K, comma-separated."),
             "qs": Option("Samples per cluster Q (default: 8,32,128 synthetic; three sizes up to what "
                          "persona data holds)."),
             "d": Option("Synthetic: embedding width d.", flag="dim"),
             "D": Option("Synthetic: per-concept D = ||mu+ - mu-||.", flag="sep"),
             "rho": Option("Synthetic: cosine between concepts' directions."),
             "center_norm": Option("Synthetic: norm of each concept's center."),
             "global_mean": Option("Synthetic: norm of a mean shared by all concepts."),
             "alpha": Option("Synthetic: noise tail shape in (0, 2]."),
             "target": Option("Target reward margin (default: half the smallest final test margin at "
                              "the largest Q)."),
             "safety": Option("Step size as a share of 1/lambda_max(H) (default: 0.1 synthetic, 1.0 persona).")}))
