"""The K-concept scaling law (Im & Li 2024b, "Can DPO Learn Diverse Human Values?"): reward-margin
dynamics of ``K`` concepts times ``Q`` samples, on synthetic concepts or persona behaviors
(:func:`run_scaling_law`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prefdyn.errors import PrefdynError
from prefdyn.experiments._theory_runs import concept_problems, persona_problems, run_margin_dynamics
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.workspace import Workspace
from prefdyn.reports import plot_bars, plot_curves, plot_heatmap
from prefdyn.theory.scaling import class_cluster_structure, cluster_structure, fit_exponent
from prefdyn.theory.synthetic import concept_law
from prefdyn.training import TrainConfig

@dataclass
class ScalingConfig:
    """K concepts x Q samples per cluster. Synthetic: ``d``, per-concept ``D``, correlation
    ``rho`` between concepts, concept centers of norm ``center_norm`` around a ``global_mean``.
    ``qs=None``: (8, 32, 128) synthetic, three sizes up to what the data holds for personas.
    ``target=None``: half the smallest final test margin (so every cell reaches it)."""

    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    qs: tuple[int, ...] | None = None
    d: int = 64
    D: float = 4.0
    rho: float = 0.0
    center_norm: float = 4.0
    global_mean: float = 0.0
    alpha: float = 2.0
    sigma: float = 1.0
    n_test: int = 64
    target: float | None = None

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or (self.qs is not None and min(self.qs, default=0) < 1):
            raise PrefdynError(f"need K >= 1 and Q >= 1, got ks={self.ks}, qs={self.qs}")


def run_scaling_law(sc: ScalingConfig, train: TrainConfig, *, ws: Workspace | None = None, seed: int = 0,
                    sink=None) -> ExperimentResult:
    """Reward-margin dynamics for ``K`` concepts x ``Q`` samples per cluster: synthetic concepts
    (``ws=None``) or persona behaviors of ``ws`` as concepts (``K`` up to their number)."""
    gen = torch.Generator().manual_seed(seed)
    if ws is None:
        law = concept_law(max(sc.ks), sc.d, D=sc.D, rho=sc.rho, center_norm=sc.center_norm,
                          global_mean=sc.global_mean, alpha=sc.alpha, sigma=sc.sigma, generator=gen)
        qs = list(sc.qs or (8, 32, 128))
        problems = concept_problems(law, sc.ks, qs, n_test=sc.n_test, generator=gen)
        g, y, groups = law.sample(32, generator=gen)
        clusters = [(g[groups == k], y[groups == k]) for k in range(law.K)]
        W_init, source = torch.zeros(2, sc.d), f"synthetic concepts (d = {sc.d}, D = {sc.D:g}, rho = {sc.rho:g})"
    else:
        ks = [k for k in sc.ks if k <= len(ws.names)]
        order = torch.randperm(len(ws.names), generator=gen).tolist()
        avail = min(min(int(b.prefers_yes[b.train_idx].sum()), int((~b.prefers_yes[b.train_idx]).sum()))
                    for b in ws.behaviors)
        qs = list(sc.qs or sorted({max(2, avail // 4), max(2, avail // 2), avail}))
        problems = persona_problems(ws, order, ks, qs, generator=gen)
        clusters = [(ws.embeddings[i], ws.behaviors[i].prefers_yes) for i in order[:max(ks)]]
        W_init, source = ws.W_answers, f"persona behaviors embedded with {ws.model_name}"
    structure = cluster_structure([x for x, _ in clusters], problems.concepts)
    by_class = class_cluster_structure([x for x, _ in clusters], [y for _, y in clusters], problems.concepts)
    # How much the concepts share a preference direction: the linear phase predicts
    # steps ~ K / (1 + (K - 1) rho), flat in K when rho -> 1.
    bs = torch.stack([x[y].double().mean(0) - x[~y].double().mean(0) for x, y in clusters])
    cos = torch.nn.functional.cosine_similarity(bs[:, None], bs[None], dim=-1)
    rho_hat = float(cos[~torch.eye(len(bs), dtype=torch.bool)].mean()) if len(bs) > 1 else float("nan")
    sr = run_margin_dynamics(W_init, problems, train, target=sc.target, sink=sink)
    return _scaling_result(sr, structure, by_class, source, train, qs, rho_hat)


def q_gap_effect(cells: list[dict]) -> dict[str, dict[str, float]]:
    """Per K: the final train - test margin gap at the smallest and the largest Q (the summary's
    \"Generalization error decreases as the number of samples per concept increases\")."""
    qs = sorted({c["Q"] for c in cells})
    gap = {(c["K"], c["Q"]): c["final train margin"] - c["final test margin"] for c in cells}
    return {str(K): {"gap_small_Q": gap[(K, qs[0])], "gap_large_Q": gap[(K, qs[-1])]}
            for K in sorted({c["K"] for c in cells}) if (K, qs[0]) in gap and (K, qs[-1]) in gap}


def _scaling_result(sr, structure, by_class: dict, source: str, train: TrainConfig, qs: list[int],
                    rho_hat: float) -> ExperimentResult:
    p = sr.problems
    q_max = max(qs)
    at_q = [(n, K) for n, K, Q in zip(p.names, p.Ks, p.Qs) if Q == q_max]
    cs = structure.to_dict()
    summary = {"source": source, "Ks": sorted(set(p.Ks)), "Qs": qs, "lr": sr.lr, "beta": train.beta,
               "steps": train.steps, "target_margin": sr.target,
               "exponent_steps_vs_K": {str(q): v for q, v in sr.exponent_test.items()},
               "cluster_structure": cs, "cluster_structure_by_class": by_class,
               "preference_direction_correlation": rho_hat, "cells": sr.table(),
               "exponent_is": "prefdyn's derivation (the paper states no exponent in K)"}
    q_effect = q_gap_effect(summary["cells"])
    summary["q_gap_effect"] = q_effect
    smaller = sum(v["gap_large_Q"] < v["gap_small_Q"] for v in q_effect.values())
    expo = sr.exponent_test[q_max]
    predicted = fit_exponent([K for _, K in at_q], [sr.predicted_test[n] for n, _ in at_q])
    summary["predicted_exponent_linear_phase"] = predicted
    res = ExperimentResult(
        name="theory_scaling", title="Scaling law: K concepts x Q samples",
        explanation=(
            f"{source}: K concepts mixed (Q training samples per cluster) and trained jointly with "
            f"last-layer DPO, one step size for all cells (lr = {sr.lr:.3g}). A single boundary normal "
            "must serve every concept, so each concept's share of the update falls like 1/K: the steps "
            f"to reach a test reward margin of {sr.target:.3g} grow like K^{fmt(expo)} at Q = {q_max} "
            f"(prefdyn's derivation, not the paper's: the linear-phase prediction from the first step gives "
            f"K^{fmt(predicted)}; 1 for uncorrelated concepts, "
            f"flatter as their preference directions align: here mean cos(b_k, b_l) = {fmt(rho_hat)}; "
            "later steps slow down more for large K, whose per-concept signal-to-noise along the shared "
            "normal falls like 1/sqrt(K)). Cluster structure: mean cosine within "
            f"behaviors {cs['within']:.2f} vs between {cs['between']:.2f}; after subtracting the global mean "
            f"{cs['within_centered']:.2f} vs {cs['between_centered']:.2f}. Per (concept, class) cluster, "
            f"the assumption the paper makes (K pairs of clusters), centered: within {by_class['within']:.2f}, "
            f"to the same concept's other class {by_class['same_concept_other_class']:.2f}, to other concepts "
            f"{fmt(by_class['other_concepts'])}.\n\nThe Q effect (the summary: \"Generalization error decreases "
            "as the number of samples per concept increases\"): the final train - test margin gap is smaller "
            f"at Q = {q_max} than at Q = {min(qs)} for {smaller} of {len(q_effect)} values of K."),
        summary=summary,
        headlines=[("More samples per concept, smaller train-test gap", f"{smaller}/{len(q_effect)} K",
                    f"margin gap at Q = {q_max} below Q = {min(qs)}"),
                   ("Steps-to-margin exponent in K", fmt(expo),
                    f"Q = {q_max}; prefdyn's linear-phase derivation predicts {fmt(predicted)}"),
                   ("Concepts' preference directions", f"cos {fmt(rho_hat)}", "mean cos(b_k, b_l), k != l"),
                   ("Within / between cosine (centered)",
                    f"{cs['within_centered']:.2f} / {cs['between_centered']:.2f}", "after removing the global mean"),
                   ("(concept, class) clusters separated", "yes" if by_class["separated"] else "no",
                    f"within {by_class['within']:.2f} vs other class {by_class['same_concept_other_class']:.2f}, "
                    f"other concepts {fmt(by_class['other_concepts'])}")])
    res.add_figure("scaling_margins", plot_curves(
        sr.steps, {f"K={K}": sr.train_margin[n] for n, K in at_q},
        dashed={f"K={K}": sr.test_margin[n] for n, K in at_q}, dashed_steps=sr.test_steps,
        ylabel="mean reward margin", title=f"Reward margins, Q = {q_max}"),
        "Train (solid) and test (dashed) reward margins for each number of concepts K.")

    def per_q(values) -> dict[str, np.ndarray]:  # one curve per Q, over K
        return {f"Q={Q}": np.array([v for v, q in zip(values, p.Qs) if q == Q], dtype=float) for Q in qs}

    steps_fig = plot_curves(per_q(p.Ks), per_q([sr.steps_test[n] for n in p.names]),
                            bounds=per_q([sr.predicted_test[n] for n in p.names]),
                            bound_label="linear-phase prediction", logy=True,
                            xlabel="K (concepts)", ylabel=f"steps to test margin {sr.target:.3g}",
                            title="Steps to the target margin")
    steps_fig.axes[0].set_xscale("log", base=2)
    res.add_figure("scaling_steps_to_margin", steps_fig,
                   "Measured steps (solid) and target / (eta beta^2 <m, m_test>) (dashed), per Q.")
    res.add_figure("scaling_cluster_structure", plot_bars(
        ["within", "between", "within (centered)", "between (centered)"],
        [cs["within"], cs["between"], cs["within_centered"], cs["between_centered"]], sort=False,
        ylabel="mean cosine similarity", title="Cluster structure of the concepts"),
        "Mean cosine similarity of hidden states within and between concepts, raw and after "
        "subtracting the global mean.")
    if len(structure.names) > 1:
        res.add_figure("scaling_cluster_matrix", plot_heatmap(
            structure.matrix_centered.numpy(), structure.names, structure.names, annotate=len(structure.names) <= 10,
            title="Mean cosine, global mean removed"), "Row k, column l: mean cosine between concepts k and l.")
    gap = {(c["K"], c["Q"]): c["final train margin"] - c["final test margin"] for c in summary["cells"]}
    Ks = sorted(set(p.Ks))
    q_fig = plot_curves({f"K={K}": np.array(qs, dtype=float) for K in Ks},
                        {f"K={K}": np.array([gap.get((K, Q), np.nan) for Q in qs]) for K in Ks},
                        xlabel="Q (samples per cluster)", ylabel="final train - test margin",
                        title="More samples per concept, smaller generalization gap?")
    q_fig.axes[0].set_xscale("log", base=2)
    res.add_figure("scaling_q_effect", q_fig, "The train - test reward-margin gap at the end of training against Q, "
                   "one curve per K (the Q effect of Im & Li 2024b).")
    res.tables.append(("Per (K, Q) cell", sr.table()))
    return res
