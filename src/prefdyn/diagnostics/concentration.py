"""Fig. 8's concentration measure of Im & Li (ICML 2024, Sec. 5.2) beside prefdyn's scale-free one.

Sec. 5.2: "the positive and negative examples generally become more distinguishable after DPO,
and their distributions are more concentrated as their ratios of variance to distinguishability
are reduced."

The paper's quantity is a variance over a distinguishability, ``var / D``. It does not say which
variance; both are reported: the total within-class variance ``Tr(Sigma)`` and the variance along
the discriminating direction ``b_hat^T Sigma b_hat`` (``Sigma`` pooled over the two classes,
``b = mu_+ - mu_-``). ``var / D`` has the units of the hidden states: multiplying every hidden
state by ``c`` multiplies it by ``c``, so before/after comparisons mix concentration with scale
(fine-tuning changes the final norm's scale). prefdyn's own measure is the scale-free
``std / D = sqrt(var) / D`` (``1 / scale_free_D`` of :class:`BehaviorStats` for the trace).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from prefdyn.diagnostics.distinguishability import check_embeddings, class_means
from prefdyn.errors import DataError

__all__ = ["ConcentrationRatios", "concentration_ratios"]


@dataclass(frozen=True)
class ConcentrationRatios:
    """Variance-to-distinguishability ratios of one behavior (floats).

    Attributes:
        D: ``||mu_+ - mu_-||``.
        var_total, var_along: ``Tr(Sigma)`` and ``b_hat^T Sigma b_hat``, pooled within-class.
        paper_total, paper_along: Fig. 8's ``var / D`` (not scale-free).
        std_total, std_along: prefdyn's ``sqrt(var) / D`` (scale-free).
    """

    D: float
    var_total: float
    var_along: float
    paper_total: float
    paper_along: float
    std_total: float
    std_along: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def concentration_ratios(embeddings: Tensor, prefers_yes: Tensor) -> ConcentrationRatios:
    """:class:`ConcentrationRatios` of ``embeddings (n, d)``; ``Sigma`` pooled with ``n - 2``.

    Raises:
        DataError: as :func:`check_embeddings`, or ``D = 0`` (no direction to divide by).
    """
    check_embeddings(embeddings, prefers_yes)
    g = embeddings.to(torch.float64)
    mu_pos, mu_neg = class_means(embeddings, prefers_yes)
    b = mu_pos - mu_neg
    D = float(b.norm())
    if D == 0:
        raise DataError("the class means coincide (D = 0): ratios to D are undefined")
    residuals = torch.where(prefers_yes[:, None], g - mu_pos, g - mu_neg)
    dof = g.shape[0] - 2
    var_total = float(residuals.square().sum()) / dof
    var_along = float((residuals @ (b / D)).square().sum()) / dof
    return ConcentrationRatios(D=D, var_total=var_total, var_along=var_along, paper_total=var_total / D,
                               paper_along=var_along / D, std_total=var_total**0.5 / D,
                               std_along=var_along**0.5 / D)
