"""The scorecard: each claim of the papers, the number measured here, and a verdict by rule.

A :class:`Claim` quotes one sentence of a paper (with its section), names the run folder of
the suite that measures it (``part``) and a ``test`` that reads that run's ``summary`` and
returns :class:`Evidence`: the measured number as shown, and whether the claim's criterion
holds (``True``/``False``) or cannot be decided from this run (``None``, with the reason).
The verdict is then computed by :func:`verdict_of`, never written by hand:

* **not testable here**: the claim has no experiment in prefdyn, its run failed (the error is
  shown), or its test returns ``None`` (the quantity is undefined, or too few units for the
  criterion to decide, e.g. an exact rank test over 3 behaviors cannot reach p <= 0.05);
* **reproduced**: the run finished and the criterion holds;
* **not reproduced at this scale**: the run finished and the criterion fails. "At this scale"
  because prefdyn's runs are smaller than the papers' (model, data, steps); the verdict is
  about this run, not about the paper.

The criteria are stated in :data:`RULES` and in each claim's ``criterion``; the helpers below
(:func:`rank_evidence`, :func:`share_evidence`) are the shared ones.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefdyn.experiments.lm_distinguishability import exact_spearman_p
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.spec import PartOutcome
from prefdyn.reports import Link, spearman

ALPHA = 0.05
"""Significance level of every rank-correlation criterion (two-sided, exact for <= 8 units)."""

EXACT_MAX = 8
"""Up to this many units the permutation p-value is exact (all n! orderings)."""


class Verdict(str, enum.Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced at this scale"
    NOT_TESTABLE = "not testable here"


RULES = (
    f"{Verdict.NOT_TESTABLE.value}: prefdyn has no experiment for the claim, its run failed (the error is "
    "shown), or the measured quantity cannot decide the criterion (undefined, or too few units: an exact "
    f"rank test over n units cannot reach p <= {ALPHA} when 2/n! > {ALPHA}, i.e. n <= 4).",
    f"{Verdict.REPRODUCED.value}: the run finished and the claim's criterion holds.",
    f"{Verdict.NOT_REPRODUCED.value}: the run finished and the criterion fails (about this run's model, "
    "data and length, not about the paper).",
    f"Rank criteria: Spearman's rho has the claimed sign and its two-sided p <= {ALPHA} (exact permutation "
    f"p for up to {EXACT_MAX} units, scipy's otherwise).",
)


@dataclass(frozen=True)
class Evidence:
    """What a claim's test read from its run: ``measured`` as shown in the table, ``holds``
    (None: undecidable, ``why`` says why) and ``why`` (the reason, or the detail behind it)."""

    measured: str
    holds: bool | None
    why: str = ""


@dataclass(frozen=True)
class Claim:
    """One claim of one work, quoted, and how prefdyn tests it.

    ``part``: the suite folder whose run measures it (None: no prefdyn experiment does;
    ``why_untested`` says why); ``test(summary) -> Evidence``.
    """

    key: str
    work: str
    where: str
    quote: str
    quantity: str
    criterion: str
    part: str | None
    test: Callable[[Mapping[str, Any]], Evidence] | None = None
    why_untested: str = ""


def verdict_of(evidence: Evidence | None) -> Verdict:
    """The rule: no evidence or ``holds is None`` -> not testable; else reproduced or not."""
    if evidence is None or evidence.holds is None:
        return Verdict.NOT_TESTABLE
    return Verdict.REPRODUCED if evidence.holds else Verdict.NOT_REPRODUCED


def judge(claim: Claim, outcome: PartOutcome | None) -> tuple[Evidence | None, str]:
    """(evidence, reason) for ``claim`` from its part's ``outcome`` (None: the part did not run)."""
    if claim.part is None or claim.test is None:
        return None, claim.why_untested or "prefdyn has no experiment for this claim"
    if outcome is None:
        return None, f"its run ({claim.part}) was not part of this suite"
    if outcome.error is not None or outcome.result is None:
        return None, f"its run failed: {outcome.error}"
    try:
        evidence = claim.test(outcome.result.summary)
    except (KeyError, TypeError, IndexError) as e:
        return None, f"its run's summary lacks what the test reads ({type(e).__name__}: {e})"
    return evidence, evidence.why


