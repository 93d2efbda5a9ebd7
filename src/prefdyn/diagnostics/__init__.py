"""Diagnostics computed from hidden states before training (Im & Li, ICML 2024).

``distinguishability``: per-behavior D, Delta and class geometry (Section 3);
``priority``: priority levels of jointly trained behaviors (Eq. 5);
``summary``: :func:`diagnose`, a ranked and explained prediction;
``theorems``: the theorems' assumptions and constants on one behavior's data.
"""

from prefdyn.diagnostics.distinguishability import BehaviorStats, behavior_stats
from prefdyn.diagnostics.priority import (
    PriorityGaps,
    PriorityResult,
    priority_gap_matrix,
    priority_levels,
)
from prefdyn.diagnostics.summary import Diagnosis, diagnose
from prefdyn.diagnostics.ches import ches_from_sums, ches_scores, pair_hidden_sums
from prefdyn.diagnostics.concentration import ConcentrationRatios, concentration_ratios
from prefdyn.diagnostics.similarity import edit_similarity, last_hidden_inner_products
from prefdyn.diagnostics.token_geometry import (displacement_scores, predicted_gainers,
                                                token_pair_geometry)
from prefdyn.diagnostics.theorems import (Assumption, AssumptionReport, check_assumptions,
                                          estimate_theorem41_constants, theorem42_constants)

__all__ = [
    "BehaviorStats",
    "Diagnosis",
    "PriorityGaps",
    "PriorityResult",
    "behavior_stats",
    "diagnose",
    "priority_gap_matrix",
    "priority_levels",
    "ches_from_sums",
    "ConcentrationRatios",
    "concentration_ratios",
    "ches_scores",
    "pair_hidden_sums",
    "edit_similarity",
    "last_hidden_inner_products",
    "displacement_scores",
    "predicted_gainers",
    "token_pair_geometry",
    "Assumption",
    "AssumptionReport",
    "check_assumptions",
    "estimate_theorem41_constants",
    "theorem42_constants",
]
