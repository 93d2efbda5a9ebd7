"""``--fail-on``: thresholds on a diagnosis' metrics that make ``prefdyn diagnose`` exit non-zero.

A condition is ``METRIC OP VALUE`` with OP one of ``>``, ``>=``, ``<``, ``<=``; several are
separated by commas (``ches_share>0.2,starved_concepts>0``). The metrics
(:data:`METRICS`) are numbers of the diagnosis, so a data pipeline can be guarded in CI:
the report is written first, then the first crossed condition is the one-line reason.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass

from prefdyn.errors import PrefdynError

METRICS = {
    "ches_share": "share of scored pairs predicted to lower the chosen log-prob (CHES or token geometry)",
    "risky_pairs": "number of such pairs",
    "starved_concepts": "number of concepts predicted to starve in a joint run",
    "problems": "number of data problems (all kinds)",
    "problem_share": "share of records with at least one problem",
    "duplicates": "number of duplicate records",
    "zero_std_share": "share of sampled prompts whose rewards all agree (needs --reward)",
}
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


class ThresholdCrossed(PrefdynError):
    """A ``--fail-on`` condition held; the message is the one-line reason (exit status 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_fail_on(text: str | None) -> list[Condition]:
    """The conditions of ``text`` (None or "" -> none); a malformed one or an unknown metric is an error."""
    conditions = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        match = _CONDITION.match(part)
        if not match:
            raise PrefdynError(f"--fail-on {part.strip()!r}: expected METRIC>VALUE (or >=, <, <=)")
        metric, op, value = match.groups()
        if metric not in METRICS:
            raise PrefdynError(f"--fail-on: unknown metric {metric!r}; use {', '.join(METRICS)}")
        try:
            conditions.append(Condition(metric, op, float(value)))
        except ValueError:
            raise PrefdynError(f"--fail-on {part.strip()!r}: {value!r} is not a number") from None
    return conditions


def crossed(conditions: list[Condition], metrics: Mapping[str, float | None]) -> list[str]:
    """One reason per condition that holds, e.g. ``"ches_share = 0.31 > 0.2"``.

    A condition on a metric the diagnosis did not compute (``zero_std_share`` without
    a reward) is an error, not a pass: a guard that cannot look must not say yes.
    """
    reasons = []
    for c in conditions:
        value = metrics.get(c.metric)
        if value is None:
            raise PrefdynError(f"--fail-on {c}: {c.metric} was not computed ({METRICS[c.metric]})")
        if _OPS[c.op](value, c.value):
            reasons.append(f"{c.metric} = {value:.4g} {c.op} {c.value:g}")
    return reasons