# ------------------------------------------------------------ shared criteria ---

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rank_p(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Two-sided p of Spearman's rho: exact up to :data:`EXACT_MAX` points, scipy's beyond."""
    return exact_spearman_p(xs, ys) if len(xs) <= EXACT_MAX else spearman(xs, ys)[1]


def rank_evidence(x: Mapping[str, float], y: Mapping[str, float], *, sign: int = 1,
                  what: str = "behaviors") -> Evidence:
    """Spearman(x, y) over the names both map to finite values; holds when rho has ``sign``
    and p <= :data:`ALPHA`; None when too few names for the test to reach ALPHA."""
    names = [n for n in x if n in y and _finite(x[n]) and _finite(y[n])]
    n = len(names)
    if n < 3:
        return Evidence(f"{n} {what}", None, f"a rank correlation needs 3 {what} or more, got {n}")
    xs, ys = [float(x[k]) for k in names], [float(y[k]) for k in names]
    rho, p = spearman(xs, ys)[0], rank_p(xs, ys)
    shown = f"rho = {rho:.2f}, p = {p:.2g} (n = {n})"
    smallest = 2 / math.factorial(n) if n <= EXACT_MAX else 0.0
    if smallest > ALPHA:
        return Evidence(shown, None, f"with {n} {what} the exact test cannot reach p <= {ALPHA} "
                                     f"(smallest possible p = {smallest:.2g})")
    if not math.isfinite(rho):
        return Evidence(shown, None, "rho is undefined (a constant quantity)")
    return Evidence(shown, bool(rho * sign > 0 and p <= ALPHA), f"claimed sign: {'+' if sign > 0 else '-'}")


def share_evidence(flags: Mapping[str, bool | None], *, need: str = "all", what: str = "behaviors") -> Evidence:
    """How many ``flags`` hold; ``need`` = ``all`` or ``majority`` (more than half)."""
    known = {k: bool(v) for k, v in flags.items() if v is not None}
    if not known:
        return Evidence(f"0 {what}", None, f"no {what} measured")
    k, n = sum(known.values()), len(known)
    holds = k == n if need == "all" else k > n / 2
    return Evidence(f"{k}/{n} {what}", holds, f"needs {'every one' if need == 'all' else 'more than half'}")


# ---------------------------------------------------------------- the table ---

def scorecard_rows(claims: Sequence[Claim], outcomes: Mapping[str, PartOutcome], *,
                   relative_to: Path | None = None) -> list[dict[str, Any]]:
    """One row per claim: work, section, quote, quantity, measured, verdict, why, run folder."""
    rows = []
    for claim in claims:
        outcome = outcomes.get(claim.part) if claim.part else None
        evidence, why = judge(claim, outcome)
        folder = None
        if outcome is not None:
            folder = os.path.relpath(outcome.folder, relative_to) if relative_to else str(outcome.folder)
        rows.append({"claim": claim.key, "work": claim.work, "where": claim.where, "quote": claim.quote,
                     "quantity": claim.quantity, "criterion": claim.criterion,
                     "measured": evidence.measured if evidence else "", "verdict": verdict_of(evidence).value,
                     "why": why, "run": folder})
    return rows


def scorecard_result(claims: Sequence[Claim], outcomes: Mapping[str, PartOutcome], *,
                     title: str, setting: str) -> ExperimentResult:
    """The claims table as the suite's first section (and its ``scorecard`` summary)."""
    base = next(iter(outcomes.values())).folder.parent if outcomes else None
    rows = scorecard_rows(claims, outcomes, relative_to=base)
    counts = {v.value: sum(r["verdict"] == v.value for r in rows) for v in Verdict}
    shown = [{"work": r["work"], "where": r["where"], "claim (quoted)": f"“{r['quote']}”",
              "quantity": f"{r['quantity']} — criterion: {r['criterion']}", "measured": r["measured"],
              "verdict": r["verdict"], "why": r["why"],
              "run": Link(r["run"], f"{r['run']}/report.html") if r["run"] else ""} for r in rows]
    res = ExperimentResult(
        name="scorecard", title=title,
        explanation=(f"{setting}\n\nEach claim is quoted with its section; the verdict is computed from the "
                     "run's summary by the rules below, never written by hand. Rules: " + " ".join(RULES)),
        summary={"scorecard": rows, "verdict_counts": counts, "rules": list(RULES)},
        headlines=[(v.value, str(counts[v.value]), f"of {len(rows)} claims") for v in Verdict])
    res.tables.append(("Claim by claim", shown))
    return res
