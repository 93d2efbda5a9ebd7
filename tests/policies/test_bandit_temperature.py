import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.policies.bandit import BanditPolicy, BanditStream, answer_logits
from tests._tiny import tiny_llama


def test_the_bandit_policy_is_the_tempered_softmax():
    model = tiny_llama(0, hidden=16, vocab=5)
    batch = BanditStream([[1, 2], [3]], [2, 4], vocab_size=5, pad_id=0, batch_size=2).collate([0, 1])
    logits = answer_logits(model, batch.input_ids, batch.attention_mask)
    hot = BanditPolicy(model, temperature=2.0).logps(batch)
    torch.testing.assert_close(hot.logps, torch.log_softmax(logits / 2.0, -1))
    with pytest.raises(PrefdynError, match="temperature"):
        BanditPolicy(model, temperature=0.0)
