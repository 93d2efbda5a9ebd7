"""Misalignment speed-up: the one definition every misalignment experiment reports.

Im & Li (ICML 2024, Sec. 4.3 / Fig. 9; App. C / Fig. 15-16) compare misalignment
(training on flipped preferences) from the base model with misalignment from the
aligned model, each with its own start as the reference: "the aligned model is
more easily misaligned". prefdyn turns that into one number, measured the same
way in the last-layer, LM (full / LoRA) and HH-RLHF experiments so they compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["decrease", "misalignment_speedup", "speedups"]

_TINY = 1e-12


def decrease(steps: ArrayLike, curve: ArrayLike, budget: float | None = None) -> float:
    """``curve`` at the first finite step minus at the last finite step ``<= budget``
    (all steps when ``budget`` is None); NaN when fewer than one finite point."""
    steps, curve = np.asarray(steps, dtype=float), np.asarray(curve, dtype=float)
    keep = np.isfinite(curve) & (steps <= (np.inf if budget is None else budget))
    ok = curve[keep]
    return float(ok[0] - ok[-1]) if len(ok) else float("nan")


def misalignment_speedup(steps: ArrayLike, from_aligned: ArrayLike, from_base: ArrayLike, *,
                         budget: float | None = None) -> float:
    """How much faster misalignment moves from the aligned start than from the base start.

    Exactly: ``decrease(from_aligned) / decrease(from_base)``, where ``decrease`` is
    the drop of a tracked quantity between the start of the flipped-preference run
    (step 0) and the last evaluated step within the same ``budget`` of steps
    (default: every step run), and both curves are evaluated on the same ``steps``.
    The quantity is what misalignment pushes down: the DPO loss on the flipped
    preferences (last-layer and LM persona experiments) or the held-out
    ``logp_diff`` in the true orientation (HH-RLHF). A value above 1 means the
    aligned model is misaligned faster over that budget; NaN when either drop is
    undefined or the base start's drop is (numerically) zero.
    """
    a = decrease(steps, from_aligned, budget)
    b = decrease(steps, from_base, budget)
    if not (np.isfinite(a) and np.isfinite(b)) or abs(b) <= _TINY:
        return float("nan")
    return a / b


def speedups(steps: ArrayLike, from_aligned: Mapping[str, ArrayLike], from_base: Mapping[str, ArrayLike],
             names: Sequence[str], *, budget: float | None = None) -> tuple[dict[str, float], float]:
    """:func:`misalignment_speedup` of every name (behavior) that has both curves, and
    their mean over the finite ones (NaN if none): the ``speedup`` and
    ``mean_speedup`` of the metric vocabulary."""
    per = {n: misalignment_speedup(steps, from_aligned[n], from_base[n], budget=budget)
           for n in names if n in from_aligned and n in from_base}
    finite = [v for v in per.values() if np.isfinite(v)]
    return per, float(np.mean(finite)) if finite else float("nan")
