"""Packed shared-prefix forward for AnswerBatch: exact log-probs and gradients."""

import copy
from pathlib import Path

import pytest
import torch

from prefdyn.models import answer_token_ids
from prefdyn.policies._shared_prefix import last_token_hidden, pack_rows, shared_prefix_length
from prefdyn.policies.lm import LMPolicy, apply_lora, reference_logps
from prefdyn.training.lm_data import collate_prompts
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer

STATEMENTS = ["I like cats", "I enjoy causing pain to others and I say so often",
              "Kindness", "The quick brown fox jumps over the lazy dog, every day.", "No."]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _batch(tok, texts):
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    prefers_yes = torch.tensor([i % 2 == 0 for i in range(len(texts))])
    return collate_prompts(ids, range(len(texts)), prefers_yes, yes_id, no_id, tok.pad_token_id)


class _Calls:
    """Records the input shape of every decoder forward, to check which path ran:
    the plain path's batch is (n, T) with pads; the packed one has fewer tokens."""

    def __init__(self, decoder):
        self.shapes = []
        decoder.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        tokens = kwargs.get("input_ids")
        self.shapes.append(tuple((tokens if tokens is not None else kwargs["inputs_embeds"]).shape[:2]))


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
    calls = _Calls(plain._parts(model)[0])
    yes0, no0, grads0 = _loss_and_grads(plain, batch)
    assert calls.shapes == [tuple(batch.input_ids.shape)]
    yes1, no1, grads1 = _loss_and_grads(shared, batch)
    # One pack: the prefix once, then every suffix, no pads. The packed path really ran.
    assert calls.shapes[1] == (1, int(batch.attention_mask.sum()) - (len(batch) - 1) * prefix)
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
    rows of what flows back into the one prefix computation."""
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


def test_no_common_prefix_still_packs_without_pads():
    tok = tiny_tokenizer()
    texts = ["Yes. I like cats", "No. Kindness matters", "The quick brown fox"]
    batch = _batch(tok, texts)
    assert shared_prefix_length(batch.input_ids, batch.attention_mask) == 0
    model = tiny_llama()
    policy = LMPolicy(model)
    calls = _Calls(policy._parts(model)[0])
    with torch.no_grad():
        yes, no = policy.answer_logps(batch)
        assert calls.shapes == [(1, int(batch.attention_mask.sum()))]
        yes0, no0 = LMPolicy(model, share_prefix=False).answer_logps(batch)
    torch.testing.assert_close(yes, yes0, atol=1e-5, rtol=0)
    torch.testing.assert_close(no, no0, atol=1e-5, rtol=0)


def test_pack_rows_by_hand():
    # prefix 4; budget 10 leaves 6 suffix tokens per pack; a 9-token row gets its own pack.
    assert pack_rows([3, 3, 2, 9, 1], prefix_len=4, pack_tokens=10) == [[0, 1], [2], [3], [4]]
    assert pack_rows([1, 1, 1], prefix_len=0, pack_tokens=100) == [[0, 1, 2]]
    # In-order filling needs 2 packs (8 + 2 rows); balanced they are 5 + 5, so the forward's
    # two rows are 5 tokens wide instead of 8.
    assert pack_rows([1] * 10, prefix_len=0, pack_tokens=8) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert pack_rows([2, 1, 1, 2], prefix_len=3, pack_tokens=7) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("budget", ["one row per pack", "some rows per pack", "one pack"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_several_packs_and_both_attention_kinds_match_plain(budget, attn):
    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS))
    prefix = shared_prefix_length(batch.input_ids, batch.attention_mask)
    suffixes = (batch.attention_mask.sum(-1) - prefix).tolist()
    pack_tokens = {"one row per pack": 1, "some rows per pack": prefix + sum(suffixes) // 2,
                   "one pack": 10_000}[budget]
    packs = pack_rows(suffixes, prefix, pack_tokens)
    assert {"one row per pack": len(packs) == len(STATEMENTS),
            "some rows per pack": 1 < len(packs) < len(STATEMENTS),
            "one pack": len(packs) == 1}[budget], packs
    decoder = tiny_llama().model
    decoder.config._attn_implementation = attn
    calls = _Calls(decoder)
    with torch.no_grad():
        plain = last_token_hidden(decoder, batch.input_ids, batch.attention_mask, batch.position_ids,
                                  share_prefix=False)
        packed = last_token_hidden(decoder, batch.input_ids, batch.attention_mask,
                                   batch.position_ids, pack_tokens=pack_tokens)
    assert calls.shapes[1][0] == len(packs)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)


def test_sliding_window_shorter_than_a_row_uses_plain_path():
    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS[:2]))
    decoder = tiny_llama().model
    decoder.config.sliding_window = 4
    calls = _Calls(decoder)
    with torch.no_grad():
        last_token_hidden(decoder, batch.input_ids, batch.attention_mask, batch.position_ids)
    assert calls.shapes == [tuple(batch.input_ids.shape)]


def test_single_row_and_prompt_that_is_a_prefix_of_another():
    tok = tiny_tokenizer()
    base = chat_prompts(tok, ["I like cats"])[0]
    decoder = tiny_llama().model
    for texts in ([base], [base, base + "Yes"], [base + "Yes", base]):
        batch = _batch(tok, texts)
        with torch.no_grad():
            shared = last_token_hidden(decoder, batch.input_ids, batch.attention_mask,
                                       batch.position_ids)
            plain = last_token_hidden(decoder, batch.input_ids, batch.attention_mask,
                                      batch.position_ids, share_prefix=False)
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
    from prefdyn.tracking.evaluate import answer_logprobs

    tok = tiny_tokenizer()
    batch = _batch(tok, chat_prompts(tok, STATEMENTS))
    model = tiny_llama()
    shared = answer_logprobs(LMPolicy(model), batch)
    plain = answer_logprobs(LMPolicy(model, share_prefix=False), batch)
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
    calls = _Calls(policy._parts(model)[0])
    with torch.no_grad():
        model.train()
        policy.answer_logps(batch)
        assert calls.shapes == [tuple(batch.input_ids.shape)]  # one dropout mask per row
        model.eval()
        policy.answer_logps(batch)
        assert calls.shapes[1][0] == 1  # packed


def _autograd_grads(model, batches):
    """Gradients of the same objective through the model's own forward (logits at every
    position, the embedding backward left to autograd), accumulated over ``batches``."""
    model.zero_grad(set_to_none=True)
    for batch in batches:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits[:, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        weights = torch.linspace(0.5, 1.5, len(batch))
        ((logprobs[:, batch.yes_id] * weights).sum()
         - (logprobs[:, batch.no_id] * weights.flip(0)).sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_embedding_gradient_added_in_place_equals_autograd(tied, share_prefix):
    """Both paths add the input-embedding gradient into ``weight.grad`` by a hook; with
    tied embeddings that is the lm_head gradient plus the lookup's, accumulated over
    micro-batches, and it must equal plain autograd's."""
    tok = tiny_tokenizer()
    batches = [_batch(tok, chat_prompts(tok, STATEMENTS[:3])), _batch(tok, chat_prompts(tok, STATEMENTS[3:]))]
    model = tiny_llama(tie_word_embeddings=tied).requires_grad_(True)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    # As in SmolLM2, the embedding's padding_idx is a token the prompts contain (<|im_end|>):
    # autograd gives that row no lookup gradient.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert all(im_end in b.input_ids for b in batches)
    model.get_input_embeddings().padding_idx = im_end
    expected = _autograd_grads(model, batches)
    policy = LMPolicy(model, share_prefix=share_prefix)
    model.zero_grad(set_to_none=True)
    for batch in batches:
        yes, no = policy.answer_logps(batch)
        weights = torch.linspace(0.5, 1.5, len(batch))
        ((yes * weights).sum() - (no * weights.flip(0)).sum()).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    assert "model.embed_tokens.weight" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
