import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.theory import (
    GuaranteeSetting,
    boundary_cosine,
    guarantee_setting,
    theorem42_conditions,
    theorem42_horizon,
    theorem42_lower_bound,
    v_range,
)

# d = 2^32 keeps the powers exact: v = 1/4 gives d^-v = 2^-8 = 1/256; Delta = 1/8 gives
# d^(Delta - 1/2) = 2^-12 and d^(1/2 - Delta - v) = 2^4 = 16.
SETTING = GuaranteeSetting(d=2**32, Delta=0.125, v=0.25, beta_prime=1.0, eta=1 / 16, c_n=0.5, phi=0.1,
                           W_B_norm=2.0)


def test_v_range_by_hand():
    # 4 log 2 / log 2^32 = 4 / 32 = 0.125; 1/2 - Delta = 0.375.
    assert v_range(2**32, 0.125) == pytest.approx((0.125, 0.375))
    # d = 4096: 4 log 2 / (12 log 2) = 1/3; Delta = 0.2 > 1/2 - 1/3 leaves it empty.
    lo, hi = v_range(4096, 0.2)
    assert lo == pytest.approx(1 / 3) and hi == pytest.approx(0.3) and lo > hi


def test_conditions_by_hand():
    # v in [0.125, 0.375]; Delta = 0.125 <= 0.5 - 0.125; beta'^2 eta c_n^2 = 1/16 * 1/4 = 1/64 <= 1/4;
    # sigma_op = 0 <= c_v d^(1/2 - 2v) = 1.
    assert all(theorem42_conditions(SETTING).values())
    assert SETTING.step_product == pytest.approx(1 / 64)
    # Break each: v above 1/2 - Delta; Delta above 3/8; eta with beta'^2 eta c_n^2 = 1 > 1/4;
    # ||Sigma|| = 2 > c_v d^(1/2 - 2v) = 1 at v = 1/4.
    breaks = {"v_range": {"v": 0.4}, "Delta": {"Delta": 0.4, "v": 0.1}, "step_size": {"eta": 4.0},
              "variance": {"sigma_op": 2.0}}
    for name, change in breaks.items():
        failed = [k for k, ok in theorem42_conditions(GuaranteeSetting(**{**SETTING.__dict__, **change})).items() if not ok]
        assert name in failed, (name, failed)


def test_horizon_both_readings_by_hand():
    # theorem (c_n^2): 16 / (72 * 1 * (1/16) * 0.25) = 16 / 1.125 = 14.2222...
    assert theorem42_horizon(SETTING) == pytest.approx(16 / 1.125)
    # appendix (c'_n = c_n d^(1/2 - Delta) = 0.5 * 2^12 = 2048): 16 / (72 * (1/16) * 2048) = 16 / 9216.
    assert SETTING.c_prime_n == pytest.approx(2048.0)
    assert theorem42_horizon(SETTING, "appendix") == pytest.approx(16 / 9216)
    with pytest.raises(PrefdynError):
        theorem42_horizon(SETTING, "printed")


def test_lower_bound_by_hand():
    # eps = 1 - 13/256 - 0.1 = 0.84921875; rate = eps * beta' * eta * d^(Delta - 1/2) = eps / 16 / 4096.
    # theorem: denominator 8 * 2 + 1 / (24 * 1 * 0.25) = 16 + 1/6 = 97/6.
    rate = 0.84921875 / 16 / 4096
    bound = theorem42_lower_bound(torch.tensor([0, 10, 14, 15]), SETTING)
    assert bound[0].item() == pytest.approx(0.1)
    assert bound[1].item() == pytest.approx(0.1 + 10 * rate / (97 / 6), rel=1e-12)
    assert bound[2].item() == pytest.approx(0.1 + 14 * rate / (97 / 6), rel=1e-12)
    assert math.isnan(bound[3].item())  # 15 > 14.22: beyond the horizon
    # appendix: denominator 16 + 1 / (24 * 2048); only t = 0 is inside its horizon 0.0017.
    s = GuaranteeSetting(**{**SETTING.__dict__, "eta": 1 / 16 / 10_000})
    h = theorem42_horizon(s, "appendix")  # 16 / (72 / 160000 * 2048) = 17.36
    assert h == pytest.approx(16 / (72 / 16 / 10_000 * 2048))
    got = theorem42_lower_bound(torch.tensor([17]), s, "appendix")
    assert got.item() == pytest.approx(0.1 + 17 * rate / 10_000 / (16 + 1 / (24 * 2048)), rel=1e-12)


def test_boundary_cosine_and_setting_from_data():
    # Boundary W_yes - W_no = (1, 1, 0) against b = (2, 0, 0): cosine 1/sqrt 2.
    W_yes, W_no = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, -0.5, 0.0])
    assert boundary_cosine(W_yes, W_no, torch.tensor([2.0, 0.0, 0.0])).item() == pytest.approx(1 / math.sqrt(2))
    # Data: + at (1, 0, +-0.1), - at (-1, 0, +-0.1): b = (2, 0, 0), D = 2, Delta = log 2 / log 3.
    g = torch.tensor([[1, 0, .1], [1, 0, -.1], [-1, 0, .1], [-1, 0, -.1]], dtype=torch.float64)
    y = torch.tensor([True, True, False, False])
    s = guarantee_setting(g, y, W_yes, W_no, beta=0.1, lr=0.5, v=0.2)
    assert s.phi == pytest.approx(1 / math.sqrt(2)) and s.W_B_norm == pytest.approx(math.sqrt(2))
    assert s.Delta == pytest.approx(math.log(2) / math.log(3)) and s.beta_prime == pytest.approx(0.1 * math.sqrt(3))
    # Per class: variance of (+-0.1) with n - 1 = 1 is 0.02; c_n = (1 + sqrt(0.02)) / sqrt(3).
    assert s.sigma_op == pytest.approx(0.02) and s.c_n == pytest.approx((1 + math.sqrt(0.02)) / math.sqrt(3))
