"""One function per paper experiment, each registered as a spec; one harness runs them.

``registry`` lists the specs (and the demo suite), ``configure`` resolves a run's config
(defaults < preset < --config < flags), ``harness`` runs a spec in its run folder and
``sweep`` runs one over a grid of config values.
"""

from prefdyn.experiments.config import DataConfig, ExperimentConfig, ModelConfig
from prefdyn.experiments.configure import resolve_config
from prefdyn.experiments.diagnostics import run_diagnostics
from prefdyn.experiments.displacement_mitigation import MitigationConfig, run_mitigation
from prefdyn.experiments.displacement_predictors import SourceConfig, run_predictors
from prefdyn.experiments.displacement_tokens import TokensConfig, run_token_table
from prefdyn.experiments.distinguishability import run_distinguishability
from prefdyn.experiments.distribution_change import run_distribution_change
from prefdyn.experiments.harness import Resources, run_spec
from prefdyn.experiments.hh_rlhf import HHPreset, run_hh_rlhf
from prefdyn.experiments.lm_common import LMExperimentPreset, LMParams
from prefdyn.experiments.lm_distinguishability import run_lm_distinguishability
from prefdyn.experiments.lm_misalignment import run_lm_misalignment
from prefdyn.experiments.lm_priority import run_lm_priority
from prefdyn.experiments.misalignment import run_misalignment
from prefdyn.experiments.priority import highest_gap_pair, run_priority
from prefdyn.experiments.registry import get_spec, specs
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.spec import ExperimentSpec, RunContext, register
from prefdyn.experiments.sweep import run_sweep
from prefdyn.experiments.workspace import Workspace, prepare_workspace

__all__ = ["DataConfig", "ExperimentConfig", "ExperimentResult", "ExperimentSpec", "HHPreset",
           "LMExperimentPreset", "LMParams", "MitigationConfig", "ModelConfig", "Resources", "RunContext",
           "SourceConfig", "TokensConfig", "Workspace", "get_spec", "highest_gap_pair", "prepare_workspace",
           "register", "resolve_config", "run_diagnostics", "run_distinguishability", "run_distribution_change",
           "run_hh_rlhf", "run_lm_distinguishability", "run_lm_misalignment", "run_lm_priority",
           "run_misalignment", "run_mitigation", "run_predictors", "run_priority", "run_spec", "run_sweep",
           "run_token_table", "specs"]
