"""Theorems 4.1-4.3 against plain gradient descent on the last layer, at a synthetic point inside
the paper's conditions (large d, small Delta, so the v-range of Theorem 4.2 is not empty)."""

import math

import pytest
import torch
import torch.nn.functional as F

from prefdyn.theory import (
    BoundVerdict,
    boundary_cosine,
    check_theorem41_hypotheses,
    class_moments,
    guarantee_setting,
    theorem41_verdict,
    theorem42_conditions,
    theorem42_horizon,
    theorem42_lower_bound,
    theorem43_conditions,
    theorem43_guarantee,
    v_range,
    yes_no_accuracy,
)

D, PHI0, NOISE, V = 0.5, 0.8, 0.002, 0.55


def _point(d: int = 4096, n: int = 32):
    """Classes at +-(D/2) b_hat with tiny isotropic noise; W_B at cosine PHI0 with b_hat; a shared row."""
    gen = torch.Generator().manual_seed(0)
    b_hat = torch.randn(d, generator=gen, dtype=torch.float64)
    b_hat /= b_hat.norm()
    other = torch.randn(d, generator=gen, dtype=torch.float64)
    other -= (other @ b_hat) * b_hat
    other /= other.norm()
    prefers_yes = torch.arange(n) < n // 2
    sign = prefers_yes.double() * 2 - 1
    g = sign[:, None] * (D / 2) * b_hat + NOISE * torch.randn(n, d, generator=gen, dtype=torch.float64)
    W_B = PHI0 * b_hat + math.sqrt(1 - PHI0**2) * other
    shared = 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    return g, prefers_yes, torch.stack([shared + W_B / 2, shared - W_B / 2])


def _dpo_gd(g, prefers_yes, W0, beta, eta, steps):
    """Full-batch GD on the DPO loss of the (Yes, No) unembedding, by autograd; returns (T+1, 2, d)."""
    chosen, rejected = torch.where(prefers_yes, 0, 1), torch.where(prefers_yes, 1, 0)
    rows = torch.arange(g.shape[0])
    ref = F.log_softmax(g @ W0.T, -1)
    W = W0.clone().requires_grad_(True)
    history = [W0.clone()]
    for _ in range(steps):
        logp = F.log_softmax(g @ W.T, -1)
        margin = (logp[rows, chosen] - ref[rows, chosen]) - (logp[rows, rejected] - ref[rows, rejected])
        (grad,) = torch.autograd.grad(-F.logsigmoid(beta * margin).mean(), W)
        with torch.no_grad():
            W -= eta * grad
        history.append(W.detach().clone())
    return torch.stack(history)


@pytest.mark.parametrize(("reading", "target_steps"), [("theorem", 60), ("appendix", 40)])
def test_bounds_hold_for_gd_inside_the_conditions(reading, target_steps):
    d = 4096
    g, prefers_yes, W0 = _point(d)
    beta = 1 / math.sqrt(d)  # beta' = 1
    lo, hi = v_range(d, math.log(D) / math.log(d))
    assert lo < V < hi  # d^(-v) = 4096^-0.55 = 0.0103, 13 d^-v = 0.134
    # eta so that the horizon d^(1/2-Delta-v) / (72 beta'^2 eta C) is target_steps.
    probe = guarantee_setting(g, prefers_yes, W0[0], W0[1], beta=beta, lr=1.0, v=V)
    eta = d ** (0.5 - probe.Delta - V) / (72 * probe.beta_prime**2 * probe.constant(reading) * target_steps)
    s = guarantee_setting(g, prefers_yes, W0[0], W0[1], beta=beta, lr=eta, v=V)
    assert all(theorem42_conditions(s).values()) and all(theorem43_conditions(s).values())
    T = math.floor(theorem42_horizon(s, reading) + 1e-9)
    assert T == target_steps
    W = _dpo_gd(g, prefers_yes, W0, beta, eta, T)
    b = class_moments(g, prefers_yes).b

    # Theorem 4.2: cos(W_U(t)[y+] - W_U(t)[y-], mu+ - mu-) >= the bound for every t <= horizon.
    cos = boundary_cosine(W[:, 0], W[:, 1], b)
    bound = theorem42_lower_bound(torch.arange(T + 1), s, reading)
    assert cos[0].item() == pytest.approx(s.phi)
    assert (cos >= bound - 1e-12).all()
    assert bound[-1] > bound[0]  # the bound rises; GD's cosine rises faster
    assert cos[-1] > bound[-1]

    # Theorem 4.1 inside its hypotheses: ||W_U(t) - W_U(0)||_op <= 6 beta' eta t d^(Delta - 1/2).
    hyp = check_theorem41_hypotheses(g, prefers_yes, beta=beta, lr=eta)
    dW_op = torch.linalg.matrix_norm(W - W0, ord=2)
    assert theorem41_verdict(torch.arange(T + 1), dW_op, hyp).verdict is BoundVerdict.HOLDS_HYPOTHESES_MET

    # Theorem 4.3 at t = floor(horizon): Yes/No accuracy on the training samples >= p, under both rules.
    acc = yes_no_accuracy(W[-1, 0], W[-1, 1], g, prefers_yes).item()
    printed = theorem43_guarantee(g, prefers_yes, b, s, reading=reading, rule="printed")
    eq36 = theorem43_guarantee(g, prefers_yes, b, s, reading=reading, rule="proof_eq36")
    assert printed.conditions_met and printed.p == 0.0  # vacuous as printed (see theorem43's docstring)
    assert eq36.p == 1.0 and acc >= eq36.p


def test_paper_quantities_is_json_ready_and_matches_the_parts():
    import json

    from prefdyn.theory import paper_quantities

    g, prefers_yes, W0 = _point(d=512, n=16)
    out = json.loads(json.dumps(paper_quantities(g, prefers_yes, W0[0], W0[1], beta=0.01, lr=1.0)))
    hyp = check_theorem41_hypotheses(g, prefers_yes, beta=0.01, lr=1.0)
    assert out["theorem41"]["c_n"] == pytest.approx(hyp.c_n)
    assert set(out["theorem43"]) == {"theorem_printed", "theorem_proof_eq36", "appendix_printed", "appendix_proof_eq36"}
    assert out["theorem43"]["appendix_printed"]["p"] == 0.0
