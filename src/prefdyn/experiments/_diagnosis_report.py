"""The report of ``prefdyn diagnose DATA``: recommendations tied to their numbers, figures, tables."""

from __future__ import annotations

import shlex
from collections import Counter
from typing import Any

import numpy as np

from prefdyn.data.problems import Problem
from prefdyn.experiments._data_diagnosis import MIN_CONCEPT_PAIRS, DataDiagnosis
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.reports import plot_bars, plot_heatmap
from prefdyn.reports.plots_displacement import plot_score_histogram

EXTENSION_NOTE = (
    "D and P for multi-token pairs are prefdyn's extension of Im & Li (2024), not the paper's: "
    "from the DPO gradient of the unembedding, grad_{W_U} log pi(y|x) = sum_t (e_{y_t} - p_t) h_t^T, "
    "each pair contributes its label part G = sum_t e_{y+_t} h+_t^T - sum_t e_{y-_t} h-_t^T "
    "(h_t: the lm_head input predicting token t). A concept's direction is the mean B_c of its pairs' G; "
    "D_c = sqrt(2) ||B_c||_F and P_c = cos(B_bar, B_c) in the Frobenius inner product, B_bar the "
    "pair-share weighted mean. On single-token Yes/No pairs this is exactly Im & Li's D = ||mu+ - mu-|| "
    "and Eq. 5's priority; the softmax part of the gradient is left out (it cancels there).")


def _problem_summary(problems: list[Problem]) -> str:
    counts = Counter(p.kind for p in problems)
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


def recommendations(diag: DataDiagnosis, pairs_file: str, model: str | None) -> list[dict[str, Any]]:
    """Each with ``text``, the ``number`` behind it and the ``command`` that acts on it (or None)."""
    recs: list[dict[str, Any]] = []
    m = diag.metrics()
    if diag.risky:
        multi_risky = [i for i in diag.risky if diag.ches[i] is not None]
        command = None
        if multi_risky:
            args = ["prefdyn", "filter", pairs_file, "--out", "filtered.jsonl", "--score", "ches",
                    "--threshold", f"{diag.risk_threshold:g}"] + (["--model", model] if model else [])
            command = shlex.join(args)
        recs.append({"text": f"Filter the {len(diag.risky)} pairs predicted to lower the chosen response's "
                             f"likelihood (CHES > {diag.risk_threshold:g}, or the token geometry for "
                             "single-token pairs); first: " + ", ".join(map(str, diag.risky[:10])),
                     "number": f"ches_share = {m['ches_share']:.3f}", "command": command})
    if diag.problems:
        recs.append({"text": f"Fix or drop the {len({p.record for p in diag.problems})} records with data "
                             f"problems ({_problem_summary(diag.problems)}); they are listed with their "
                             "record numbers.", "number": f"problems = {len(diag.problems)}", "command": None})
    for c, name in enumerate(diag.concept_names):
        pr = diag.priority.priority
        if diag.starved[c]:
            recs.append({"text": f"{name!r} is predicted to starve in a joint run (learned last or moved the "
                                 "wrong way first): add pairs for it, reweight it, or train it on its own.",
                         "number": f"P = {fmt(float(pr.P[c]), 3)}, projection = {fmt(float(pr.projection[c]), 3)}",
                         "command": None})
        elif diag.concept_n[c] < MIN_CONCEPT_PAIRS:
            recs.append({"text": f"{name!r} has only {diag.concept_n[c]} pairs: collect more before "
                                 "trusting its rank (prefdyn's minimum is "
                                 f"{MIN_CONCEPT_PAIRS}).", "number": f"n = {diag.concept_n[c]}", "command": None})
    if diag.reward is not None and diag.reward["zero_std_share"] > 0:
        recs.append({"text": "Prompts with no reward spread give RL fine-tuning no gradient (Razin et al., "
                             "ICLR 2024): drop them or change the reward.",
                     "number": f"zero_std_share = {diag.reward['zero_std_share']:.3f}", "command": None})
    return recs


def _risky_rows(diag: DataDiagnosis, top: int) -> list[dict[str, Any]]:
    scored = [i for i, v in enumerate(diag.ches) if v is not None]
    scored.sort(key=lambda i: -diag.ches[i])
    rows = []
    for i in scored[:top]:
        p = diag.data.pairs[i]
        rows.append({"pair": i, "CHES": diag.ches[i], "CHES (length-normalised)": diag.ches_norm[i],
                     "prompt (end)": p.prompt[-120:], "chosen": p.chosen[:160], "rejected": p.rejected[:160]})
    return rows


