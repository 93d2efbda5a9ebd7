"""The constants of App. A.3 of Im & Li (ICML 2024): what the first DPO step does to behavior j.

App. A.3 ends: "the average improvement in logits for behavior B_j after the first step is
(1/n) sum_{i=1}^{n/2} (y_+ - y_-)^T Delta W_U(1) g(x_i^{+,j}) + (1/n) sum_{i=1}^{n/2} (y_- - y_+)^T
Delta W_U(1) g(x_i^{-,j}) (22) [...] and this simplifies to (beta^2 eta / 4) b_bar . b_j (24)".

With the first gradient (Eq. 21) "(1/4) beta (y_+ - y_-) b_bar^T", one step of size ``eta`` moves
the Yes row by ``eta beta b_bar / 4`` and the No row by its opposite, so the Yes-minus-No logit of
a sample ``g`` changes by ``(eta beta / 2) b_bar . g``. Then, for class-balanced behaviors:

* Eq. 22's average (``1/n`` over each half, i.e. half the gap of the class means) is
  ``(eta beta / 4) b_bar . b_j``;
* the gap of the class means of the logit, ``mean_{j+} - mean_{j-}``, is ``(eta beta / 2) b_bar . b_j``;
* the mean DPO implicit-reward margin ``beta s_i (logit change)`` over behavior j's rows is
  ``(beta^2 eta / 4) b_bar . b_j``: Eq. 24's constant, which is a reward (``beta`` times Eq. 22's
  logit quantity), not a logit.

The priority level (Eq. 5) uses only the direction ``b_bar . b_j``; these factors are the same
for every behavior of one run. Exact identities on data: :func:`prefdyn.theory.first_step_identity`.
"""

from __future__ import annotations

from prefdyn.errors import PrefdynError

__all__ = ["a3_eq22_logit_factor", "a3_logit_gap_factor", "a3_reward_factor"]


def _check(beta: float, lr: float) -> None:
    if not (beta > 0 and lr > 0):
        raise PrefdynError(f"need beta > 0 and lr > 0, got {beta}, {lr}")


def a3_reward_factor(beta: float, lr: float) -> float:
    """``beta^2 eta / 4`` (Eq. 24): behavior j's mean first-step DPO reward margin per unit
    ``b_bar . b_j``."""
    _check(beta, lr)
    return beta**2 * lr / 4


def a3_eq22_logit_factor(beta: float, lr: float) -> float:
    """``eta beta / 4``: Eq. 22's average logit improvement (half the class-mean gap) per unit
    ``b_bar . b_j``; Eq. 24 is ``beta`` times this."""
    _check(beta, lr)
    return lr * beta / 4


def a3_logit_gap_factor(beta: float, lr: float) -> float:
    """``eta beta / 2``: change of the gap between behavior j's class means of the Yes-minus-No
    logit per unit ``b_bar . b_j`` (what :func:`prefdyn.theory.first_step_identity` measures)."""
    _check(beta, lr)
    return lr * beta / 2
