"""Theory of the learning dynamics of alignment (Im & Li, ICML 2024; Im & Li 2024b).

Pure math on tensors, below every module that trains or measures. One module per
concern: ``hypotheses`` Theorem 4.1's hypotheses as stated (c_v, c_n, the step-size
rule); ``theorem42`` and ``theorem43`` the paper's Theorems 4.2 and 4.3 as printed,
with both readings of their inconsistent constants; ``first_step`` App. A.3's
constants; ``paper_quantities`` all of these on one behavior; ``bounds`` Theorem
4.1's bound, prefdyn's own lemmas (named theorem42/43_bound for history) and the
closed-form last-layer DPO gradient; ``synthetic`` the alpha-subexponential
generators (two classes with ``||mu+ - mu-|| = d^Delta``; K concepts x Q samples);
``checks`` the tail estimates, theorem checks and the exact A.3 identity; ``scaling``
the K-concept margin rates and the cluster-structure check. The assumption checks on
a behavior's hidden states are in :mod:`prefdyn.diagnostics.theorems`, the runs that
train in :mod:`prefdyn.experiments._theory_runs`.
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
    class_cluster_structure,
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
    "accuracy_bound", "check_theorem41", "check_theorem42", "class_cluster_structure", "cluster_structure", "concept_law",
    "cosines", "dpo_last_layer_grad", "estimate_alpha", "first_step_identity", "fit_exponent",
    "generalized_normal", "gn_psi_norm", "gn_scale", "linear_margin_rates", "psi_norm",
    "steps_to_margin", "tail_ratio", "theorem41_bound", "theorem42_bound", "theorem43_bound",
    "two_class_law",
]

# The paper's statements as printed (Theorem 4.1's hypotheses, Theorems 4.2-4.3, App. A.3's
# constants); the bounds above named theorem42/43 are prefdyn's own lemmas.
from prefdyn.theory.first_step import a3_eq22_logit_factor, a3_logit_gap_factor, a3_reward_factor
from prefdyn.theory.hypotheses import (
    BoundVerdict,
    ClassMoments,
    Theorem41Check,
    Theorem41Hypotheses,
    bound_verdict,
    check_theorem41_hypotheses,
    class_moments,
    paper_step_size,
    theorem41_verdict,
)
from prefdyn.theory.theorem42 import (
    GuaranteeSetting,
    boundary_cosine,
    guarantee_setting,
    theorem42_conditions,
    theorem42_horizon,
    theorem42_lower_bound,
    v_range,
)
from prefdyn.theory.theorem43 import (
    Theorem43Guarantee,
    sample_margins,
    theorem43_conditions,
    theorem43_guarantee,
    theorem43_margin,
    theorem43_S,
    theorem43_steps,
    yes_no_accuracy,
)

__all__ += [
    "BoundVerdict", "ClassMoments", "GuaranteeSetting", "Theorem41Check", "Theorem41Hypotheses",
    "Theorem43Guarantee", "a3_eq22_logit_factor", "a3_logit_gap_factor", "a3_reward_factor", "bound_verdict",
    "boundary_cosine", "check_theorem41_hypotheses", "class_moments", "guarantee_setting", "paper_step_size",
    "sample_margins", "theorem41_verdict", "theorem42_conditions", "theorem42_horizon", "theorem42_lower_bound",
    "theorem43_S", "theorem43_conditions", "theorem43_guarantee", "theorem43_margin", "theorem43_steps",
    "v_range", "yes_no_accuracy",
]
from prefdyn.theory.paper_quantities import paper_quantities

__all__ += ["paper_quantities"]