def diagnosis_result(diag: DataDiagnosis, *, top_risky: int = 10) -> ExperimentResult:
    """The diagnosis as an :class:`ExperimentResult` (headlines, figures, tables, notes)."""
    pr, names, m = diag.priority.priority, diag.concept_names, diag.metrics()
    order = sorted(range(len(names)), key=lambda c: diag.priority.rank[c])
    k_note = ""
    if diag.clustering is not None:
        k_note = (f" No concept column was named: the prompts' last hidden states were clustered by k-means, "
                  f"K = {diag.clustering.k} chosen by the highest mean silhouette over K in "
                  f"{sorted(diag.clustering.scores)}.")
    res = ExperimentResult(
        name="diagnose", title="Before training: what this preference data set predicts",
        explanation=(f"{len(diag.data.pairs)} pairs from {diag.data.source} ({diag.data.format}), "
                     f"{len(diag.usable)} run through {diag.model}; concepts from {diag.concept_source}."
                     + k_note),
        summary={},
        headlines=[("Pairs", str(len(diag.data.pairs)), diag.data.format),
                   ("Predicted first", names[order[0]], f"D = {fmt(float(pr.D[order[0]]), 3)}"),
                   ("Starved concepts", str(sum(diag.starved)), f"of {len(names)}"),
                   ("Displacement risk", f"{m['ches_share']:.1%}", f"{len(diag.risky)} of {diag.n_scored} scored"),
                   ("Data problems", str(len(diag.problems)), _problem_summary(diag.problems)[:60])])
    res.add_figure("concept_D", plot_bars(names, pr.D.tolist(), ylabel="D_c", title="Distinguishability "
                   "(prefdyn's multi-token extension)"), "Larger D: DPO lowers that concept's loss faster.")
    res.add_figure("concept_priority", plot_bars(names, pr.P.tolist(), ylabel="P_c = cos(B_bar, B_c)",
                                                 title="Priority level (all concepts jointly)"),
                   "Eq. 5 of Im & Li 2024 in prefdyn's multi-token extension.")
    if len(names) > 1:
        res.add_figure("concept_priority_gap", plot_heatmap(diag.priority.gaps.gap.numpy(), names, names,
                                                            title="Pairwise priority gap P_i - P_j"),
                       "Trained as a pair, row i is predicted to be learned before column j when positive.")
    scores = np.array([v for v in diag.ches if v is not None], dtype=float)
    if len(scores):
        res.add_figure("ches_hist", plot_score_histogram(scores, xlabel="CHES", threshold=diag.risk_threshold,
                                                         threshold_label="risk threshold"),
                       "CHES per pair (Razin et al. 2024): above the threshold the pair is predicted to "
                       "lower the chosen response's likelihood.")
    examples = diag.examples()
    res.tables.append(("Concepts, predicted learning order", [
        {"rank": diag.priority.rank[c], "concept": names[c], "n": diag.concept_n[c], "D": float(pr.D[c]),
         "P": float(pr.P[c]), "projection": float(pr.projection[c]), "starved": diag.starved[c],
         **({"representative prompt (end)": examples[c]} if examples[c] is not None else {})}
        for c in order]))
    if diag.clustering is not None:
        res.tables.append(("Choice of K (mean silhouette)", [
            {"K": k, "silhouette": v, "chosen": k == diag.clustering.k} for k, v in diag.clustering.scores.items()]))
    if diag.risky or len(scores):
        res.tables.append((f"Riskiest pairs by CHES (top {top_risky})", _risky_rows(diag, top_risky)))
    geo = [{"pair": i, **{k: v for k, v in g.items() if k != "top_gainers"},
            "predicted top gainers": ", ".join(map(repr, g["top_gainers"]))}
           for i, g in diag.geometry_risk.items() if g["risky"]][:top_risky]
    if geo:
        res.tables.append(("Single-token pairs predicted to displace (<W_y+, W_y-> > ||W_y+||^2)", geo))
    if diag.reward is not None:
        r = diag.reward
        res.tables.append((f"Reward spread per prompt ({r['reward']}, {r['method']})", [
            {"record": i, "mean": mu, "std": sd} for i, mu, sd in zip(r["records"], r["mean"], r["std"])]))
    if diag.problems:
        res.tables.append(("Data problems (first 50)", [p.to_dict() for p in diag.problems[:50]]))
    res.tables.append(("Recommendations", [{"recommendation": r["text"], "because": r["number"],
                                            "command": r["command"] or ""} for r in diag.recommendations]))
    res.notes.append(EXTENSION_NOTE)
    return res
