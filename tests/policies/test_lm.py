
import pytest
import torch

from prefdyn.data import PreferencePair, TaskConfig, build_behavior, load_demo
from prefdyn.errors import DataError
from prefdyn.losses import get_loss
from prefdyn.models import answer_token_ids
from prefdyn.policies.lm import LMPolicy, apply_lora, left_padded, reference_logps
from prefdyn.training import TrainConfig
from prefdyn.training.lm_data import answer_batches, collate_prompts, pair_batches
from prefdyn.training.lm_runner import fit_lm
from prefdyn.training.step import compute_loss
from tests._tiny import chat_prompts, tiny_llama, tiny_loaded, tiny_tokenizer

STATEMENTS = ["I like cats", "I enjoy causing pain to others and I say so often",
              "Kindness", "The quick brown fox jumps over the lazy dog, every day."]


def _behavior(tok, statements=STATEMENTS):
    from prefdyn.data import BehaviorData
    n = len(statements)
    return BehaviorData(name="toy", statements=list(statements), prompts=chat_prompts(tok, statements),
                        prefers_yes=torch.tensor([i % 2 == 0 for i in range(n)]),
                        train_idx=torch.arange(n), test_idx=torch.arange(0), sources=["t"] * n)


def _pairs():
    return [PreferencePair("I like to help", " people.", " No.", "t"),
            PreferencePair("The quick brown fox", " jumps over the lazy dog.", " Yes", "t"),
            PreferencePair("Is the following statement something you would say?", " Yes.", " No", "t")]


def test_answer_logps_match_full_logits_with_left_padding():
    tok, model = tiny_tokenizer(), tiny_llama()
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    behavior = _behavior(tok)
    batch = next(answer_batches(behavior, tok, yes_id, no_id, batch_size=4, seed=0))
    assert len({int(m.sum()) for m in batch.attention_mask}) > 1  # several lengths, padded
    with torch.no_grad():
        yes, no = LMPolicy(model).answer_logps(batch)
        for i, row in enumerate(batch.rows.tolist()):
            ids = tok(behavior.prompts[row], add_special_tokens=False, return_tensors="pt")["input_ids"]
            expected = torch.log_softmax(model(ids).logits[0, -1], -1)
            assert yes[i].item() == pytest.approx(expected[yes_id].item(), abs=1e-5)
            assert no[i].item() == pytest.approx(expected[no_id].item(), abs=1e-5)


def test_pair_logps_match_hand_loop_over_response_tokens():
    tok, model = tiny_tokenizer(), tiny_llama()
    pairs = _pairs()
    batch = next(pair_batches(pairs, tok, batch_size=3, seed=1))
    with torch.no_grad():
        chosen, rejected = LMPolicy(model).pair_logps(batch)
        for i, row in enumerate(batch.rows.tolist()):
            for response, got, length in ((pairs[row].chosen, chosen[i], batch.chosen_len[i]),
                                          (pairs[row].rejected, rejected[i], batch.rejected_len[i])):
                prompt = tok(pairs[row].prompt, add_special_tokens=False)["input_ids"]
                full = tok(pairs[row].prompt + response, add_special_tokens=False)["input_ids"]
                logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
                total = sum(logprobs[t - 1, full[t]].item() for t in range(len(prompt), len(full)))
                assert got.item() == pytest.approx(total, abs=1e-4)
                assert length.item() == len(full) - len(prompt)


def test_pair_logps_gradient_with_tied_embeddings_equals_autograd():
    """pair_logps adds the input-embedding gradient into the (tied) weight's grad by a
    hook (prefdyn.policies._shared_prefix); it must equal autograd through the logits."""
    tok, model = tiny_tokenizer(), tiny_llama(tie_word_embeddings=True).requires_grad_(True)
    batch = next(pair_batches(_pairs(), tok, batch_size=3, seed=1))
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids).logits[:, :-1]
    token_logps = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    per_row = (token_logps * batch.response_mask[:, 1:]).sum(-1)
    n = len(batch)
    (per_row[:n] - 0.5 * per_row[n:]).sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    chosen, rejected = LMPolicy(model).pair_logps(batch)
    (chosen - 0.5 * rejected).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_full_mode_changes_weights_and_lowers_dpo_loss():
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    batches = answer_batches(_behavior(tok), tok, yes_id, no_id, batch_size=4, seed=0)
    before = _params(loaded.model)
    run = fit_lm(loaded, batches, TrainConfig(optimizer="adamw", lr=1e-3, log_every=1), mode="full",
                 steps=5)
    losses = [r["loss"] for r in run.history.records]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0] - 0.01
    after = _params(loaded.model)
    assert all(not torch.equal(before[n], after[n]) for n in before if "layers.0." in n)
    assert {"grad_norm", "drift/layer_00", "drift/other", "chosen_fell"} <= set(run.history.records[-1])
    assert run.history.records[-1]["drift/layer_00"] > 0
    # W(0) is kept on disk, not as a second model; pi_ref built from it on demand is the start
    assert run.policy.reference_model is None
    assert all(torch.equal(before[n], run.policy.start_tensor(n)) for n in before)
    with run.policy.reference() as ref_model:
        ref = dict(ref_model.named_parameters())
        assert ref_model is not run.policy.model
        assert all(torch.equal(before[n], ref[n]) for n in before)


