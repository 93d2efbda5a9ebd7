import math

import pytest
import torch
import torch.nn.functional as F

from prefdyn.errors import DataError, PrefdynError
from prefdyn.theory import dpo_last_layer_grad, estimate_theorem41_constants, theorem41_bound


def test_theorem41_bound_by_hand():
    # d = 16, D = 4: Delta = log 4 / log 16 = 1/2, so d^(Delta - 1/2) = 1, beta' = 0.1 * 4 = 0.4.
    # 6 * 0.4 * 0.01 * t = 0.024 t, the same as 6 * beta * lr * t * D = 6 * 0.1 * 0.01 * 4 * t.
    bound = theorem41_bound(beta=0.1, lr=0.01, steps=torch.tensor([0, 10, 100]), d=16, D=4.0)
    assert bound.dtype == torch.float64
    assert torch.allclose(bound, torch.tensor([0.0, 0.24, 2.4], dtype=torch.float64))


def test_theorem41_bound_equals_6_beta_lr_t_D():
    steps = torch.arange(5, dtype=torch.float64)
    bound = theorem41_bound(beta=0.05, lr=1e-3, steps=steps, d=4096, D=37.5)
    assert torch.allclose(bound, 6 * 0.05 * 1e-3 * steps * 37.5)
    assert theorem41_bound(0.05, 1e-3, 7, 4096, 0.0).item() == 0.0
    assert theorem41_bound(0.05, 1e-3, 7, 4096, 37.5).shape == ()
    with pytest.raises(PrefdynError):
        theorem41_bound(0.05, 1e-3, 7, 1, 37.5)


def _dpo_loss(W, W0, G, prefers_yes, beta, rows):
    # The full DPO loss with a softmax over all V rows: chosen is Yes where Yes is preferred.
    yes, no = rows
    chosen = torch.where(prefers_yes, yes, no)
    rejected = torch.where(prefers_yes, no, yes)
    logp, ref_logp = F.log_softmax(G @ W.T, -1), F.log_softmax(G @ W0.T, -1)
    idx = torch.arange(G.shape[0])
    margin = (logp[idx, chosen] - ref_logp[idx, chosen]) - (logp[idx, rejected] - ref_logp[idx, rejected])
    return -F.logsigmoid(beta * margin).mean()


@pytest.mark.parametrize(("V", "rows"), [(2, (0, 1)), (5, (3, 1))])
def test_closed_form_grad_equals_autograd(V, rows):
    gen = torch.Generator().manual_seed(V)
    d, n = 6, 9
    W0 = torch.randn(V, d, generator=gen, dtype=torch.float64)
    W = (W0 + 0.5 * torch.randn(V, d, generator=gen, dtype=torch.float64)).requires_grad_()
    G = torch.randn(n, d, generator=gen, dtype=torch.float64)
    prefers_yes = torch.rand(n, generator=gen) > 0.4
    _dpo_loss(W, W0, G, prefers_yes, 0.7, rows).backward()
    closed = dpo_last_layer_grad(W.detach(), W0, G, prefers_yes, 0.7, rows)
    assert torch.allclose(closed, W.grad, atol=1e-12)


def _balanced():
    # mu+ = (2, 0), mu- = (-2, 0), D = 4; m = (2 mu+ - 2 mu-) / 4 = (2, 0).
    g = torch.tensor([[2.0, 1], [2, -1], [-2, 1], [-2, -1]], dtype=torch.float64)
    return g, torch.tensor([True, True, False, False])


def test_constants_balanced_by_hand():
    # ||grad||_F = beta / sqrt2 * ||m|| = 0.5 / sqrt2 * 2 = sqrt(2)/2;
    # C_hat = (sqrt(2)/2) / (beta D) = (sqrt(2)/2) / (0.5 * 4) = sqrt(2)/4.
    c = estimate_theorem41_constants(*_balanced(), beta=0.5)
    assert c["grad_norm"] == pytest.approx(math.sqrt(2) / 2)
    assert c["C_hat"] == pytest.approx(math.sqrt(2) / 4)
    assert c["theorem_constant"] == 6.0
    assert (c["d"], c["D"], c["Delta"]) == pytest.approx((2.0, 4.0, 2.0))
    assert c["beta_prime"] == pytest.approx(0.5 * math.sqrt(2))


def test_constants_grad_norm_is_the_closed_form_gradient_at_w0():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(11, 5, generator=gen, dtype=torch.float64) + 3.0
    prefers_yes = torch.arange(11) < 7
    W0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    grad = dpo_last_layer_grad(W0, W0, G, prefers_yes, beta=0.2)
    c = estimate_theorem41_constants(G, prefers_yes, beta=0.2)
    assert c["grad_norm"] == pytest.approx(float(grad.norm()))


def test_common_mean_with_unbalanced_classes_breaks_the_constant():
    # Yes x: 0, 2, 4; No x: 1, -1; all at y = c. D = 2 for every c, but
    # m = (3 mu+ - 2 mu-) / 5 = (6/5, c/5): C_hat = ||m|| / (sqrt2 * D).
    labels = torch.tensor([True, True, True, False, False])
    for c, expected in [(3.0, 3 / (2 * math.sqrt(10))), (100.0, math.hypot(1.2, 20) / (2 * math.sqrt(2)))]:
        g = torch.tensor([[0, c], [2, c], [4, c], [1, c], [-1, c]], dtype=torch.float64)
        out = estimate_theorem41_constants(g, labels, beta=0.1)
        assert out["D"] == pytest.approx(2.0)
        assert out["C_hat"] == pytest.approx(expected)
    assert out["C_hat"] > 6


def test_constants_reject_bad_input():
    with pytest.raises(PrefdynError):
        estimate_theorem41_constants(*_balanced(), beta=0.0)
    with pytest.raises(DataError):
        estimate_theorem41_constants(torch.zeros(3, 2), torch.tensor([True, False, False]), beta=0.1)
