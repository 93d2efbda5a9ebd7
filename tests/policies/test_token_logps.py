"""The chunked token log-prob: the plain log-softmax's values and gradients."""

import pytest
import torch

from prefdyn.policies import _token_logps
from prefdyn.policies._token_logps import token_logps


def _plain(logits, targets, T):
    return torch.log_softmax(logits.float() / T, -1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("T", [1.0, 0.7])
def test_values_and_gradients_equal_the_plain_log_softmax(monkeypatch, T):
    monkeypatch.setattr(_token_logps, "_CHUNK_ELEMENTS", 7 * 50)  # several uneven chunks
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(23, 50, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, 50, (23,), generator=gen)
    weights = torch.randn(23, generator=gen, dtype=torch.float64)
    got = token_logps(logits, targets, T)
    want = torch.log_softmax(logits / T, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert got.dtype == torch.float32  # the log-probs are fp32 whatever the logits
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    g_got, = torch.autograd.grad((got.double() * weights).sum(), logits)
    g_want, = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


def test_bf16_logits_are_read_in_fp32_and_get_a_bf16_gradient():
    logits = torch.randn(9, 40, dtype=torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 40, (9,))
    got = token_logps(logits, targets)
    torch.testing.assert_close(got, _plain(logits.detach(), targets, 1.0))
    got.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"logits \(n, V\)"):
        token_logps(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
