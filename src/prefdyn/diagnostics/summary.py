"""One call from hidden states to a ranked, explained prediction (Im & Li, ICML 2024).

:func:`diagnose` combines the distinguishability of each behavior (Section 3),
the priority levels of the behaviors trained jointly (Section 4.2, Eq. 5) and
the update bound of Theorem 4.1, and :class:`Diagnosis` turns them into a
ranking and a few sentences a researcher can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.diagnostics.distinguishability import BehaviorStats, behavior_stats, check_embeddings
from prefdyn.diagnostics.priority import (
    PriorityGaps,
    PriorityResult,
    priority_gap_matrix,
    priority_levels,
)
from prefdyn.diagnostics.theorems import estimate_theorem41_constants
from prefdyn.errors import DataError, PrefdynError
from prefdyn.theory.bounds import THEOREM41_CONSTANT, theorem41_bound

__all__ = ["LOW_PRIORITY", "NOISY_D_SHARE", "OVERLAP_SHARE", "SIMILAR_D_RATIO", "Diagnosis", "diagnose"]

LOW_PRIORITY = 0.3
"""prefdyn's heuristic, not the paper's: priority levels ``P = cos(b_bar, b_i)`` below this (an angle above ~73 degrees)
are "far below the mean direction": the joint update barely moves the behavior."""

OVERLAP_SHARE = 0.75
"""prefdyn's heuristic, not the paper's: a separable share below this (chance is 0.5) means the classes overlap along
``mu+ - mu-``: more than a quarter of the samples sit on the other class's side.
The share is in-sample, so with ``n`` not much larger than ``d`` it rarely fires;
``NOISY_D_SHARE`` catches that case."""

NOISY_D_SHARE = 0.5
"""prefdyn's heuristic, not the paper's: ``D_debiased / D`` below this: more than half of ``D`` is sampling noise, so
the behavior's rank by ``D`` is not to be trusted without more samples."""

SIMILAR_D_RATIO = 1.5
"""prefdyn's heuristic, not the paper's: largest over smallest ``D`` below this: call the behaviors about equally
distinguishable rather than name a fastest one."""


@dataclass(frozen=True, eq=False)
class Diagnosis:
    """Everything :func:`diagnose` computed; lists are in input order.

    Attributes:
        names: behavior names, ``m`` of them.
        stats: per-behavior :class:`BehaviorStats`.
        priority: Eq. 5 priority levels with sample-share weights.
        gaps: pairwise priority gaps, ``(m, m)`` each.
        bounds: Theorem 4.1's bound on ``||W_U(steps) - W_U(0)||`` per behavior.
        constants: per-behavior :func:`estimate_theorem41_constants` dicts.
        beta, lr, steps: the settings the bounds use.
    """

    names: list[str]
    stats: list[BehaviorStats]
    priority: PriorityResult
    gaps: PriorityGaps
    bounds: list[float]
    constants: list[dict[str, float]]
    beta: float
    lr: float
    steps: int

    def _order(self) -> list[int]:
        proj = self.priority.projection.tolist()
        return sorted(range(len(self.names)), key=lambda i: (-self.stats[i].D, -proj[i]))

    def table(self) -> list[dict[str, str | int | float]]:
        """One row per behavior, fastest predicted learner first (by ``D``, then projection)."""
        rows = []
        for rank, i in enumerate(self._order(), start=1):
            s = self.stats[i]
            rows.append({
                "rank": rank,
                "behavior": self.names[i],
                "n": s.n,
                "D": s.D,
                "D_debiased": s.D_debiased,
                "Delta": s.Delta,
                "scale_free_D": s.scale_free_D,
                "separable_share": s.separable_share,
                "P": float(self.priority.P[i]),
                "projection": float(self.priority.projection[i]),
                "bound": self.bounds[i],
                "C_hat": self.constants[i]["C_hat"],
            })
        return rows

    def explain(self) -> list[str]:
        """Short plain-language findings, most important first."""
        return [
            *self._explain_speed(),
            *self._explain_priority(),
            *self._explain_overlap(),
            *self._explain_noise(),
            self._explain_bound(),
        ]

    def _explain_speed(self) -> list[str]:
        order = self._order()
        top, bottom = self.stats[order[0]], self.stats[order[-1]]
        top_name, bottom_name = self.names[order[0]], self.names[order[-1]]
        if len(order) == 1:
            return [f"{top_name}: D={top.D:.3g} (Delta={top.Delta:.3f} for d={top.d})."]
        ratio = top.D / bottom.D if bottom.D > 0 else math.inf
        if ratio < SIMILAR_D_RATIO:
            return [
                f"All behaviors are about equally distinguishable (D from {bottom.D:.3g} to "
                f"{top.D:.3g}): expect similar speeds alone; jointly, priority decides."
            ]
        return [
            f"{top_name} is the most distinguishable (D={top.D:.3g}, {ratio:.1f}x the least, "
            f"{bottom_name}); DPO should lower its loss fastest."
        ]

    def _explain_priority(self) -> list[str]:
        m = len(self.names)
        if m == 1:
            return []
        P, proj = self.priority.P.tolist(), self.priority.projection.tolist()
        joint = sorted(range(m), key=lambda i: -proj[i])
        lines = [
            "In a joint run the predicted order is "
            + " > ".join(self.names[i] for i in joint)
            + " (by the projection D*P onto the mean direction)."
        ]
        for i in joint:
            when = "last" if i == joint[-1] else "late"
            if P[i] < 0:
                lines.append(
                    f"{self.names[i]} points against the mean direction (P={P[i]:.2f}): in a "
                    f"joint run its margin should first move the wrong way; it will be learned {when}."
                )
            elif P[i] < LOW_PRIORITY:
                lines.append(
                    f"{self.names[i]} has priority P={P[i]:.2f}, far below the mean direction "
                    f"(prefdyn's threshold P < {LOW_PRIORITY:g}): in a joint run it will be learned {when}."
                )
        return lines

    def _explain_overlap(self) -> list[str]:
        return [
            f"{name}: classes overlap (only {s.separable_share:.0%} separable along mu+-mu-): "
            "expect slow, noisy learning."
            for name, s in zip(self.names, self.stats)
            if s.separable_share < OVERLAP_SHARE
        ]

    def _explain_noise(self) -> list[str]:
        return [
            f"{name}: much of D is sampling noise (D={s.D:.3g}, {s.D_debiased:.3g} without the "
            f"noise floor, n={s.n}): collect more samples before trusting its rank."
            for name, s in zip(self.names, self.stats)
            if s.D_debiased < NOISY_D_SHARE * s.D
        ]

    def _explain_bound(self) -> str:
        c_hat = [c["C_hat"] for c in self.constants]
        worst = max(range(len(c_hat)), key=lambda i: c_hat[i])
        if c_hat[worst] > THEOREM41_CONSTANT:
            s = self.stats[worst]
            return (
                f"{self.names[worst]}: the initial DPO gradient rate C_hat={c_hat[worst]:.3g} (prefdyn's "
                f"diagnostic) exceeds Theorem 4.1's {THEOREM41_CONSTANT:g} because the classes are "
                f"unbalanced ({s.n_pos}/{s.n_neg} Yes/No; the paper assumes as many of each), so the first "
                f"step carries part of the shared mean (||mean||={s.mean_norm:.3g} vs D={s.D:.3g}): "
                "Theorem 4.1 does not cover unbalanced classes."
            )
        slack = THEOREM41_CONSTANT / c_hat[worst] if c_hat[worst] > 0 else math.inf
        return (
            f"Theorem 4.1's constant {THEOREM41_CONSTANT:g} is loose here: the observed initial "
            f"rate C_hat (prefdyn's diagnostic) is at most {c_hat[worst]:.3g} ({slack:.0f}x "
            f"below); after {self.steps} steps the bound on ||W_U(t) - W_U(0)|| is at most "
            f"{max(self.bounds):.3g}."
        )

    def to_dict(self) -> dict:
        """JSON-ready summary (tensors become lists; NaN stays NaN)."""
        return {
            "beta": self.beta,
            "lr": self.lr,
            "steps": self.steps,
            "behaviors": [
                {
                    "name": name,
                    **s.to_dict(),
                    "P": float(self.priority.P[i]),
                    "projection": float(self.priority.projection[i]),
                    "weight": float(self.priority.weights[i]),
                    "bound": self.bounds[i],
                    "constants": self.constants[i],
                }
                for i, (name, s) in enumerate(zip(self.names, self.stats))
            ],
            "gap": self.gaps.gap.tolist(),
            "proj_gap": self.gaps.proj_gap.tolist(),
        }


