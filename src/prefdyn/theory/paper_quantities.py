"""Theorems 4.1-4.3's quantities on one behavior's hidden states, in one JSON-ready dict.

For the theory experiments and the report: everything the paper's statements need, measured on
real (or synthetic) hidden states and the initial answer rows, under every reading prefdyn exposes
(:mod:`prefdyn.theory.hypotheses`, :mod:`prefdyn.theory.theorem42`, :mod:`prefdyn.theory.theorem43`).
Pure: nothing is trained here.
"""

from __future__ import annotations

import math

from torch import Tensor

from prefdyn.theory.hypotheses import TraceReading, check_theorem41_hypotheses
from prefdyn.theory.theorem42 import guarantee_setting, theorem42_conditions, theorem42_horizon, v_range
from prefdyn.theory.theorem43 import theorem43_guarantee

__all__ = ["paper_quantities"]


def paper_quantities(embeddings: Tensor, prefers_yes: Tensor, W_yes: Tensor, W_no: Tensor, *, beta: float,
                     lr: float, v: float | None = None, c_v: float = 1.0,
                     trace_reading: TraceReading = "sqrt_of_trace") -> dict:
    """Theorem 4.1's hypotheses, Theorem 4.2's setting, conditions and horizons (both readings) and
    Theorem 4.3's guaranteed share ``p`` (both readings, both margin rules) for ``embeddings (n, d)``.

    ``v`` and ``c_v`` as in :func:`prefdyn.theory.guarantee_setting`. The Theorem 4.3 entries use
    the samples' own class means for ``mu_+ - mu_-``.
    """
    hyp = check_theorem41_hypotheses(embeddings, prefers_yes, beta=beta, lr=lr, trace_reading=trace_reading)
    s = guarantee_setting(embeddings, prefers_yes, W_yes, W_no, beta=beta, lr=lr, v=v, c_v=c_v,
                          trace_reading=trace_reading)
    lo, hi = v_range(s.d, s.Delta)
    b = embeddings.double()[prefers_yes].mean(0) - embeddings.double()[~prefers_yes].mean(0)
    out = {
        "theorem41": hyp.to_dict(),
        "setting": {**s.__dict__, "c_prime_n": s.c_prime_n, "step_product": s.step_product,
                    "v_range": [lo, hi], "v_range_empty": lo > hi, "v_max_variance": s.v_max_variance()},
        "theorem42": {"conditions": theorem42_conditions(s)},
        "theorem43": {},
    }
    for reading in ("theorem", "appendix"):
        out["theorem42"][f"horizon_{reading}"] = theorem42_horizon(s, reading)
        for rule in ("printed", "proof_eq36"):
            g = theorem43_guarantee(embeddings, prefers_yes, b, s, reading=reading, rule=rule)
            out["theorem43"][f"{reading}_{rule}"] = {"p": g.p, "S": g.S, "margin": g.margin, "steps": g.steps,
                                                      "conditions": g.conditions,
                                                      "conditions_met": g.conditions_met}
    out["setting"] = {k: (v_ if not isinstance(v_, float) or math.isfinite(v_) else str(v_))
                      for k, v_ in out["setting"].items()}
    return out
