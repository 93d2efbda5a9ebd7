"""The paper's Theorems 4.1-4.3 wired into the theory experiments (prefdyn.experiments._theory_paper)."""

import math

import pytest
import torch

from prefdyn.experiments._theory_paper import (
    paper_lr,
    paper_regime_point,
    theorem41_headline,
    theorem41_rows,
    verdict_counts,
)


def _two_points():
    """Two points in d = 4, two samples per class at +-mu with a 1e-6 spread, so that
    c_n = max_i ||mu_i|| / sqrt(4) up to the spread: 1 and 3."""
    y = torch.tensor([True, True, False, False])
    e = 1e-6 * torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, -1.0, 0, 0]], dtype=torch.float64)
    mu = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    small = (torch.stack([mu[0], mu[0], -mu[0], -mu[0]]) + e, y)  # ||mu_i|| = 2, c_n ~ 2 / sqrt(4) = 1
    large = (3 * small[0], y)  # c_n ~ 3
    return small, large


def test_paper_lr_is_the_largest_eta_with_product_a_quarter_everywhere():
    small, large = _two_points()
    beta = 0.5  # beta' = beta sqrt(4) = 1
    eta = paper_lr([small, large], beta)
    # eta = 1/4 / (beta'^2 c_n^2) with the larger c_n ~ 3: 1/36.
    assert eta == pytest.approx(1 / 36, rel=1e-5)
    rows = [theorem41_rows(G, y, [0, 1], [0.0, 0.0], beta=beta, lr=eta) for G, y in (small, large)]
    assert rows[1]["step_product"] == pytest.approx(0.25)
    assert rows[0]["step_product"] == pytest.approx(0.25 / 9, rel=1e-5)
    # The step rule meets beta'^2 eta c_n^2 <= 1/4; D = 4 (and 12) > sqrt(d) = 2 breaks Delta <= 1/2.
    assert all(r["step_ok"] and not r["delta_ok"] for r in rows)
    assert all(r["verdict"] == "holds outside the hypotheses" for r in rows)


def test_theorem41_rows_outside_the_hypotheses_and_when_it_fails():
    small, _ = _two_points()
    G, y = small
    # Step product 1 > 1/4: outside. D = 4 = d^1 > sqrt(d): Delta = 1 > 1/2 too.
    outside = theorem41_rows(G, y, [0, 1], [0.0, 0.0], beta=0.5, lr=1.0)
    assert not outside["step_ok"] and not outside["delta_ok"] and outside["verdict"] == "holds outside the hypotheses"
    # A change far above 6 beta' eta t d^(Delta - 1/2) = 6 * 1 * 1 * 1 * 4^(1/2) = 12 fails.
    assert theorem41_rows(G, y, [0, 1], [0.0, 13.0], beta=0.5, lr=1.0)["verdict"] == "fails outside the hypotheses"
    assert theorem41_rows(G, y, [0, 1], [0.0, 11.9], beta=0.5, lr=1.0)["verdict"] == "holds outside the hypotheses"


def test_verdict_counts_and_headline():
    counts = verdict_counts(["holds, hypotheses met", "holds outside the hypotheses", "holds, hypotheses met"])
    assert counts == {"holds, hypotheses met": 2, "holds outside the hypotheses": 1, "fails, hypotheses met": 0,
                      "fails outside the hypotheses": 0}
    assert theorem41_headline(counts, [0.1, 2.0], "point")[1] == "holds at 2 / 2"
    none = verdict_counts(["holds outside the hypotheses"])
    assert theorem41_headline(none, [1.5, 2.0], "point")[1] == "not tested"


def test_paper_regime_point_tests_theorems_42_and_43():
    p = paper_regime_point(d=1024, target_steps=10)
    lo, hi = p["v_range"]
    assert lo == pytest.approx(0.4) and lo <= p["v"] <= hi  # 4 log 2 / log 1024 = 0.4
    assert p["horizon"] == 10 and len(p["curves"]["cos"]) == 11
    assert all(p["theorem42"]["conditions"].values())
    assert p["theorem42"]["verdict"] == "holds, hypotheses met"
    assert p["curves"]["cos"][0] == pytest.approx(p["phi"])
    assert p["theorem41"]["verdict"] == "holds, hypotheses met"
    assert p["step_product"] < 0.25 and math.isclose(p["beta_prime"], 1.0)
