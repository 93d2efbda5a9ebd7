"""A diagnosis checked against a training run (``prefdyn compare DIAGNOSIS RUN``).

``prefdyn diagnose`` predicts, before training, the order in which DPO learns the
concepts of a data set (Im & Li 2024, Sec. 1: "DPO is prone to prioritize learning
behaviors with higher distinguishability") and which pairs will lower the log-prob of their preferred
response. A run recorded by prefdyn (its own loop with
:class:`~prefdyn.tracking.concepts.ConceptTracker`, or TRL with
:mod:`prefdyn.integrations.trl`) leaves ``concepts.jsonl`` and ``pair_logps.json`` in its
folder; this module puts the two side by side.

**Measured learning order.** Each concept's learning speed is read from its curve on
the run's probe pairs, by one of :data:`MEASURES`:

* ``accuracy_auc`` (default): the area under the concept's reward-accuracy curve
  (share of its pairs with reward margin > 0) over the run, trapezoid rule over the
  evaluated steps, divided by the step span: the run-average accuracy, in [0, 1]. A
  concept learned early is right for longer, so a larger area ranks earlier;
* ``margin_half``: the first evaluated step at which the concept's reward margin
  reaches half of its final value; earlier ranks earlier, and a concept whose final
  margin is not positive was never learned and ranks last.

Rank 1 is learned first, as the diagnosis's ``predicted_rank``. The agreement is
Spearman's rho between predicted and measured ranks, with its exact two-sided
permutation p (all K! orderings) for 3 <= K <= 8 concepts and scipy's t approximation
above. rho = 1: the order was predicted exactly.

**Displacement risk.** A probe pair's chosen log-prob *fell* when it ended below its
start (pi_ref). Over the probe pairs: the precision of the diagnosis's ``risky`` list
(the share of listed pairs whose chosen log-prob fell), its recall (the share of the
pairs that fell which were listed), the base rate (the share that fell at all: the
precision of a random list), and the hypergeometric p of at least that many hits in a
random list of the same size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from prefdyn.errors import PrefdynError
from prefdyn.experiments.lm_distinguishability import exact_spearman_p
from prefdyn.tracking.concepts import read_concepts, read_diagnosis, read_pair_logps

if TYPE_CHECKING:
    from prefdyn.reports import Report

__all__ = ["MEASURES", "Comparison", "compare_report", "compare_run", "learning_speed", "measured_ranks",
           "risk_precision"]

MEASURES = ("accuracy_auc", "margin_half")


def learning_speed(steps: np.ndarray, curve: dict[str, np.ndarray], measure: str) -> float:
    """One concept's speed under ``measure`` (see the module docstring); larger is earlier
    (``margin_half`` returns minus the step, -inf when never learned)."""
    ok = np.isfinite(curve["accuracy"] if measure == "accuracy_auc" else curve["margin"])
    s = steps[ok].astype(float)
    if measure == "accuracy_auc":
        acc = curve["accuracy"][ok]
        if len(s) == 0:
            return float("nan")
        if len(s) == 1 or s[-1] == s[0]:
            return float(acc.mean())
        return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))
    if measure == "margin_half":
        margin = curve["margin"][ok]
        if len(s) == 0 or margin[-1] <= 0:
            return -math.inf
        return -float(s[np.argmax(margin >= margin[-1] / 2)])
    raise PrefdynError(f"unknown measure {measure!r}; one of {MEASURES}")


def measured_ranks(speeds: dict[str, float]) -> dict[str, float]:
    """Rank 1 = fastest; ties share their mean rank (as Spearman's rho ranks them)."""
    names = list(speeds)
    ranks = stats.rankdata([-speeds[n] for n in names])  # -inf speed (never learned): last
    return {n: float(r) for n, r in zip(names, ranks)}


@dataclass
class Comparison:
    """The result, JSON-ready with :meth:`to_dict`."""

    diagnosis: str
    run: str
    measure: str
    concepts: list[dict[str, Any]]  # name, predicted_rank, measured_rank, speed, n_probe...
    spearman: float
    p: float
    p_kind: str  # "exact permutation" | "t approximation" | "n/a"
    unmeasured: list[str]
    risk: dict[str, Any]
    steps: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything, with NaN and infinities as null (JSON has neither)."""
        return _json_ready(asdict(self))


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _rank_test(predicted: list[float], measured: list[float]) -> tuple[float, float, str]:
    if len(predicted) < 3 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return float("nan"), float("nan"), "n/a"
    res = stats.spearmanr(predicted, measured)
    exact = exact_spearman_p(predicted, measured)
    if math.isfinite(exact):
        return float(res[0]), exact, "exact permutation"
    return float(res[0]), float(res[1]), "t approximation"


def risk_precision(risky: list[int], pair_logps: dict[str, np.ndarray]) -> dict[str, Any]:
    """Precision, recall, base rate and hypergeometric p of ``risky`` against the probe
    pairs whose chosen log-prob fell (see the module docstring)."""
    indices = pair_logps["indices"].tolist()
    fell = {i for i, a, b in zip(indices, pair_logps["chosen_start"], pair_logps["chosen_end"]) if b < a}
    listed = sorted(set(risky) & set(indices))
    hits = sorted(set(listed) & fell)
    n, k = len(indices), len(fell)
    precision = len(hits) / len(listed) if listed else float("nan")
    base = k / n if n else float("nan")
    p = float(stats.hypergeom.sf(len(hits) - 1, n, k, len(listed))) if listed else float("nan")
    return {"n_probe": n, "n_fell": k, "n_risky_listed": len(risky), "n_risky_probed": len(listed),
            "n_hits": len(hits), "precision": precision,
            "recall": len(hits) / k if k else float("nan"), "base_rate": base,
            "lift": precision / base if listed and base > 0 else float("nan"), "p": p,
            "hits": hits, "fell": sorted(fell)}


def compare_run(diagnosis_path: str | Path, run: str | Path, *, measure: str = "accuracy_auc") -> Comparison:
    """Predicted vs measured learning order and risky pairs (see the module docstring)."""
    if measure not in MEASURES:
        raise PrefdynError(f"unknown measure {measure!r}; one of {MEASURES}")
    diagnosis = read_diagnosis(diagnosis_path)
    steps, curves = read_concepts(run)
    pair_logps = read_pair_logps(run)
    n_pairs = len(diagnosis["concepts"]["assignment"])
    if len(pair_logps["indices"]) and int(pair_logps["indices"].max()) >= n_pairs:
        raise PrefdynError(f"the run probed pair {int(pair_logps['indices'].max())} but the diagnosis "
                           f"has {n_pairs} pairs: not the same data")
    items = diagnosis["concepts"]["items"]
    assignment = np.asarray(diagnosis["concepts"]["assignment"])
    probe_concepts = assignment[pair_logps["indices"]]
    measured = [it for it in items if it["name"] in curves]
    speeds = {it["name"]: learning_speed(steps, curves[it["name"]], measure) for it in measured}
    speeds = {n: s for n, s in speeds.items() if not math.isnan(s)}
    ranks = measured_ranks(speeds)
    rows = [{"name": it["name"], "predicted_rank": it["predicted_rank"],
             "measured_rank": ranks.get(it["name"], float("nan")), "speed": speeds.get(it["name"], float("nan")),
             "n_probe": int((probe_concepts == i).sum()), "priority": it.get("priority"),
             "distinguishability": it.get("distinguishability"), "starved": it.get("starved"),
             "final_accuracy": _last(curves, it["name"], "accuracy"),
             "final_margin": _last(curves, it["name"], "margin")}
            for i, it in enumerate(items)]
    ranked = [r for r in rows if math.isfinite(r["measured_rank"])]
    rho, p, kind = _rank_test([r["predicted_rank"] for r in ranked], [r["measured_rank"] for r in ranked])
    return Comparison(str(diagnosis_path), str(run), measure, rows, rho, p, kind,
                      [r["name"] for r in rows if not math.isfinite(r["measured_rank"])],
                      risk_precision(diagnosis["pairs"]["risky"], pair_logps), steps.tolist())


def _last(curves: dict, name: str, metric: str) -> float:
    if name not in curves:
        return float("nan")
    values = curves[name][metric]
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else float("nan")


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def compare_report(cmp: Comparison) -> Report:
    """The comparison as an HTML report: headlines, the rank scatter, the concepts'
    accuracy curves (read again from the run folder) and the risky-pair table."""
    from prefdyn.reports import Report, plot_curves, plot_scatter_rank

    risk = cmp.risk
    report = Report("Diagnosis vs run", f"{cmp.diagnosis} against the run in {cmp.run}")
    report.headline("Spearman (predicted vs measured order)", _fmt(cmp.spearman, ".2f"),
                    f"{cmp.p_kind} p = {_fmt(cmp.p, '.2g')}, {len(cmp.concepts) - len(cmp.unmeasured)} concepts")
    report.headline("Precision of the risky pairs", _fmt(risk["precision"], ".2f"),
                    f"{risk['n_hits']} of {risk['n_risky_probed']} probed; base rate {_fmt(risk['base_rate'], '.2f')}")
    report.headline("Recall of the risky pairs", _fmt(risk["recall"], ".2f"),
                    f"of {risk['n_fell']} probe pairs whose chosen log-prob fell")
    section = report.section("Learning order", __doc__.split("**Measured learning order.**")[1]
                             .split("**Displacement risk.**")[0].strip())
    ranked = [r for r in cmp.concepts if r["measured_rank"] is not None and math.isfinite(r["measured_rank"])]
    if len(ranked) >= 2:
        section.figure(plot_scatter_rank([r["predicted_rank"] for r in ranked], [r["measured_rank"] for r in ranked],
                                         [r["name"] for r in ranked], xlabel="predicted rank (1 = first)",
                                         ylabel=f"measured rank ({cmp.measure})", p=cmp.p, p_label=cmp.p_kind),
                       "Each point a concept: its predicted learning rank against the rank measured in the run.")
    steps, curves = read_concepts(cmp.run)
    section.figure(plot_curves(steps, {n: c["accuracy"] for n, c in curves.items()}, ylabel="reward accuracy",
                               title="Per-concept reward accuracy on the probe pairs"))
    section.table([{"concept": r["name"], "predicted rank": r["predicted_rank"],
                    "measured rank": _fmt(r["measured_rank"], "g"), "speed": _fmt(r["speed"]),
                    "probe pairs": r["n_probe"], "final accuracy": _fmt(r["final_accuracy"], ".2f"),
                    "starved (predicted)": r["starved"]} for r in cmp.concepts])
    risk_section = report.section("Displacement risk", __doc__.split("**Displacement risk.**")[1].strip())
    dynamics = _probe_curves(Path(cmp.run))
    if dynamics:
        risk_section.figure(plot_curves(*dynamics, ylabel="share of probe pairs",
                                        title="Probe pairs whose chosen log-prob fell (chosen_fell)"))
    risk_section.table([{"quantity": k, "value": _fmt(risk[k]) if isinstance(risk[k], float) else risk[k]}
                        for k in ("n_probe", "n_fell", "n_risky_listed", "n_risky_probed", "n_hits",
                                  "precision", "recall", "base_rate", "lift", "p")])
    report.footer({"diagnosis": cmp.diagnosis, "run": cmp.run, "measure": cmp.measure})
    return report


def _probe_curves(run: Path) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(steps, {"all probe pairs": chosen_fell}) of the run's whole-probe records in
    ``metrics.jsonl`` (split ``probe`` of its ConceptTracker, prefdyn's or the TRL
    callback's), None when there are none."""
    from prefdyn.tracking import History, read_metrics

    if not (run / "metrics.jsonl").is_file():
        return None
    history = History()
    history.records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("group") is None]
    steps, curves = history.curves("chosen_fell", split="probe")
    if not curves:
        return None
    return steps, {"all probe pairs": next(iter(curves.values()))}
