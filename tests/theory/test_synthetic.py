"""The alpha-subexponential generators: laws, exact constants, seeding."""

import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.theory import concept_law, generalized_normal, gn_psi_norm, gn_scale, two_class_law


def test_gn_scale_by_hand():
    # Var = s^2 Gamma(3/a) / Gamma(1/a) = 1: a = 2 gives s^2 Gamma(3/2)/Gamma(1/2) = s^2 / 2, s = sqrt 2;
    # a = 1 gives s^2 Gamma(3) / Gamma(1) = 2 s^2, s = 1/sqrt 2.
    assert gn_scale(2.0) == pytest.approx(math.sqrt(2))
    assert gn_scale(1.0) == pytest.approx(1 / math.sqrt(2))


def test_gn_psi_norm_by_hand():
    # K = s (1 - 2^-a)^(-1/a): Gaussian sqrt(2) (3/4)^(-1/2) = sqrt(8/3); Laplace (1/sqrt2) * 2 = sqrt 2.
    assert gn_psi_norm(2.0) == pytest.approx(math.sqrt(8 / 3))
    assert gn_psi_norm(1.0) == pytest.approx(math.sqrt(2))
    assert gn_psi_norm(0.5, scale=1.0) == pytest.approx((1 - 2**-0.5) ** -2)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.5])
def test_generalized_normal_has_unit_variance_and_its_psi_norm(alpha):
    x = generalized_normal((400_000,), alpha, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64
    assert float(x.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(x.var()) == pytest.approx(1.0, rel=0.03 if alpha >= 1 else 0.08)
    # E exp(|X / K|^alpha) = 2 at the exact psi norm; a slightly larger K gives a finite mean below 2.
    K = gn_psi_norm(alpha) * 1.2
    assert float(torch.exp((x.abs() / K) ** alpha).mean()) < 2.0


def test_generalized_normal_alpha_2_is_gaussian_and_laplace_tails():
    gen = torch.Generator().manual_seed(1)
    gauss = generalized_normal((200_000,), 2.0, generator=gen)
    laplace = generalized_normal((200_000,), 1.0, generator=gen)
    # E|X| = sqrt(2/pi) for N(0,1); 1/sqrt(2) for the unit-variance Laplace.
    assert float(gauss.abs().mean()) == pytest.approx(math.sqrt(2 / math.pi), rel=0.01)
    assert float(laplace.abs().mean()) == pytest.approx(1 / math.sqrt(2), rel=0.01)
    assert float((laplace.abs() > 4).double().mean()) > float((gauss.abs() > 4).double().mean())


def test_seeding_is_explicit():
    state = torch.get_rng_state()
    a = generalized_normal((5,), 1.0, generator=torch.Generator().manual_seed(3))
    b = generalized_normal((5,), 1.0, generator=torch.Generator().manual_seed(3))
    c = generalized_normal((5,), 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state, torch.get_rng_state())  # the global generator was not touched


def test_two_class_law_geometry():
    gen = torch.Generator().manual_seed(0)
    law = two_class_law(64, 0.25, alpha=1.0, sigma=0.5, common_mean=3.0, generator=gen)
    assert law.D == pytest.approx(64**0.25) and law.Delta == pytest.approx(0.25)
    assert float(law.common_mean.norm()) == pytest.approx(3.0)
    assert float(law.common_mean @ law.b) == pytest.approx(0.0, abs=1e-12)
    g, y = law.sample(1001, generator=gen, pos_share=0.3)
    assert g.shape == (1001, 64) and y.dtype == torch.bool and int(y.sum()) == 300
    assert torch.allclose(g[y].mean(0), law.mu_pos, atol=0.15)
    assert float(g[~y].std(0).mean()) == pytest.approx(0.5, rel=0.1)
    v = law.b / law.D
    assert law.variance_along(v, True) == pytest.approx(0.25)


def test_two_class_law_covariances():
    gen = torch.Generator().manual_seed(0)
    stds = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    A = torch.diag(stds)
    diag = two_class_law(8, 0.5, sigma=stds, sigma_neg=A, generator=gen)
    e0 = torch.eye(8, dtype=torch.float64)[0]
    assert diag.variance_along(e0, True) == pytest.approx(0.25)
    assert diag.variance_along(e0, False) == pytest.approx(0.25)
    noise = diag.noise(20_000, False, generator=gen)
    assert torch.allclose(noise.std(0), stds, rtol=0.05)


def test_concept_law_correlation_is_exact():
    gen = torch.Generator().manual_seed(0)
    law = concept_law(5, 32, D=3.0, rho=0.4, center_norm=2.0, global_mean=7.0, generator=gen)
    cos = law.directions @ law.directions.T
    expected = torch.full((5, 5), 0.4, dtype=torch.float64).fill_diagonal_(1.0)
    assert torch.allclose(cos, expected, atol=1e-12)
    # Centers: global mean plus an orthogonal part of norm 2, all orthogonal to the directions.
    assert torch.allclose(law.centers.norm(dim=1), torch.full((5,), math.sqrt(49 + 4), dtype=torch.float64))
    assert float((law.centers @ law.directions.T).abs().max()) < 1e-12


def test_concept_law_sample_and_subset():
    gen = torch.Generator().manual_seed(0)
    law = concept_law(4, 16, D=2.0, sigma=0.0, generator=gen)
    g, y, groups = law.subset(3).sample(5, generator=gen)
    assert g.shape == (30, 16) and groups.tolist() == [k for k in range(3) for _ in range(10)]
    assert y.tolist() == ([True] * 5 + [False] * 5) * 3
    # With no noise each sample sits exactly at c_k +- (D/2) v_k.
    assert torch.allclose(g[0], law.centers[0] + law.directions[0])
    assert torch.allclose(g[5], law.centers[0] - law.directions[0])


def test_bad_arguments():
    gen = torch.Generator()
    with pytest.raises(PrefdynError):
        generalized_normal((3,), 2.5, generator=gen)
    with pytest.raises(PrefdynError):
        concept_law(10, 16, generator=gen)  # needs d >= 2K + 2
    with pytest.raises(PrefdynError):
        two_class_law(16, 0.2, generator=gen).sample(3, generator=gen)
