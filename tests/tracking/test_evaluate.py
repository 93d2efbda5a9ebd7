import math

import pytest
import torch

from prefdyn.data.records import PreferencePair
from prefdyn.losses import get_loss
from prefdyn.tracking.evaluate import pair_metrics, score_pairs
from prefdyn.training.lm_data import fixed_pair_batches
from prefdyn.policies.lm import LMPolicy, apply_lora
from tests._tiny import tiny_loaded


def _pairs():
    return [PreferencePair(f"Q{i}: say it.", " Yes" * (1 + i % 2), " No", f"toy:{i}") for i in range(5)]


def test_multi_token_pairs_scored_against_the_reference_and_in_order():
    loaded = tiny_loaded()
    policy = LMPolicy(apply_lora(loaded.model, seed=0))
    with torch.no_grad():  # move the adapters so the policy differs from its reference
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    batches = fixed_pair_batches(_pairs(), loaded.tokenizer, 2)
    policy.model.train()
    scores = score_pairs(policy, batches)
    assert policy.model.training  # mode restored
    assert scores.rows.tolist() == [0, 1, 2, 3, 4] and len(scores) == 5
    assert scores.logps.chosen_len.tolist() == [1, 2, 1, 2, 1]  # " Yes" is one token
    policy.model.eval()  # score_pairs measures in eval mode: no LoRA dropout
    torch.testing.assert_close(scores.logps.chosen, torch.cat([policy.pair(b)[0] for b in batches]))
    with policy.reference() as ref:
        ref_chosen = torch.cat([policy.pair(b, ref)[0] for b in batches])
    torch.testing.assert_close(scores.logps.ref_chosen, ref_chosen)
    assert not torch.allclose(scores.logps.chosen, scores.logps.ref_chosen)


def test_pair_metrics_by_hand():
    from prefdyn.losses.types import PreferenceLogps
    from prefdyn.tracking.evaluate import PairScores

    logps = PreferenceLogps(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]),
                            torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0]))
    values = pair_metrics(PairScores(logps, torch.tensor([7, 8])))
    assert values["chosen_logp_change"].tolist() == [0.5, -1.0]
    assert values["chosen_fell"].tolist() == [0.0, 1.0]
    assert values["logp_diff"].tolist() == [1.0, -2.0] and values["policy_acc"].tolist() == [1.0, 0.0]
    # h = 0.5 - 0 and -1 - 1: reward_acc is sign(h) with or without the objective
    assert values["reward_acc"].tolist() == [1.0, 0.0] and "loss" not in values
    dpo = pair_metrics(PairScores(logps, torch.tensor([7, 8])), get_loss("dpo", beta=1.0))
    assert dpo["reward_acc"].tolist() == [1.0, 0.0]
    assert dpo["loss"][0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))
    assert dpo["dpo_weight"][1].item() == pytest.approx(1 / (1 + math.exp(-2.0)))
