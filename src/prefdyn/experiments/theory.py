"""The theory lab: Im & Li's theorems checked numerically, and the K-concept scaling law.

* :func:`run_theorem_grid`: synthetic alpha-subexponential data over a grid of
  ``d``, ``Delta`` (``D = d^Delta``) and ``alpha``; Theorems 4.1-4.3 (ICML 2024)
  measured against their bounds, the fitted exponent of the weight-change rate
  against ``d^Delta``, and the exact first-step identity of Appendix A.3.
* :func:`run_theorems_on_embeddings`: the same checks on real persona behaviors,
  with which of the theorems' assumptions hold there.
* :func:`run_scaling_law`: reward-margin dynamics of ``K`` concepts times ``Q``
  samples (Im & Li 2024b), on synthetic concepts or persona behaviors.

The three live in :mod:`~prefdyn.experiments.theory_grid`, :mod:`~prefdyn.experiments.theory_real`
and :mod:`~prefdyn.experiments.theory_scaling` (what the first two share in ``_theory_eval``);
this module keeps their one import path.
"""

from prefdyn.experiments.theory_grid import GridConfig, run_theorem_grid
from prefdyn.experiments.theory_real import run_theorems_on_embeddings
from prefdyn.experiments.theory_scaling import ScalingConfig, run_scaling_law

__all__ = ["GridConfig", "ScalingConfig", "run_scaling_law", "run_theorem_grid", "run_theorems_on_embeddings"]
