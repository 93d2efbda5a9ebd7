"""One function per paper experiment, plus the demo that runs them all."""

from prefdyn.experiments.beta_sweep import sweep_experiment
from prefdyn.experiments.config import DataConfig, ExperimentConfig, ModelConfig
from prefdyn.experiments.diagnostics import run_diagnostics
from prefdyn.experiments.displacement_mitigation import MitigationConfig, run_mitigation
from prefdyn.experiments.displacement_predictors import SourceConfig, run_predictors
from prefdyn.experiments.displacement_tokens import TokensConfig, run_token_table
from prefdyn.experiments.distinguishability import run_distinguishability
from prefdyn.experiments.distribution_change import run_distribution_change
from prefdyn.experiments.hh_rlhf import HHPreset, run_hh_experiment, run_hh_rlhf
from prefdyn.experiments.lm_common import LMExperimentPreset, get_preset, run_lm_experiment
from prefdyn.experiments.lm_distinguishability import run_lm_distinguishability
from prefdyn.experiments.lm_misalignment import run_lm_misalignment
from prefdyn.experiments.lm_priority import run_lm_priority
from prefdyn.experiments.misalignment import run_misalignment
from prefdyn.experiments.priority import highest_gap_pair, run_priority
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.runner import EXPERIMENTS, run_demo, run_experiment
from prefdyn.experiments.workspace import Workspace, prepare_workspace

__all__ = ["DataConfig", "EXPERIMENTS", "ExperimentConfig", "ExperimentResult", "LMExperimentPreset",
           "get_preset", "run_distribution_change", "run_lm_distinguishability", "run_lm_experiment",
           "run_lm_priority", "MitigationConfig", "HHPreset", "run_hh_experiment", "run_hh_rlhf",
           "run_lm_misalignment", "sweep_experiment",
           "ModelConfig", "SourceConfig", "TokensConfig", "Workspace", "highest_gap_pair", "prepare_workspace", "run_demo", "run_diagnostics",
           "run_distinguishability", "run_experiment", "run_misalignment", "run_mitigation", "run_predictors", "run_priority",
           "run_token_table"]
