import math

import pytest
import torch

from prefdyn.errors import DataError, PrefdynError
from prefdyn.theory import (
    BoundVerdict,
    bound_verdict,
    check_theorem41_hypotheses,
    class_moments,
    paper_step_size,
    theorem41_verdict,
)


def _hand_data():
    # d = 4, four samples a class.
    # +: rows (.5, +-1, 0, 0) and (.5, 0, +-1, 0): mean (.5, 0, 0, 0); coordinates 2 and 3 take
    #    values (1, -1, 0, 0), variance 2 / (4 - 1) = 2/3 each, uncorrelated:
    #    Sigma+ = diag(0, 2/3, 2/3, 0), ||Sigma+|| = 2/3, Tr = 4/3, Tr(Sigma+^1/2) = 2 sqrt(2/3).
    # -: rows (-.5, 0, 0, +-1) twice: mean (-.5, 0, 0, 0); coordinate 4 has variance 4 / 3:
    #    Sigma- = diag(0, 0, 0, 4/3), ||Sigma-|| = 4/3, Tr = 4/3, Tr(Sigma-^1/2) = sqrt(4/3).
    g = torch.tensor([[.5, 1, 0, 0], [.5, -1, 0, 0], [.5, 0, 1, 0], [.5, 0, -1, 0],
                      [-.5, 0, 0, 1], [-.5, 0, 0, -1], [-.5, 0, 0, 1], [-.5, 0, 0, -1]], dtype=torch.float64)
    return g, torch.arange(8) < 4


def test_class_moments_by_hand():
    g, y = _hand_data()
    mom = class_moments(g, y)
    assert torch.allclose(mom.sigma_op, torch.tensor([2 / 3, 4 / 3], dtype=torch.float64))
    assert torch.allclose(mom.trace, torch.tensor([4 / 3, 4 / 3], dtype=torch.float64))
    assert torch.allclose(mom.trace_sqrt, torch.tensor([2 * math.sqrt(2 / 3), math.sqrt(4 / 3)], dtype=torch.float64))
    # D = ||(.5,0,0,0) - (-.5,0,0,0)|| = 1, Delta = log 1 / log 4 = 0.
    assert mom.D == pytest.approx(1.0) and mom.Delta == pytest.approx(0.0)
    # c_v = max ||Sigma_i|| / sqrt(d) = (4/3) / 2 = 2/3.
    assert mom.c_v() == pytest.approx(2 / 3)
    # Theorem 4.1's Tr(Sigma)^1/2: c_n = (0.5 + sqrt(4/3)) / 2 = 0.827350...
    assert mom.c_n() == pytest.approx((0.5 + math.sqrt(4 / 3)) / 2)
    # Theorem 4.2's Tr(Sigma^1/2): the + class gives 0.5 + 2 sqrt(2/3) = 2.13299, so c_n = 1.066496...
    assert mom.c_n("trace_of_sqrt") == pytest.approx((0.5 + 2 * math.sqrt(2 / 3)) / 2)


def test_theorem41_hypotheses_met_by_hand():
    g, y = _hand_data()
    h = check_theorem41_hypotheses(g, y, beta=0.5, lr=0.25)
    # beta' = 0.5 * sqrt(4) = 1; beta'^2 eta c_n^2 = 1 * 0.25 * 0.827350^2 = 0.171127 <= 1/4.
    assert h.beta_prime == pytest.approx(1.0)
    assert h.step_product == pytest.approx(0.25 * ((0.5 + math.sqrt(4 / 3)) / 2) ** 2)
    assert h.step_ok and h.delta_ok and h.balanced and h.met and h.failed() == []
    # The paper's step: eta = 1 / (4 beta'^2 c_n^2) = 1 / (4 * 0.684509) = 0.365226.
    assert h.paper_lr == pytest.approx(1 / (4 * ((0.5 + math.sqrt(4 / 3)) / 2) ** 2))
    # failure term: gamma = n / sqrt(d) = 8 / 2 = 4; Delta = 0 so d^(alpha Delta) = 1;
    # 4 exp(-4 * 1 / (4 * 2/3)) = 4 exp(-1.5) = 0.892521.
    assert h.failure_term(alpha=1.0) == pytest.approx(4 * math.exp(-1.5))