def diagnose(
    names: list[str],
    embeddings: list[Tensor],
    prefers_yes: list[Tensor],
    *,
    beta: float,
    lr: float,
    steps: int,
) -> Diagnosis:
    """Diagnose ``m`` behaviors from their last hidden states before training.

    Args:
        names: ``m`` distinct behavior names.
        embeddings: ``m`` tensors ``(n_i, d)``, the same ``d`` for all.
        prefers_yes: ``m`` bool tensors ``(n_i,)``.
        beta, lr, steps: DPO's ``beta``, the learning rate and the step count at
            which Theorem 4.1's bound is reported.

    Priority levels (Eq. 5) weight each ``b_i`` by its behavior's share of all
    samples, as a joint run over the concatenated data would.

    Raises:
        DataError: mismatched lists, repeated names, differing ``d`` or any
            per-behavior problem (the message names the behavior).
        PrefdynError: ``beta`` or ``lr`` not positive, ``steps`` negative.
    """
    if not (beta > 0 and lr > 0 and steps >= 0):
        raise PrefdynError(f"need beta > 0, lr > 0, steps >= 0; got {beta}, {lr}, {steps}")
    if not len(names) == len(embeddings) == len(prefers_yes) or not names:
        raise DataError(
            f"need as many names, embeddings and labels (at least one): got "
            f"{len(names)}, {len(embeddings)}, {len(prefers_yes)}"
        )
    if len(set(names)) != len(names):
        raise DataError(f"behavior names repeat: {names}")
    for name, g, labels in zip(names, embeddings, prefers_yes):
        check_embeddings(g, labels, what=name)
    widths = {name: g.shape[1] for name, g in zip(names, embeddings)}
    if len(set(widths.values())) > 1:
        raise DataError(f"behaviors have different embedding widths: {widths}")

    stats = [behavior_stats(g, labels) for g, labels in zip(embeddings, prefers_yes)]
    bs = torch.stack([s.b for s in stats])
    shares = torch.tensor([s.n for s in stats], dtype=torch.float64)
    return Diagnosis(
        names=list(names),
        stats=stats,
        priority=priority_levels(bs, shares),
        gaps=priority_gap_matrix(bs, shares),
        bounds=[float(theorem41_bound(beta, lr, steps, s.d, s.D)) for s in stats],
        constants=[
            estimate_theorem41_constants(g, labels, beta)
            for g, labels in zip(embeddings, prefers_yes)
        ],
        beta=beta,
        lr=lr,
        steps=steps,
    )
