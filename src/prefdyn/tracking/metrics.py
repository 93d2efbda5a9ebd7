"""The metric vocabulary: one name per tracked quantity, used everywhere.

Trackers (:class:`~prefdyn.tracking.lm_metrics.LMEvalTracker`,
:class:`~prefdyn.tracking.displacement.DisplacementMonitor`, the last-layer and
LM step trackers), experiments (their ``summary.json`` keys) and reports (their
captions and column headers, through :func:`describe`) all spell a quantity the
same way, so a number can be followed from ``metrics.jsonl`` to the report.

Per pair, with ``h = (log pi(y+) - log pi_ref(y+)) - (log pi(y-) - log pi_ref(y-))``
(the implicit-reward margin of DPO, Rafailov et al. 2023, Eq. 7, before beta).
A tracker records the mean over a set of pairs under the same name.
"""

from __future__ import annotations

LOSS = "loss"
MARGIN = "margin"
REWARD_ACC = "reward_acc"
POLICY_ACC = "policy_acc"
CHOSEN_LOGP = "chosen_logp"
REJECTED_LOGP = "rejected_logp"
CHOSEN_LOGP_CHANGE = "chosen_logp_change"
REJECTED_LOGP_CHANGE = "rejected_logp_change"
CHOSEN_FELL = "chosen_fell"
LOGP_DIFF = "logp_diff"
DPO_WEIGHT = "dpo_weight"
SPEEDUP = "speedup"
MEAN_SPEEDUP = "mean_speedup"

METRICS: dict[str, str] = {
    LOSS: "the objective's loss (DPO unless the run says otherwise)",
    MARGIN: "reward margin beta * h",
    REWARD_ACC: "share of pairs with reward margin > 0 (ties count 0)",
    POLICY_ACC: "share of pairs where the policy itself prefers y+: log pi(y+) > log pi(y-)",
    CHOSEN_LOGP: "log pi(y+|x)",
    REJECTED_LOGP: "log pi(y-|x)",
    CHOSEN_LOGP_CHANGE: "log pi(y+|x) - log pi_ref(y+|x)",
    REJECTED_LOGP_CHANGE: "log pi(y-|x) - log pi_ref(y-|x)",
    CHOSEN_FELL: ("share of pairs whose chosen log-prob fell below the reference's "
                  "(likelihood displacement, Razin et al. 2024)"),
    LOGP_DIFF: "log pi(y+|x) - log pi(y-|x), the policy's own (not relative to pi_ref)",
    DPO_WEIGHT: "sigma(-margin), DPO's per-example gradient weight (Rafailov et al. 2023, Sec. 4)",
    SPEEDUP: ("misalignment speed-up: decrease of a tracked quantity over the same step budget "
              "from the aligned start / from the base start "
              "(:func:`prefdyn.tracking.speedup.misalignment_speedup`)"),
    MEAN_SPEEDUP: "mean of the per-behavior misalignment speed-ups (finite ones)",
}
"""Every name of the vocabulary and what it measures (report captions use these)."""


def describe(name: str) -> str:
    """``name: what it measures``, for a caption or a table note."""
    if name not in METRICS:
        raise KeyError(f"{name!r} is not in prefdyn's metric vocabulary: {sorted(METRICS)}")
    return f"{name}: {METRICS[name]}"
