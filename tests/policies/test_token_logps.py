"""The chunked token log-prob: the plain log-softmax's values and gradients."""

import pytest
import torch

from prefdyn.policies import _token_logps
from prefdyn.policies._token_logps import head_token_logps, token_logps


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


@pytest.mark.parametrize("T", [1.0, 0.7])
@pytest.mark.parametrize("frozen_head", [False, True], ids=["trained-head", "frozen-head"])
def test_the_fused_head_gives_the_plain_head_and_log_softmax(monkeypatch, T, frozen_head):
    monkeypatch.setattr(_token_logps, "_CHUNK_ELEMENTS", 7 * 50)  # several uneven chunks
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(12, 50, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 12, generator=gen))
    head.weight.requires_grad_(not frozen_head)
    hidden = torch.randn(23, 12, generator=gen).requires_grad_()
    targets = torch.randint(0, 50, (23,), generator=gen)
    weights = torch.randn(23, generator=gen)
    calls = []
    monkeypatch.setattr(_token_logps._HeadTokenLogps, "forward",
                        _counted(_token_logps._HeadTokenLogps.forward, calls))
    got = head_token_logps(head, hidden, targets, T)
    assert calls  # the fused path ran
    want = _plain(head(hidden), targets, T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [hidden] + ([] if frozen_head else [head.weight])
    g_got = torch.autograd.grad((got * weights).sum(), params)
    g_want = torch.autograd.grad((want * weights).sum(), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _counted(fn, calls):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)
    return staticmethod(wrapped)


def test_a_second_backward_through_the_fused_head_is_refused():
    head = torch.nn.Linear(6, 9, bias=False)
    logps = head_token_logps(head, torch.randn(4, 6), torch.randint(0, 9, (4,)))
    logps.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        logps.sum().backward()


def test_the_fused_head_takes_no_rows():  # an empty shard of a batch
    head = torch.nn.Linear(6, 9, bias=False)
    hidden = torch.zeros(0, 6, requires_grad=True)
    logps = head_token_logps(head, hidden, torch.zeros(0, dtype=torch.long))
    logps.sum().backward()
    assert logps.shape == (0,) and hidden.grad.shape == (0, 6)
    assert not head.weight.grad.any()


def test_other_heads_are_applied_then_read():
    head = torch.nn.Linear(6, 9, bias=True)  # a bias: not the fused path
    hidden, targets = torch.randn(4, 6), torch.randint(0, 9, (4,))
    torch.testing.assert_close(head_token_logps(head, hidden, targets),
                               _plain(head(hidden), targets, 1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = head_token_logps(torch.nn.Linear(6, 9, bias=False), hidden, targets)
    assert bf16.dtype == torch.float32 and bf16.shape == (4,)


@pytest.mark.parametrize("no_grad", [True, False], ids=["no_grad", "nothing-requires-grad"])
def test_without_autograd_the_head_runs_a_chunk_of_rows_at_a_time(monkeypatch, no_grad):
    """pi_ref's log-probs: the same values, and no (rows, V) logits tensor at once."""
    monkeypatch.setattr(_token_logps, "_HEAD_CHUNK_ELEMENTS", 5 * 50)  # 5 rows a chunk
    gen = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(12, 50, bias=False).requires_grad_(False)
    hidden, targets = torch.randn(23, 12, generator=gen), torch.randint(0, 50, (23,), generator=gen)
    fused, products = [], []
    monkeypatch.setattr(_token_logps._HeadTokenLogps, "forward",
                        _counted(_token_logps._HeadTokenLogps.forward, fused))
    monkeypatch.setattr(_token_logps, "_normalizers", lambda logits, T: (
        products.append(logits.shape[0]), torch.logsumexp(logits / T, -1))[1])
    with torch.no_grad() if no_grad else torch.enable_grad():
        got = head_token_logps(head, hidden, targets, 0.7)
    assert not fused and products == [5, 5, 5, 5, 3]
    torch.testing.assert_close(got, _plain(head(hidden), targets, 0.7), rtol=1e-5, atol=1e-6)
