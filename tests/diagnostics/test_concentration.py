import pytest
import torch

from prefdyn.diagnostics.concentration import concentration_ratios
from prefdyn.errors import DataError


def test_ratios_by_hand():
    # + at (1, +-1), - at (-1, +-1): b = (2, 0), D = 2. Residuals (0, +-1) in each class:
    # pooled Tr(Sigma) = 4 / (4 - 2) = 2; along b_hat = (1, 0): 0.
    g = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    y = torch.tensor([True, True, False, False])
    r = concentration_ratios(g, y)
    assert r.D == pytest.approx(2.0) and r.var_total == pytest.approx(2.0) and r.var_along == pytest.approx(0.0)
    assert r.paper_total == pytest.approx(1.0)  # var / D = 2 / 2
    assert r.std_total == pytest.approx(2**0.5 / 2)  # sqrt(var) / D


def test_paper_ratio_scales_with_the_hidden_states_and_std_ratio_does_not():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(40) < 20
    g[y, 0] += 2.0
    r, r3 = concentration_ratios(g, y), concentration_ratios(3 * g, y)
    assert r3.paper_total == pytest.approx(3 * r.paper_total) and r3.paper_along == pytest.approx(3 * r.paper_along)
    assert r3.std_total == pytest.approx(r.std_total) and r3.std_along == pytest.approx(r.std_along)


def test_coinciding_means_raise():
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(DataError):
        concentration_ratios(g, torch.tensor([True, True, False, False]))
