"""Rewards: hand-computed values and clear errors naming the record."""

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.losses import PairScores, get_loss
from prefdyn.rewards import (RewardError, RewardModel, get_reward, register_reward,
                             target_token_rewards)
from tests._tiny import tiny_llama, tiny_tokenizer


def test_persona_is_plus_one_for_the_matching_answer_and_minus_one_otherwise():
    r = get_reward("persona")(["p1", "p2", "p3"], [" Yes", "No", " no "], [" Yes", " Yes", "No"])
    assert r.tolist() == [1.0, -1.0, 1.0]  # case and whitespace do not count


def test_target_token_table_marks_each_prompts_target():
    assert target_token_rewards(torch.tensor([2, 0]), 3).tolist() == [[-1, -1, 1], [1, -1, -1]]
    with pytest.raises(PrefdynError, match=r"\[0, 3\)"):
        target_token_rewards(torch.tensor([3]), 3)


def test_rouge_l_is_the_lcs_f_measure():
    # reference "the cat sat on the mat" (6), response "the cat on mat" (4): LCS 4
    # P = 4/4, R = 4/6 -> F = 2PR/(P+R) = 0.8
    r = get_reward("rouge_l")(["x"], ["the cat on mat"], ["the cat sat on the mat"])
    assert r.item() == pytest.approx(0.8)
    assert get_reward("exact_match")(["x", "y"], ["a b", "a"], ["A  b", "b"]).tolist() == [1.0, 0.0]


def test_sentiment_orders_positive_above_negative():
    r = get_reward("sentiment")(["x", "x", "x"], ["I love this, wonderful!", "It is a table.",
                                                  "I hate this, awful."])
    assert r[0] > 0.5 and r[1] == 0.0 and r[2] < -0.5


def test_missing_reference_names_the_record():
    with pytest.raises(RewardError, match=r"record 1 \(prompt 'second'\) has none"):
        get_reward("rouge_l")(["first", "second"], ["a", "b"], ["a", None])
    with pytest.raises(RewardError, match="none given"):
        get_reward("persona")(["first"], ["a"])


def test_nan_or_wrong_shape_is_an_error_naming_the_record():
    @register_reward("_test_bad")
    def bad(prompts, responses, references, *, shape_ok: bool = True):
        if not shape_ok:
            return torch.zeros(len(prompts), 2)
        return torch.tensor([0.0, float("nan")])

    with pytest.raises(RewardError, match=r"nan for record 1 \(prompt 'q2'\)"):
        get_reward("_test_bad")(["q1", "q2"], ["a", "b"])
    with pytest.raises(RewardError, match=r"shape \(2, 2\) for 2 record"):
        get_reward("_test_bad", shape_ok=False)(["q1", "q2"], ["a", "b"])
    with pytest.raises(PrefdynError, match="unknown reward"):
        get_reward("nope")


def test_reward_model_scores_the_last_real_token_whatever_the_padding():
    tok = tiny_tokenizer()
    rm = RewardModel(tiny_llama())
    torch.nn.init.normal_(rm.head.weight, generator=torch.Generator().manual_seed(0))
    texts = ["I like cats", "The quick brown fox jumps over the lazy dog."]
    batch = rm.score_texts(tok, texts)
    alone = torch.stack([rm.score_texts(tok, [t])[0] for t in texts])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    r = get_reward("reward_model", model=rm, tokenizer=tok)(["I like", "The quick"],
                                                           [" cats", " brown fox"])
    assert r.shape == (2,) and torch.isfinite(r).all()
    # Eq. 2 on its scores: a zero head scores every text 0 -> loss log 2
    zero = RewardModel(tiny_llama())
    s = zero.score_texts(tok, texts)
    loss = get_loss("bradley_terry")(PairScores(s[:1], s[1:])).losses
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
