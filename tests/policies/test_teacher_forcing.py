"""Teacher-forced batches: SFT on a generation task's references through the rollout policy."""

import json

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.losses import get_loss
from prefdyn.policies.rollout import RolloutPolicy
from prefdyn.policies.teacher_forcing import ReferenceStream, teacher_forced_batch
from prefdyn.training import TrainConfig
from prefdyn.training.rl_runner import fit_rl
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer

STATEMENTS = ["I like cats", "Kindness", "The quick brown fox"]
REFERENCES = ["Yes.", "No", "It is important to treat other people with kindness."]


def test_sft_loss_is_the_reference_log_likelihood_of_each_unpadded_text():
    tok, model = tiny_tokenizer(), tiny_llama()
    prompts = chat_prompts(tok, STATEMENTS)
    batch = teacher_forced_batch(tok, prompts, REFERENCES)
    out = get_loss("sft", length_normalize=False)(RolloutPolicy(model).logps(batch))
    for i, (p, r) in enumerate(zip(prompts, REFERENCES)):
        prompt_ids = tok(p, add_special_tokens=False)["input_ids"]
        answer = tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt_ids + answer])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        want = -sum(logps[len(prompt_ids) - 1 + t, a] for t, a in enumerate(answer))
        assert out.losses[i].item() == pytest.approx(float(want), abs=1e-4)
        assert out.metrics["length"][i] == len(answer)


def test_an_sft_run_through_the_one_loop_lowers_the_loss_and_the_stream_resumes():
    tok, model = tiny_tokenizer(), tiny_llama()
    stream = ReferenceStream(tok, chat_prompts(tok, STATEMENTS), REFERENCES, batch_size=2, seed=1)
    saved = json.loads(json.dumps(stream.state()))
    first = next(stream)
    again = ReferenceStream(tok, chat_prompts(tok, STATEMENTS), REFERENCES, batch_size=2, seed=1)
    again.load_state(saved)
    assert torch.equal(next(again).input_ids, first.input_ids)
    run = fit_rl(model, RolloutPolicy(model), stream,
                 TrainConfig(loss="sft", optimizer="adamw", lr=1e-2, steps=12))
    losses = [r["loss"] for r in run.history.records]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert {"target_logp", "length"} <= run.history.records[0].keys()


def test_mismatched_or_empty_inputs_are_refused():
    tok = tiny_tokenizer()
    with pytest.raises(PrefdynError, match="one response per prompt"):
        teacher_forced_batch(tok, ["a", "b"], ["x"])
    with pytest.raises(PrefdynError, match="response 0 is empty"):
        teacher_forced_batch(tok, ["a"], [""], add_eos=False)
    with pytest.raises(PrefdynError, match="batch_size"):
        ReferenceStream(tok, ["a"], ["x"], batch_size=0)
