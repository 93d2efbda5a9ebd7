"""One function per paper experiment, plus the demo that runs them all."""

from prefdyn.experiments.config import DataConfig, ExperimentConfig, ModelConfig
from prefdyn.experiments.diagnostics import run_diagnostics
from prefdyn.experiments.distinguishability import run_distinguishability
from prefdyn.experiments.misalignment import run_misalignment
from prefdyn.experiments.priority import highest_gap_pair, run_priority
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.runner import EXPERIMENTS, run_demo, run_experiment
from prefdyn.experiments.workspace import Workspace, prepare_workspace

__all__ = ["DataConfig", "EXPERIMENTS", "ExperimentConfig", "ExperimentResult", "ModelConfig",
           "Workspace", "highest_gap_pair", "prepare_workspace", "run_demo", "run_diagnostics",
           "run_distinguishability", "run_experiment", "run_misalignment", "run_priority"]
