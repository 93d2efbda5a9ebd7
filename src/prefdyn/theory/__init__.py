"""Theory of the learning dynamics of alignment (Im & Li, ICML 2024; Im & Li 2024b).

Pure math on tensors, below every module that trains or measures: ``bounds`` holds
the bounds as pure formulas (Theorem 4.1, our reconstructions of 4.2 and 4.3) and
the closed-form last-layer DPO gradient; ``synthetic`` the alpha-subexponential
generators (two classes with ``||mu+ - mu-|| = d^Delta``; K concepts x Q samples);
``checks`` the tail estimates, theorem checks and the exact A.3 identity;
``scaling`` the K-concept margin rates and the cluster-structure check. The
assumption checks on a behavior's hidden states are in
:mod:`prefdyn.diagnostics.theorems`, the runs that train in
:mod:`prefdyn.experiments._theory_runs`.
"""

from prefdyn.theory.bounds import (
    THEOREM41_CONSTANT,
    dpo_last_layer_grad,
    theorem41_bound,
    theorem42_bound,
    theorem43_bound,
)
from prefdyn.theory.checks import (
    A3Result,
    accuracy_bound,
    check_theorem41,
    check_theorem42,
    cosines,
    estimate_alpha,
    first_step_identity,
    psi_norm,
    tail_ratio,
)
from prefdyn.theory.scaling import (
    ClusterStructure,
    cluster_structure,
    fit_exponent,
    linear_margin_rates,
    steps_to_margin,
)
from prefdyn.theory.synthetic import (
    ConceptLaw,
    TwoClassLaw,
    concept_law,
    generalized_normal,
    gn_psi_norm,
    gn_scale,
    two_class_law,
)

__all__ = [
    "A3Result", "ClusterStructure", "ConceptLaw", "THEOREM41_CONSTANT", "TwoClassLaw",
    "accuracy_bound", "check_theorem41", "check_theorem42", "cluster_structure", "concept_law",
    "cosines", "dpo_last_layer_grad", "estimate_alpha", "first_step_identity", "fit_exponent",
    "generalized_normal", "gn_psi_norm", "gn_scale", "linear_margin_rates", "psi_norm",
    "steps_to_margin", "tail_ratio", "theorem41_bound", "theorem42_bound", "theorem43_bound",
    "two_class_law",
]
