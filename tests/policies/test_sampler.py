"""Inverse-CDF sampling inside generate: the distribution of softmax(scores) after HF's warpers."""

import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.policies._sampler import inverse_cdf, sampling_processors
from prefdyn.policies.rollout import RolloutStream
from prefdyn.rewards import get_reward
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer


def _draw(scores: torch.Tensor, n: int, seed: int = 0, **warpers) -> torch.Tensor:
    """``n`` draws a row of ``scores`` through the processors and greedy selection."""
    processors, _ = sampling_processors(torch.Generator().manual_seed(seed), **warpers)
    rows = scores.expand(n, -1).clone()
    return processors(None, rows).argmax(-1)


def test_draws_follow_the_softmax_within_their_confidence_interval():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0, -3.0])
    n = 40_000
    counts = torch.bincount(_draw(logits, n, temperature=1.0, top_k=None, top_p=None), minlength=6)
    p = torch.softmax(logits, -1)
    # each frequency within 4.5 binomial standard errors of its probability
    se = (p * (1 - p) / n).sqrt()
    assert ((counts / n - p).abs() <= 4.5 * se).all(), (counts / n, p)


def test_temperature_top_k_and_top_p_are_hf_warpers_in_sampling_order():
    logits = torch.tensor([3.0, 2.5, 2.0, 0.0, -1.0, -2.0])
    n = 20_000
    # top-k 3 then temperature: only the three largest, in softmax(logits / 2) proportions
    draws = _draw(logits, n, temperature=2.0, top_k=3, top_p=None)
    assert set(draws.unique().tolist()) == {0, 1, 2}
    p = torch.softmax(logits[:3] / 2.0, -1)
    freq = torch.bincount(draws, minlength=3)[:3] / n
    assert ((freq - p).abs() <= 4.5 * (p * (1 - p) / n).sqrt()).all()
    # top-p 0.5 keeps the smallest set of largest tokens reaching 50%: tokens 0 and 1 here
    assert set(_draw(logits, 2000, temperature=1.0, top_k=None, top_p=0.5).unique().tolist()) == {0, 1}


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.full((50,), float("-inf"))
    logits[[7, 30]] = 0.0
    assert set(_draw(logits, 5000, temperature=1.0, top_k=None, top_p=None).unique().tolist()) == {7, 30}


def test_rollouts_draw_first_tokens_from_the_model_distribution():
    tok = tiny_tokenizer()
    prompt = chat_prompts(tok, ["I like cats"])
    model = tiny_llama()
    k = 3000
    stream = RolloutStream(model, tok, prompt, get_reward("sentiment"), group_size=k, prompts_per_batch=1,
                           max_new_tokens=1, seed=0)
    first = next(stream).input_ids[:, -1]
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = torch.softmax(model(ids).logits[0, -1].float(), -1)
    counts = torch.bincount(first, minlength=len(p)).float()
    # Pearson chi-square over the tokens with expected count >= 5 (others pooled)
    expected = p * k
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-9)).sum())
    dof = int(big.sum())
    # mean dof, sd sqrt(2 dof): 6 sd above is a failure at any realistic seed
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)


def test_nan_logits_are_a_clear_error_after_generation():
    tok = tiny_tokenizer()
    prompts = chat_prompts(tok, ["I like cats", "Hi"])
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    stream = RolloutStream(model, tok, prompts, get_reward("sentiment"), group_size=2, prompts_per_batch=2,
                           max_new_tokens=3, seed=0)
    with pytest.raises(PrefdynError, match="NaN or inf"):
        next(stream)


@pytest.mark.parametrize("V", [49_152, 1_000, 7])
@pytest.mark.parametrize("scale", [3.0, 30.0])  # 30: at V = 49,152, ~13% are fp32 subnormals
def test_two_level_draws_are_the_one_level_inverse_cdf(V, scale):
    g = torch.Generator().manual_seed(V)
    probs = torch.softmax(torch.randn(64, V, generator=g) * scale, -1)
    probs[:, ::3] = 0.0  # zeros everywhere, block ends included
    probs[:, -1] = 0.0
    u01 = torch.rand(64, 1, generator=g, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    expected = torch.searchsorted(cdf, u01 * cdf[:, -1:], right=True)
    token, total = inverse_cdf(probs, u01, block=64)
    assert torch.equal(token, expected)
    torch.testing.assert_close(total, cdf[:, -1:])
    if scale != 3.0:
        return  # below: a last token with p < 1e-16 is under u's own round-off, in any CDF
    # The ends of [0, 1): the first and the last token with probability > 0.
    nonzero = probs > 0
    first = nonzero.float().argmax(-1, keepdim=True)
    last = V - 1 - nonzero.flip(-1).float().argmax(-1, keepdim=True)
    assert torch.equal(inverse_cdf(probs, torch.zeros(64, 1, dtype=torch.float64), block=64)[0], first)
    top = torch.full((64, 1), 1 - 2**-53, dtype=torch.float64)
    assert torch.equal(inverse_cdf(probs, top, block=64)[0], last)
