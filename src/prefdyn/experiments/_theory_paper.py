"""The paper's Theorems 4.1-4.3 (Im & Li, ICML 2024) as stated, wired into the theory experiments.

:mod:`prefdyn.experiments.theory` measures prefdyn's own lemmas over the synthetic grid; this
module adds what the paper states: Theorem 4.1's hypotheses and verdict per grid point
(:func:`theorem41_rows`), the paper's step-size rule (:func:`paper_lr`), one synthetic point
inside Theorems 4.2-4.3's conditions (:func:`paper_regime_point`: large ``d``, small ``Delta``, so
"4 log 2 / log d <= v <= 1/2 - Delta" is not empty) trained by full-batch gradient descent, and
the paper's quantities per real behavior (:func:`paper_quantity_rows`).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor

from prefdyn.theory.bounds import dpo_last_layer_grad
from prefdyn.theory.hypotheses import (
    BoundVerdict,
    bound_verdict,
    check_theorem41_hypotheses,
    class_moments,
    theorem41_verdict,
)
from prefdyn.theory.paper_quantities import paper_quantities
from prefdyn.theory.theorem42 import (
    boundary_cosine,
    guarantee_setting,
    theorem42_conditions,
    theorem42_horizon,
    theorem42_lower_bound,
    v_range,
)
from prefdyn.theory.theorem43 import theorem43_guarantee, yes_no_accuracy

__all__ = ["STEP_RULES", "paper_lr", "paper_quantity_rows", "paper_regime_headlines", "paper_regime_point",
           "paper_regime_text", "theorem41_headline", "theorem41_rows", "verdict_counts"]

STEP_RULES = ("curvature", "paper")
"""``curvature``: prefdyn's ``lr_safety / lambda_max(H)`` (outside Theorem 4.1: ``beta'^2 eta c_n^2``
is 8x or more above 1/4); ``paper``: "eta ... such that beta'^2 eta c_n^2 <= 1/4" at equality."""


def paper_lr(samples: list[tuple[Tensor, Tensor]], beta: float) -> float:
    """The largest ``eta`` meeting ``beta'^2 eta c_n^2 <= 1/4`` at every one of ``samples``
    (``(embeddings, prefers_yes)`` pairs trained with one step size)."""
    return min(check_theorem41_hypotheses(G, y, beta=beta, lr=1.0).paper_lr for G, y in samples)


def theorem41_rows(G: Tensor, y: Tensor, steps, measured, *, beta: float, lr: float) -> dict:
    """Theorem 4.1's hypotheses and :class:`~prefdyn.theory.BoundVerdict` for one trained point.

    ``measured`` is ``||W(t) - W(0)||_F``; the two answer rows move by ``+-dW`` (rank one), so it
    equals the theorem's operator norm."""
    hyp = check_theorem41_hypotheses(G, y, beta=beta, lr=lr)
    check = theorem41_verdict(torch.as_tensor(steps), torch.as_tensor(measured), hyp)
    return {"c_n": hyp.c_n, "step_product": hyp.step_product, "step_ok": hyp.step_ok, "Delta_hat": hyp.Delta,
            "delta_ok": hyp.delta_ok, "balanced": hyp.balanced, "hypotheses_met": hyp.met,
            "verdict": check.verdict.value}


def verdict_counts(verdicts: list[str]) -> dict[str, int]:
    """How many points fall in each :class:`BoundVerdict` (every class listed, zeros included)."""
    seen = Counter(verdicts)
    return {v.value: seen.get(v.value, 0) for v in BoundVerdict}


def theorem41_headline(verdicts: dict[str, int], products: list[float], what: str) -> tuple[str, str, str]:
    """The headline "Theorem 4.1, hypotheses met": how often the bound holds where the paper's
    hypotheses are met, or "not tested" (with the step products) where they never are."""
    met = verdicts[BoundVerdict.HOLDS_HYPOTHESES_MET.value] + verdicts[BoundVerdict.FAILS_HYPOTHESES_MET.value]
    if met:
        return ("Theorem 4.1, hypotheses met", f"holds at {verdicts[BoundVerdict.HOLDS_HYPOTHESES_MET.value]} / {met}",
                f"{what}s with beta'^2 eta c_n^2 <= 1/4, Delta <= 1/2, balanced")
    return ("Theorem 4.1, hypotheses met", "not tested",
            (f"no {what} meets beta'^2 eta c_n^2 <= 1/4 (here {min(products):.3g} to {max(products):.3g}), "
             "Delta <= 1/2 and balanced classes together"))


