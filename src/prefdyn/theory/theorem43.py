"""Theorem 4.3 of Im & Li (ICML 2024): the margin condition for the model's own Yes/No accuracy.

Statement (quoted from Sec. 4.3): "Under the conditions of Theorem 4.2 and additionally assuming
that d^{-v} < (1 - phi) / 13 and that phi >= 0, if at least p% of the samples are linearly separable
by the boundary corresponding to mu_+ - mu_- with margin
m >= 2 c'_n d^{Delta+v} (576 beta' c'_n ||W_B|| + 3) / (3 phi d^v + (1 - 13 d^{-v} - phi)), then with
probability at least 1 - 2n exp(-c' d^{alpha/4}) - 4 exp(-gamma d^{alpha Delta} / (4 c_v)) after
t = d^{1/2-Delta-v} / (72 beta'^2 eta c'_n) steps, our updated boundary will have at least p%
accuracy."

Accuracy is the model's own Yes/No choice on the training samples: App. A.5, "a sample g(x_i^+) is
classified correctly if W_B(t) . g(x_i^+) >= 0 and a sample g(x_i^-) is classified correctly if
W_B(t) . g(x_i^-) <= 0", with ``W_B(t)`` along ``W_U(t)[y_+] - W_U(t)[y_-]`` (:func:`yes_no_accuracy`).
A sample's margin is its signed projection ``s_i g_i . (mu_+ - mu_-) / ||mu_+ - mu_-||``.

Readings:

* ``reading`` (``c'_n`` or ``c_n^2``, see :mod:`prefdyn.theory.theorem42`): the default here is
  ``"appendix"``, the theorem's own print (its margin is derived from ``C = c'_n``). With
  ``reading="theorem"`` the same derivation with ``C = c_n^2`` is used: Eq. 32's
  ``S = phi + eps d^{-v} / (576 beta' C ||W_B|| + 3)`` and the margin
  ``2 c'_n d^{Delta+v} (576 beta' C ||W_B|| + 3) / (3 phi d^v + eps)``.
* ``rule="printed"`` counts the samples with margin at least the printed ``m`` (Eq. 38). That ``m``
  is at least ``2 c_n sqrt(d) / S >= 2 c_n sqrt(d)`` (Eq. 37), while a sample's margin is at most
  ``||g||`` and the proof conditions on ``||g|| <= 2 c_n sqrt(d)`` (Eq. 15-16): on the theorem's own
  event no sample qualifies, so ``p = 0``; the step from Eq. 36 to 37 drops ``sqrt(1 - S^2)``.
  ``rule="proof_eq36"`` (prefdyn's reading, labelled so) counts the samples meeting the proof's
  Eq. 36, ``m_i >= sqrt(1 - S^2) ||g_i|| / S``, which the proof shows suffices; it can be met when
  ``S > 1/sqrt(2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.theory.theorem42 import GuaranteeSetting, Reading, theorem42_conditions, theorem42_horizon

__all__ = ["MarginRule", "Theorem43Guarantee", "sample_margins", "theorem43_conditions", "theorem43_guarantee",
           "theorem43_margin", "theorem43_S", "theorem43_steps", "yes_no_accuracy"]

MarginRule = Literal["printed", "proof_eq36"]


def theorem43_conditions(s: GuaranteeSetting) -> dict[str, bool]:
    """Theorem 4.2's conditions plus ``"d^{-v} < (1 - phi) / 13"`` and ``"phi >= 0"``."""
    return {**theorem42_conditions(s), "d_minus_v": s.d_minus_v < (1 - s.phi) / 13, "phi": s.phi >= 0}


def theorem43_steps(s: GuaranteeSetting, reading: Reading = "appendix") -> float:
    """``t = d^{1/2-Delta-v} / (72 beta'^2 eta c'_n)`` (``reading="appendix"``, as printed), i.e.
    Theorem 4.2's horizon; may be below one step."""
    return theorem42_horizon(s, reading)


def theorem43_S(s: GuaranteeSetting, reading: Reading = "appendix") -> float:
    """Eq. 32: the cosine guaranteed at :func:`theorem43_steps`,
    ``S = phi + eps d^{-v} / (576 beta' C ||W_B|| + 3)``, ``eps = 1 - 13 d^{-v} - phi``."""
    return s.phi + s.epsilon * s.d_minus_v / (576 * s.beta_prime * s.constant(reading) * s.W_B_norm + 3)


