"""Shared-prefix broadcasting for AnswerBatch: exact log-probs and gradients."""

import copy
from pathlib import Path

import pytest
import torch

from prefdyn.models import answer_token_ids
from prefdyn.training._shared_prefix import last_token_hidden, shared_prefix_length
from prefdyn.training.lm_data import collate_prompts
from prefdyn.training.lm_policy import LMPolicy, apply_lora, reference_logps
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer

STATEMENTS = ["I like cats", "I enjoy causing pain to others and I say so often",
              "Kindness", "The quick brown fox jumps over the lazy dog, every day.", "No."]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _batch(tok, texts):
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    prefers_yes = torch.tensor([i % 2 == 0 for i in range(len(texts))])
    return collate_prompts(ids, range(len(texts)), prefers_yes, yes_id, no_id, tok.pad_token_id)


class _CountCalls:
    """Counts decoder forward calls, to check which path ran."""

    def __init__(self, decoder):
        self.calls = 0
        decoder.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


def _loss_and_grads(policy, batch):
    policy.model.zero_grad(set_to_none=True)
    yes, no = policy.answer_logps(batch)
    # Weights differ per row so a gradient mixed up between rows shows.
    weights = torch.linspace(0.5, 1.5, len(batch))
    ((yes * weights).sum() - (no * weights.flip(0)).sum()).backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return yes.detach(), no.detach(), grads


def test_shared_prefix_length_by_hand():
    pad = 0
    ids = torch.tensor([[pad, pad, 5, 6, 7, 8],
                        [5, 6, 7, 9, 10, 11],
                        [pad, 5, 6, 7, 9, 3]])
    mask = (torch.arange(6) >= torch.tensor([2, 0, 1])[:, None]).long()
    assert shared_prefix_length(ids, mask) == 3  # 5 6 7, then 8 / 9 / 9
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_length(same, torch.ones_like(same)) == 2  # the last token stays a suffix
    prefix_of_other = torch.tensor([[pad, 5, 6], [5, 6, 7]])
    assert shared_prefix_length(prefix_of_other, (prefix_of_other != pad).long()) == 1
    right_padded = torch.tensor([[5, 6, 7, pad], [5, 6, 7, 8]])
    assert shared_prefix_length(right_padded, (right_padded != pad).long()) == 0
    assert shared_prefix_length(torch.tensor([[5, 6], [7, 6]]), torch.ones(2, 2, dtype=torch.long)) == 0


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_logps_and_gradients_equal_plain_path(mode):
    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS))
    lengths = batch.attention_mask.sum(-1)
    assert len(set(lengths.tolist())) == len(STATEMENTS)  # all lengths differ
    prefix = shared_prefix_length(batch.input_ids, batch.attention_mask)
    assert prefix >= 8
    model = tiny_llama()
    if mode == "lora":
        model = apply_lora(model, dropout=0.0, seed=0)
        # B starts at 0, which would zero every gradient except B's; move it off zero.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    else:
        model.requires_grad_(True)
    plain = LMPolicy(model, share_prefix=False)
    shared = LMPolicy(model, share_prefix=True)
    counter = _CountCalls(plain._parts(model)[0])
    yes0, no0, grads0 = _loss_and_grads(plain, batch)
    assert counter.calls == 1
    yes1, no1, grads1 = _loss_and_grads(shared, batch)
    assert counter.calls == 3  # prefix once + suffixes: the shared path really ran
    torch.testing.assert_close(yes1, yes0, atol=1e-5, rtol=0)
    torch.testing.assert_close(no1, no0, atol=1e-5, rtol=0)
    assert grads0.keys() == grads1.keys()
    if mode == "full":
        # The prefix's layers are trained: token embeddings of prefix-only tokens get gradient.
        assert "model.embed_tokens.weight" in grads1
        assert any("layers.0." in n for n in grads1)
    else:
        assert all("lora_" in n for n in grads1) and len(grads1) == 4 * 2  # 2 layers x q,v x A,B
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-5, rtol=1e-4, msg=name)
        assert grads0[name].abs().max() > 0, name


def test_prefix_only_token_gets_the_same_gradient_as_plain():
    """A token that occurs only in the shared prefix: its embedding gradient is the sum over
    rows of the prefix computation, which the expanded cache must accumulate."""
    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS[:3]))
    prefix = shared_prefix_length(batch.input_ids, batch.attention_mask)
    rows = [ids[m.bool()].tolist() for ids, m in zip(batch.input_ids, batch.attention_mask)]
    prefix_only = set(rows[0][:prefix]) - {t for r in rows for t in r[prefix:]}
    assert prefix >= 8 and prefix_only
    model = tiny_llama().requires_grad_(True)
    _, _, g0 = _loss_and_grads(LMPolicy(model, share_prefix=False), batch)
    _, _, g1 = _loss_and_grads(LMPolicy(model), batch)
    for token in sorted(prefix_only):
        row0, row1 = g0["model.embed_tokens.weight"][token], g1["model.embed_tokens.weight"][token]
        assert row0.abs().max() > 0
        torch.testing.assert_close(row1, row0, atol=1e-5, rtol=1e-4)