def _paper_data(d: int, n: int, D: float, phi0: float, noise: float, generator: torch.Generator):
    """Classes at ``+-(D/2) b_hat`` with isotropic noise; ``W_B`` at cosine ``phi0`` with ``b_hat``."""
    b_hat = torch.randn(d, generator=generator, dtype=torch.float64)
    b_hat /= b_hat.norm()
    other = torch.randn(d, generator=generator, dtype=torch.float64)
    other -= (other @ b_hat) * b_hat
    other /= other.norm()
    y = torch.arange(n) < n // 2
    G = (y.double() * 2 - 1)[:, None] * (D / 2) * b_hat + noise * torch.randn(n, d, generator=generator,
                                                                              dtype=torch.float64)
    W_B = phi0 * b_hat + math.sqrt(1 - phi0**2) * other
    return G, y, torch.stack([W_B / 2, -W_B / 2])


def paper_regime_point(*, d: int = 4096, n: int = 32, D: float = 0.5, phi0: float = 0.8, noise: float = 0.002,
                       target_steps: int = 40, reading: str = "appendix", seed: int = 0) -> dict:
    """Theorems 4.1-4.3 at one synthetic point inside their conditions, trained by plain GD.

    ``beta' = 1``; ``v`` the largest admissible; ``eta`` chosen so that Theorem 4.2's horizon
    ``d^{1/2-Delta-v} / (72 beta'^2 eta C)`` is ``target_steps`` (``C`` by ``reading``), which keeps
    ``beta'^2 eta c_n^2`` far below 1/4. Returns the conditions, verdicts and curves.
    """
    gen = torch.Generator().manual_seed(seed)
    G, y, W0 = _paper_data(d, n, D, phi0, noise, gen)
    beta = 1 / math.sqrt(d)
    probe = guarantee_setting(G, y, W0[0], W0[1], beta=beta, lr=1.0)
    eta = d ** (0.5 - probe.Delta - probe.v) / (72 * probe.beta_prime**2 * probe.constant(reading) * target_steps)
    s = guarantee_setting(G, y, W0[0], W0[1], beta=beta, lr=eta)
    T = math.floor(theorem42_horizon(s, reading) + 1e-9)
    W, history = W0.clone(), [W0.clone()]
    for _ in range(T):
        W = W - eta * dpo_last_layer_grad(W, W0, G, y, beta)
        history.append(W)
    Ws = torch.stack(history)
    steps = torch.arange(T + 1)
    b = class_moments(G, y).b
    cos = boundary_cosine(Ws[:, 0], Ws[:, 1], b)
    bound42 = theorem42_lower_bound(steps, s, reading)
    t41 = theorem41_verdict(steps, torch.linalg.matrix_norm(Ws - W0, ord=2),
                            check_theorem41_hypotheses(G, y, beta=beta, lr=eta))
    cond42 = theorem42_conditions(s)
    acc = float(yes_no_accuracy(Ws[-1, 0], Ws[-1, 1], G, y))
    t43 = {rule: theorem43_guarantee(G, y, b, s, reading=reading, rule=rule) for rule in ("printed", "proof_eq36")}
    holds42 = bool((cos >= bound42 - 1e-12).all())
    lo, hi = v_range(d, s.Delta)
    return {
        "d": d, "n": n, "D": D, "Delta": s.Delta, "v": s.v, "v_range": [lo, hi], "phi": s.phi, "eta": eta,
        "beta_prime": s.beta_prime, "step_product": s.step_product, "reading": reading, "horizon": T,
        "theorem41": {"verdict": t41.verdict.value, "holds": t41.holds},
        "theorem42": {"conditions": cond42, "holds": holds42,
                      "verdict": _verdict(holds42, all(cond42.values())),
                      "final_cosine": float(cos[-1]), "final_bound": float(bound42[-1])},
        "theorem43": {rule: {"p": g.p, "accuracy": acc, "conditions_met": g.conditions_met,
                             "verdict": _verdict(acc >= g.p, g.conditions_met)} for rule, g in t43.items()},
        "curves": {"steps": steps.numpy(), "cos": cos.numpy(), "bound42": bound42.numpy()},
    }


