"""LastLayerPolicy: answer log-probs over the full vocabulary through the frozen rows' logsumexp."""

import torch

from prefdyn.policies import LastLayerPolicy, stack_problems

from tests.training._synthetic import synthetic_problem


def _w0(d=8, rows=2, seed=1):
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_other_rows_logsumexp_gives_full_vocabulary_logprobs():
    x, y = synthetic_problem(10, 8, 1.0, seed=0)
    W = _w0(rows=6)
    other = torch.logsumexp(x @ W[[0, 2, 4, 5]].T, dim=-1)
    data = stack_problems([x], [y], other_lse=[other])
    pol = LastLayerPolicy(W[[3, 1]], 1)
    yes, no = pol.answer_logps(data)
    full = torch.log_softmax(x @ W.T, dim=-1)
    torch.testing.assert_close(yes[0], full[:, 3])
    torch.testing.assert_close(no[0], full[:, 1])