def test_paper_step_size_by_hand():
    # beta = 0.01, d = 4096 (beta' = 0.64), c_n = 0.5: eta = 0.25 / (0.4096 * 0.25) = 2.44140625.
    assert paper_step_size(0.01, 4096, 0.5) == pytest.approx(2.44140625)
    with pytest.raises(PrefdynError):
        paper_step_size(0.0, 4096, 0.5)


def test_each_hypothesis_breaks():
    g, y = _hand_data()
    # Step size: eta = 1 gives 0.684509 > 1/4.
    assert check_theorem41_hypotheses(g, y, beta=0.5, lr=1.0).failed() == ["step_size"]
    # Delta: means at +-2 e1 give D = 4 > sqrt(4) = 2, Delta = log 4 / log 4 = 1 > 1/2.
    far = g.clone()
    far[:, 0] *= 4
    assert check_theorem41_hypotheses(far, y, beta=0.01, lr=0.01).failed() == ["Delta"]
    # Balance: drop one sample of the - class (|D+| = 4, |D-| = 3).
    assert check_theorem41_hypotheses(g[:7], y[:7], beta=0.01, lr=0.01).failed() == ["balanced"]
    # A common mean of norm 10 raises c_n (||mu_i|| about 10) and breaks the step size at an eta that was fine.
    shifted = g + torch.tensor([0, 0, 0, 10.0], dtype=torch.float64)
    assert check_theorem41_hypotheses(g, y, beta=0.5, lr=0.25).met
    assert check_theorem41_hypotheses(shifted, y, beta=0.5, lr=0.25).failed() == ["step_size"]


def test_bad_input():
    g, y = _hand_data()
    with pytest.raises(DataError):
        class_moments(g[:5], y[:5])  # one sample in the - class
    with pytest.raises(PrefdynError):
        check_theorem41_hypotheses(g, y, beta=0.5, lr=0.25, trace_reading="trace")


def test_verdicts():
    assert bound_verdict(True, True) is BoundVerdict.HOLDS_HYPOTHESES_MET
    assert bound_verdict(True, False) is BoundVerdict.HOLDS_OUTSIDE_HYPOTHESES
    assert bound_verdict(False, True) is BoundVerdict.FAILS_HYPOTHESES_MET
    assert bound_verdict(False, False) is BoundVerdict.FAILS_OUTSIDE_HYPOTHESES
    assert BoundVerdict.HOLDS_HYPOTHESES_MET.tests_the_theorem
    assert not BoundVerdict.HOLDS_OUTSIDE_HYPOTHESES.tests_the_theorem


def test_theorem41_verdict_separates_outside_from_met():
    g, y = _hand_data()
    steps = torch.tensor([0, 1, 2])
    # Bound: 6 beta' eta t d^(Delta - 1/2) = 6 * 1 * eta * t * 4^(-1/2) = 3 eta t.
    inside = check_theorem41_hypotheses(g, y, beta=0.5, lr=0.25)  # bound 0, 0.75, 1.5
    check = theorem41_verdict(steps, torch.tensor([0.0, 0.5, 1.0]), inside)
    assert torch.allclose(check.bound, torch.tensor([0.0, 0.75, 1.5], dtype=torch.float64))
    assert check.verdict is BoundVerdict.HOLDS_HYPOTHESES_MET
    outside = check_theorem41_hypotheses(g, y, beta=0.5, lr=1.0)  # bound 0, 3, 6; step size fails
    assert theorem41_verdict(steps, torch.tensor([0.0, 0.5, 1.0]), outside).verdict is BoundVerdict.HOLDS_OUTSIDE_HYPOTHESES
    assert theorem41_verdict(steps, torch.tensor([0.0, 0.5, 7.0]), outside).verdict is BoundVerdict.FAILS_OUTSIDE_HYPOTHESES
    assert theorem41_verdict(steps, torch.tensor([0.0, 0.8, 1.0]), inside).verdict is BoundVerdict.FAILS_HYPOTHESES_MET