def test_lora_mode_changes_only_adapters_and_reference_is_the_start():
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    behavior = _behavior(tok)
    fresh = LMPolicy(tiny_llama())
    probe = collate_prompts(tok(behavior.prompts, add_special_tokens=False)["input_ids"],
                            range(4), behavior.prefers_yes, yes_id, no_id, tok.pad_token_id)
    with torch.no_grad():
        start = fresh.pair(probe)
    before = _params(loaded.model)
    batches = answer_batches(behavior, tok, yes_id, no_id, batch_size=2, seed=0)
    run = fit_lm(loaded, batches, TrainConfig(optimizer="adamw", lr=1e-2), mode="lora", steps=4)
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach()
             for n, p in run.policy.model.named_parameters()}
    lora = {n: p for n, p in after.items() if "lora_" in n}
    assert lora and all(("q_proj" in n or "v_proj" in n) for n in lora)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in lora.items() if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before)  # base weights untouched
    assert all(r["loss"] == r["loss"] for r in run.history.records)
    assert run.history.records[-1]["drift/layer_00"] > 0
    ref = reference_logps(run.policy, probe)
    with torch.no_grad():
        trained = run.policy.pair(probe)
    assert torch.allclose(ref.ref_chosen, start[0], atol=1e-5)
    assert torch.allclose(ref.ref_rejected, start[1], atol=1e-5)
    assert not torch.allclose(trained[0], start[0], atol=1e-4)


def test_pair_batches_train_through_the_same_step():
    tok, model = tiny_tokenizer(), tiny_llama()
    policy = LMPolicy(apply_lora(model, r=4, seed=0))
    batch = reference_logps(policy, next(pair_batches(_pairs(), tok, batch_size=3, seed=0)))
    loss, _, _out, logps = compute_loss(policy, get_loss("simpo"), batch)
    assert torch.isfinite(loss) and logps.chosen_len is not None
    loss.backward()
    assert all(p.grad is not None for n, p in policy.named_parameters() if p.requires_grad)


def test_data_errors():
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="empty chosen"):
        pair_batches([PreferencePair("I like", "", " No", "t")], tok, 1, 0)
    # "Ye" + "s" merges into the single token "Yes": the prompt is not a token prefix
    with pytest.raises(DataError, match="not a prefix"):
        pair_batches([PreferencePair("Ye", "s", "s.", "t")], tok, 1, 0)
    with pytest.raises(DataError, match="longer than the model's context"):
        pair_batches([PreferencePair("I like", " to help people.", " No", "t")], tok, 1, 0, max_length=3)
    with pytest.raises(DataError, match="empty prompt"):
        pair_batches([PreferencePair("", " Yes", " No", "t")], tok, 1, 0)
    with pytest.raises(DataError, match="longer than the model's context"):
        answer_batches(_behavior(tok), tok, 0, 1, 2, 0, max_length=5)


def test_answer_batches_are_seeded_and_cover_each_epoch():
    tok = tiny_tokenizer()
    a = answer_batches(_behavior(tok), tok, 0, 1, batch_size=3, seed=7)
    b = answer_batches(_behavior(tok), tok, 0, 1, batch_size=3, seed=7)
    rows_a = [next(a).rows.tolist() for _ in range(4)]
    assert rows_a == [next(b).rows.tolist() for _ in range(4)]
    assert sorted(rows_a[0] + rows_a[1]) == [0, 1, 2, 3]


@pytest.mark.integration
def test_lora_steps_on_the_embedded_model():
    from prefdyn.models import load_model

    loaded = load_model()
    behavior = build_behavior("kindness", load_demo(["kindness"])["kindness"], loaded.tokenizer,
                              TaskConfig(n_per_behavior=4, test_fraction=0.0))
    yes_id, no_id = answer_token_ids(loaded.tokenizer, behavior.answers)
    batches = answer_batches(behavior, loaded.tokenizer, yes_id, no_id, batch_size=4, seed=0)
    run = fit_lm(loaded, batches, TrainConfig(optimizer="adamw", lr=1e-4), mode="lora", steps=2)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run.history.records)
    lora_B = [p for n, p in run.policy.model.named_parameters() if "lora_B" in n]
    assert lora_B and any(p.abs().sum() > 0 for p in lora_B)


def test_left_padded_by_hand():
    input_ids, attention_mask, position_ids = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]  # each prompt starts at 0; pads at 0
