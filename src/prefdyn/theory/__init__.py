"""Theory of the learning dynamics of alignment (Im & Li, ICML 2024).

One module per result: ``bounds`` holds Theorem 4.1 (the DPO update bound)
and the closed-form last-layer DPO gradient it is about.
"""

from prefdyn.theory.bounds import (
    THEOREM41_CONSTANT,
    dpo_last_layer_grad,
    estimate_theorem41_constants,
    theorem41_bound,
)

__all__ = [
    "THEOREM41_CONSTANT",
    "dpo_last_layer_grad",
    "estimate_theorem41_constants",
    "theorem41_bound",
]
