"""``prefdyn reproduce``: every experiment of the four works, then one claim-by-claim scorecard.

A suite run by the one harness (:func:`prefdyn.experiments.harness.run_suite`): each run of
:data:`~prefdyn.experiments._claims.PARTS` resolves its own shipped preset — ``quick`` (the
default) or ``paper`` where the experiment ships one, its default preset otherwise — with the
suite's model, data folder and seed, and writes its own run folder. Then the scorecard
(:mod:`prefdyn.experiments.scorecard`) reads every run's summary and computes each claim's
verdict by the stated rules; it is the report's first section and ``summary.json``'s
``scorecard``. A run that fails (e.g. ``--preset paper`` on the demo data, which lacks the
captions' behaviors) does not stop the suite: its claims are "not testable here" with the error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefdyn.experiments._claims import CLAIMS, PARTS
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.configure import preset_names, resolve_config
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.scorecard import scorecard_result
from prefdyn.experiments.spec import PERSONA_ATTRIBUTION, ExperimentSpec, PartOutcome, register


def part_config(part: ExperimentSpec, cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """``part``'s config: its own preset named like the suite's (else its default preset),
    then the suite's model, data folder (if given) and seed, then ``overrides``."""
    preset = cfg.preset if cfg.preset in preset_names(part) else None
    flags: dict[str, Any] = {"seed": cfg.seed, "model": dataclasses.asdict(cfg.model)}
    if cfg.data.path:
        flags["data"] = {"path": cfg.data.path}
    if overrides:
        flags["experiment"] = overrides
    return resolve_config(part, preset=preset, flags=flags)


def summarize(outcomes: dict[str, PartOutcome]) -> ExperimentResult:
    """The scorecard of :data:`CLAIMS` over the suite's runs."""
    return scorecard_result(
        CLAIMS, outcomes, title="Scorecard: the papers' claims, measured here",
        setting=(f"{len(outcomes)} runs of prefdyn's experiments; each run's own report is linked in the "
                 "last column, and its settings are in its config.yaml."))


SPEC = register(ExperimentSpec(
    name="reproduce", title="the papers' claims, reproduced claim by claim",
    help=("Every experiment of the four works (--preset quick, the default: 2 CPU cores; --preset paper: "
          "the papers' settings, a GPU and --data ../shared/data/persona), then one scorecard: each claim "
          "quoted, the number measured here and a verdict computed by stated rules. Of the common options only "
          "the model ones (--model, --device, --cache-dir), --data and --seed reach the runs; each run's "
          "training settings are its own preset's."),
    default_out="runs/reproduce", default_preset="quick", needs_model=False,
    attribution=PERSONA_ATTRIBUTION, parts=PARTS, configure_part=part_config, summarize=summarize))