def _verdict(holds: bool, met: bool) -> str:
    return bound_verdict(bool(holds), bool(met)).value


def paper_quantity_rows(name: str, G: Tensor, y: Tensor, W_yes: Tensor, W_no: Tensor, *, beta: float,
                        lr: float) -> dict:
    """One table row of the paper's quantities for a behavior: ``c_n`` under both readings of the
    trace term, ``beta'^2 eta c_n^2``, ``Delta``, whether Theorem 4.2's v-range is empty, its
    horizon under both readings of ``C`` and Theorem 4.3's ``p`` (appendix reading, both rules)."""
    q = paper_quantities(G, y, W_yes, W_no, beta=beta, lr=lr)
    q_sqrt = check_theorem41_hypotheses(G, y, beta=beta, lr=lr, trace_reading="trace_of_sqrt")
    t41 = q["theorem41"]
    return {"behavior": name, "c_n (Tr(Sigma)^1/2)": t41["c_n"], "c_n (Tr(Sigma^1/2))": q_sqrt.c_n,
            "beta'^2 eta c_n^2": t41["step_product"], "<= 1/4": t41["step_ok"],
            "beta'^2 eta c_n^2 (Tr(Sigma^1/2))": q_sqrt.step_product, "Delta": t41["Delta"],
            "Delta <= 1/2": t41["delta_ok"], "balanced": t41["balanced"],
            "v-range empty": q["setting"]["v_range_empty"],
            "4.2 horizon (c_n^2)": q["theorem42"]["horizon_theorem"],
            "4.2 horizon (c'_n)": q["theorem42"]["horizon_appendix"],
            "4.3 p (printed m)": q["theorem43"]["appendix_printed"]["p"],
            "4.3 p (proof Eq. 36)": q["theorem43"]["appendix_proof_eq36"]["p"]}


def paper_regime_text(paper: dict | None) -> str:
    """One sentence on :func:`paper_regime_point`'s verdicts for the report ('' without one)."""
    if paper is None:
        return ""
    t42, t43 = paper["theorem42"], paper["theorem43"]
    return (f"The paper's Theorems 4.2-4.3 at d = {paper['d']}, Delta = {paper['Delta']:.3f} (v-range "
            f"[{paper['v_range'][0]:.3f}, {paper['v_range'][1]:.3f}], v = {paper['v']:.3f}, beta'^2 eta c_n^2 = "
            f"{paper['step_product']:.2g}), {paper['horizon']} GD steps ({paper['reading']} reading): "
            f"4.1 {paper['theorem41']['verdict']}; 4.2 {t42['verdict']} (final cosine {t42['final_cosine']:.6f} "
            f"against the bound {t42['final_bound']:.6f}); 4.3 Yes/No accuracy on the training samples "
            f"{t43['printed']['accuracy']:.0%} against p = {t43['printed']['p']:.0%} with the printed margin "
            f"({t43['printed']['verdict']}) and p = {t43['proof_eq36']['p']:.0%} with the proof's Eq. 36 "
            f"(prefdyn's reading; {t43['proof_eq36']['verdict']}).")


def paper_regime_headlines(paper: dict | None) -> list[tuple[str, str, str]]:
    """Headlines for the paper's Theorems 4.2 and 4.3 at the paper-regime point (none without one)."""
    if paper is None:
        return []
    return [("Theorem 4.2 (paper)", paper["theorem42"]["verdict"], f"d = {paper['d']}, {paper['horizon']} steps"),
            ("Theorem 4.3 (paper)", paper["theorem43"]["proof_eq36"]["verdict"],
             (f"p = {paper['theorem43']['proof_eq36']['p']:.0%} (proof Eq. 36), "
              f"{paper['theorem43']['printed']['p']:.0%} (printed m)"))]
