import pytest
import torch
import torch.nn.functional as F

from prefdyn.errors import PrefdynError
from prefdyn.theory import dpo_last_layer_grad, theorem41_bound


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