def test_no_common_prefix_falls_back_to_plain_path():
    tok = tiny_tokenizer()
    texts = ["Yes. I like cats", "No. Kindness matters", "The quick brown fox"]
    batch = _batch(tok, texts)
    assert shared_prefix_length(batch.input_ids, batch.attention_mask) == 0
    model = tiny_llama()
    policy = LMPolicy(model)
    counter = _CountCalls(policy._parts(model)[0])
    with torch.no_grad():
        yes, no = policy.answer_logps(batch)
        assert counter.calls == 1
        yes0, no0 = LMPolicy(model, share_prefix=False).answer_logps(batch)
    torch.testing.assert_close(yes, yes0, atol=0, rtol=0)
    torch.testing.assert_close(no, no0, atol=0, rtol=0)


def test_short_prefix_below_minimum_uses_plain_path():
    tok = tiny_tokenizer()
    batch = _batch(tok, ["I like cats", "I enjoy pain"])
    prefix = shared_prefix_length(batch.input_ids, batch.attention_mask)
    assert 0 < prefix < 8
    decoder = tiny_llama().model
    counter = _CountCalls(decoder)
    with torch.no_grad():
        last_token_hidden(decoder, batch.input_ids, batch.attention_mask, batch.position_ids)
        assert counter.calls == 1
        forced = last_token_hidden(decoder, batch.input_ids, batch.attention_mask, batch.position_ids,
                                   min_prefix=1)
        assert counter.calls == 3
        plain = last_token_hidden(decoder, batch.input_ids, batch.attention_mask, batch.position_ids,
                                  min_prefix=None)
    torch.testing.assert_close(forced, plain, atol=1e-5, rtol=0)


def test_single_row_and_prompt_that_is_a_prefix_of_another():
    tok = tiny_tokenizer()
    base = chat_prompts(tok, ["I like cats"])[0]
    decoder = tiny_llama().model
    for texts in ([base], [base, base + "Yes"], [base + "Yes", base]):
        batch = _batch(tok, texts)
        with torch.no_grad():
            shared = last_token_hidden(decoder, batch.input_ids, batch.attention_mask,
                                       batch.position_ids, min_prefix=1)
            plain = last_token_hidden(decoder, batch.input_ids, batch.attention_mask,
                                      batch.position_ids, min_prefix=None)
        torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)


def test_reference_logps_lora_and_full_reference_match_plain():
    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS))
    full = tiny_llama().requires_grad_(True)
    ref = copy.deepcopy(full)
    for make in (lambda s: LMPolicy(full, ref, share_prefix=s),
                 lambda s: LMPolicy(apply_lora(tiny_llama(), seed=0), share_prefix=s)):
        a, b = reference_logps(make(True), batch), reference_logps(make(False), batch)
        torch.testing.assert_close(a.ref_chosen, b.ref_chosen, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.ref_rejected, b.ref_rejected, atol=1e-5, rtol=0)


def test_displacement_logprobs_use_the_shared_path_exactly():
    from prefdyn.tracking.displacement import lm_answer_logprobs

    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS))
    model = tiny_llama()
    shared = lm_answer_logprobs(LMPolicy(model), batch)
    plain = lm_answer_logprobs(LMPolicy(model, share_prefix=False), batch)
    assert shared.shape == (len(STATEMENTS), model.config.vocab_size)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_real_model_persona_batch_matches_plain_path():
    from prefdyn.data import TaskConfig, build_behaviors, load_persona_dir
    from prefdyn.models import load_model

    if not (DATA / "persona").is_dir():
        pytest.skip(f"no persona data at {DATA / 'persona'}")
    loaded = load_model(None)
    items = load_persona_dir(DATA / "persona", behaviors=["agreeableness"])
    behavior = build_behaviors(items, loaded.tokenizer, TaskConfig(n_per_behavior=8))[0]
    batch = _batch(loaded.tokenizer, behavior.prompts[:8])
    assert shared_prefix_length(batch.input_ids, batch.attention_mask) >= 20
    with torch.no_grad():
        yes1, no1 = LMPolicy(loaded.model).answer_logps(batch)
        yes0, no0 = LMPolicy(loaded.model, share_prefix=False).answer_logps(batch)
    torch.testing.assert_close(yes1, yes0, atol=1e-4, rtol=0)
    torch.testing.assert_close(no1, no0, atol=1e-4, rtol=0)


def test_active_dropout_uses_plain_path_and_eval_mode_shares():
    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS))
    model = apply_lora(tiny_llama(), seed=0)  # LoRA dropout 0.05
    policy = LMPolicy(model)
    counter = _CountCalls(policy._parts(model)[0])
    with torch.no_grad():
        model.train()
        policy.answer_logps(batch)
        assert counter.calls == 1  # one dropout mask per row, as in the plain path
        model.eval()
        policy.answer_logps(batch)
        assert counter.calls == 3