def theorem43_margin(s: GuaranteeSetting, reading: Reading = "appendix") -> float:
    """The printed margin (Eq. 38),
    ``2 c'_n d^{Delta+v} (576 beta' C ||W_B|| + 3) / (3 phi d^v + (1 - 13 d^{-v} - phi))``."""
    k = 576 * s.beta_prime * s.constant(reading) * s.W_B_norm + 3
    return 2 * s.c_prime_n * s.d ** (s.Delta + s.v) * k / (3 * s.phi * s.d**s.v + s.epsilon)


def sample_margins(embeddings: Tensor, prefers_yes: Tensor, b: Tensor) -> Tensor:
    """``(n,)`` signed margins ``s_i g_i . b / ||b||`` with the boundary through the origin normal
    to ``b = mu_+ - mu_-`` (``s_i = +1`` where Yes is preferred)."""
    sign = prefers_yes.to(torch.float64) * 2 - 1
    b = b.to(torch.float64)
    return sign * (embeddings.to(torch.float64) @ (b / b.norm()))


def yes_no_accuracy(W_yes: Tensor, W_no: Tensor, embeddings: Tensor, prefers_yes: Tensor) -> Tensor:
    """Share of samples the model itself answers right, App. A.5's rule (ties count as right):
    ``(W_yes - W_no) . g >= 0`` for ``+``, ``<= 0`` for ``-``. ``W_yes``, ``W_no``: ``(..., d)``;
    returns ``(...)`` float64."""
    boundary = (W_yes - W_no).detach().to(torch.float64)
    logit_gap = embeddings.to(torch.float64) @ boundary.unsqueeze(-1)  # (..., n, 1)
    sign = prefers_yes.to(torch.float64) * 2 - 1
    return ((sign * logit_gap.squeeze(-1)) >= 0).to(torch.float64).mean(-1)


@dataclass(frozen=True, eq=False)
class Theorem43Guarantee:
    """Theorem 4.3 on one behavior's training samples.

    Attributes:
        conditions: :func:`theorem43_conditions`; the guarantee applies only if all hold.
        steps: the step count ``t`` it is stated at; S: Eq. 32; margin: the printed ``m``.
        rule, reading: how ``p`` was counted and which constant ``C`` was used.
        qualifies: ``(n,)`` bool, the samples meeting the margin rule; p: their share.
    """

    conditions: dict[str, bool]
    steps: float
    S: float
    margin: float
    rule: str
    reading: str
    qualifies: Tensor
    p: float

    @property
    def conditions_met(self) -> bool:
        return all(self.conditions.values())


def theorem43_guarantee(embeddings: Tensor, prefers_yes: Tensor, b: Tensor, s: GuaranteeSetting, *,
                        reading: Reading = "appendix", rule: MarginRule = "printed") -> Theorem43Guarantee:
    """The accuracy ``p`` Theorem 4.3 guarantees after :func:`theorem43_steps` on these samples.

    ``b`` is ``mu_+ - mu_-`` (the class means of the law, or of these samples). Compare ``p`` with
    :func:`yes_no_accuracy` at ``floor(steps)``; only with ``conditions_met`` does that test the theorem.
    """
    margins = sample_margins(embeddings, prefers_yes, b)
    S = theorem43_S(s, reading)
    m = theorem43_margin(s, reading)
    if rule == "printed":
        qualifies = margins >= m
    elif rule == "proof_eq36":
        norms = embeddings.to(torch.float64).norm(dim=1)
        qualifies = margins >= math.sqrt(max(1 - S**2, 0.0)) * norms / S if S > 0 else torch.zeros_like(margins, dtype=torch.bool)
    else:
        raise PrefdynError(f"rule must be 'printed' or 'proof_eq36', got {rule!r}")
    return Theorem43Guarantee(conditions=theorem43_conditions(s), steps=theorem43_steps(s, reading), S=S,
                              margin=m, rule=rule, reading=reading, qualifies=qualifies,
                              p=float(qualifies.to(torch.float64).mean()))
