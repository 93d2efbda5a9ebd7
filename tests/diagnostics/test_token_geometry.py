"""Single-token unembedding geometry (Razin et al., 2024, Section 4) on hand-made W_U."""

from __future__ import annotations

import math

import pytest
import torch

from prefdyn.diagnostics.token_geometry import (
    displacement_scores,
    predicted_gainers,
    token_pair_geometry,
)
from tests._tiny import tiny_tokenizer

# Rows: 0 = y+, 1 = y-, 2 aligned with y+ - y- but longer, 3 orthogonal, 4 = -y+.
W_U = torch.tensor([
    [1.0, 1.0],
    [1.0, 0.0],
    [0.0, 3.0],
    [1.0, 0.0],
    [-1.0, -1.0],
])


def test_pair_geometry_hand_computed():
    geo = token_pair_geometry(W_U, 0, 1)
    # W+ = (1,1), W- = (1,0): <W+,W-> = 1, diff = (0,1), along W+: 1/sqrt(2), orthogonal: (-1/2, 1/2).
    assert geo.inner == pytest.approx(1.0)
    assert geo.norm_plus_sq == pytest.approx(2.0)
    assert geo.along == pytest.approx(1 / math.sqrt(2))
    assert geo.orthogonal_norm == pytest.approx(math.sqrt(0.5))


def test_scores_and_gainers_ranking():
    # diff = (0, 1): scores are the second coordinates 1, 0, 3, 0, -1.
    torch.testing.assert_close(displacement_scores(W_U, 0, 1),
                               torch.tensor([1.0, 0.0, 3.0, 0.0, -1.0], dtype=torch.float64))
    gainers = predicted_gainers(W_U, 0, 1, k=None)
    assert [g[0] for g in gainers] == [2, 0, 1, 3, 4]  # ties (1 and 3) in id order
    assert [g[2] for g in gainers] == [3.0, 1.0, 0.0, 0.0, -1.0]
    assert predicted_gainers(W_U, 0, 1, k=2) == [(2, "", 3.0), (0, "", 1.0)]


def test_gainers_decode_strings():
    tok = tiny_tokenizer()
    W = torch.randn(len(tok), 8, generator=torch.Generator().manual_seed(0))
    yes, no = tok(" Yes", add_special_tokens=False)["input_ids"][0], tok(" No", add_special_tokens=False)["input_ids"][0]
    top = predicted_gainers(W, yes, no, tok, k=5)
    assert len(top) == 5 and all(s == tok.decode([i]) for i, s, _ in top)
    assert top[0][2] >= top[-1][2]


def test_out_of_vocabulary_token():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_pair_geometry(W_U, 0, 9)


def test_displacement_conditions_by_hand():
    from prefdyn.diagnostics.token_geometry import displacement_conditions

    # W_y+ = (1, 0), W_y- = (1, 1), W_z = (0, -1); d = W_y+ - W_y- = (0, -1).
    # <W_y+, d> = 0, <W_y-, d> = -1, <W_z, d> = 1; pi = (0.6, 0.1, 0.3).
    W = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    c = displacement_conditions(W, torch.tensor([0.6, 0.1, 0.3]), 0, 1)
    assert c.condition1 == pytest.approx(0.0)
    assert c.condition2 == pytest.approx(0.3)  # 0.3 * 1
    assert c.answers_term == pytest.approx(-0.1)  # 0.6 * 0 + 0.1 * (-1)
    # <W_y+ - E_pi W, d> = <(0.3, 0.2), (0, -1)> = -0.2: the other token's pull wins
    assert c.h_term == pytest.approx(-0.2) and c.falls
    # with the mass on y+ instead, nothing pulls: h_term = 0 - 0 - (0.9 * 0 + 0.1 * -1) = 0.1
    assert not displacement_conditions(W, torch.tensor([0.9, 0.1, 0.0]), 0, 1).falls
    with pytest.raises(ValueError, match="one entry per token"):
        displacement_conditions(W, torch.tensor([1.0]), 0, 1)
