import math

import pytest
import torch

from prefdyn.theory import (
    GuaranteeSetting,
    sample_margins,
    theorem43_conditions,
    theorem43_guarantee,
    theorem43_margin,
    theorem43_S,
    theorem43_steps,
    yes_no_accuracy,
)

# As in test_theorem42: d = 2^32, d^-v = 1/256, d^(Delta+v) = 2^12, d^v = 256, c'_n = 2048.
SETTING = GuaranteeSetting(d=2**32, Delta=0.125, v=0.25, beta_prime=1.0, eta=1 / 16, c_n=0.5, phi=0.1,
                           W_B_norm=2.0)


def test_conditions_by_hand():
    # d^-v = 1/256 < (1 - 0.1) / 13 = 0.0692; phi = 0.1 >= 0.
    assert all(theorem43_conditions(SETTING).values())
    assert not theorem43_conditions(GuaranteeSetting(**{**SETTING.__dict__, "phi": -0.1}))["phi"]
    # phi = 0.96: (1 - 0.96) / 13 = 0.00308 < 1/256 = 0.0039.
    assert not theorem43_conditions(GuaranteeSetting(**{**SETTING.__dict__, "phi": 0.96}))["d_minus_v"]


def test_steps_S_margin_by_hand():
    # t = d^(1/2 - Delta - v) / (72 beta'^2 eta c'_n) = 16 / (72 / 16 * 2048) = 16 / 9216.
    assert theorem43_steps(SETTING) == pytest.approx(16 / 9216)
    # eps = 1 - 13/256 - 0.1 = 0.84921875; k = 576 * 1 * 2048 * 2 + 3 = 2359299.
    k = 576 * 2048 * 2 + 3
    assert theorem43_S(SETTING) == pytest.approx(0.1 + 0.84921875 / 256 / k, rel=1e-12)
    # m = 2 c'_n d^(Delta+v) k / (3 phi d^v + eps) = 2 * 2048 * 4096 * k / (76.8 + 0.84921875).
    assert theorem43_margin(SETTING) == pytest.approx(2 * 2048 * 4096 * k / (76.8 + 0.84921875), rel=1e-12)
    # Reading "theorem" puts C = c_n^2 = 1/4 in k: 576 * 0.25 * 2 + 3 = 291.
    assert theorem43_margin(SETTING, "theorem") == pytest.approx(2 * 2048 * 4096 * 291 / (76.8 + 0.84921875), rel=1e-12)


def test_margins_and_accuracy_by_hand():
    g = torch.tensor([[2.0, 1.0], [0.5, -3.0], [-1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([True, True, False, False])
    # b = (3, 0): margins s_i g_i . (1, 0) = 2, 0.5, 1, -1.
    assert torch.allclose(sample_margins(g, y, torch.tensor([3.0, 0.0])), torch.tensor([2, .5, 1, -1], dtype=torch.float64))
    # Boundary (1, -1): logit gaps 1, 3.5, -1, 0 -> right, right, right (<= 0), right (tie counts, App. A.5).
    assert yes_no_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), g, y).item() == 1.0
    # Boundary (0, 1): gaps 1, -3, 0, 1 -> right, wrong, right, wrong.
    assert yes_no_accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), g, y).item() == 0.5
    # Batched over time: (T=2, d).
    W_yes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert yes_no_accuracy(W_yes, torch.zeros(2, 2), g, y).tolist() == [0.75, 0.5]


def test_printed_margin_is_vacuous_on_the_theorems_event():
    # Samples within the proof's ||g|| <= 2 c_n sqrt(d) have margin <= ||g|| < the printed m, so p = 0;
    # the proof's Eq. 36 keeps sqrt(1 - S^2): with S = 0.8 a sample needs margin >= 0.75 ||g||.
    gen = torch.Generator().manual_seed(0)
    d = 64
    g = torch.randn(40, d, generator=gen, dtype=torch.float64) * 0.01
    g[:, 0] += torch.where(torch.arange(40) < 20, 1.0, -1.0)
    y = torch.arange(40) < 20
    c_n = float((g[y].mean(0).norm() + (g[y] - g[y].mean(0)).square().sum(1).mean().sqrt())) / math.sqrt(d)
    s = GuaranteeSetting(d=d, Delta=math.log(2) / math.log(d), v=0.2, beta_prime=1.0, eta=1e-3, c_n=c_n,
                         phi=0.8, W_B_norm=1.0)
    b = torch.zeros(d, dtype=torch.float64)
    b[0] = 2.0
    assert (g.norm(dim=1) <= 2 * c_n * math.sqrt(d)).all()
    printed = theorem43_guarantee(g, y, b, s, rule="printed")
    assert printed.p == 0.0 and printed.margin > g.norm(dim=1).max()
    eq36 = theorem43_guarantee(g, y, b, s, rule="proof_eq36")
    assert eq36.S == pytest.approx(theorem43_S(s)) and eq36.p == 1.0
