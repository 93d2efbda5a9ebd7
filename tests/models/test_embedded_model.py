"""The embedded SmolLM2-135M-Instruct (integration: converts once into the user cache)."""

from __future__ import annotations

import pytest
import torch
from tests._tiny import chat_prompts

from prefdyn.models import answer_token_ids, default_answers, embedded_gguf_path, load_model, unembedding

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return load_model()


def test_loads_with_tied_embeddings_and_left_padding(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    assert smollm2.name == "SmolLM2-135M-Instruct"
    assert not model.training and model.dtype == torch.float32
    assert model.config.tie_word_embeddings
    assert unembedding(model) is model.get_input_embeddings().weight
    assert unembedding(model).shape == (49152, 576)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert smollm2.has_chat_template


def test_yes_no_are_single_tokens(smollm2):
    ids = answer_token_ids(smollm2.tokenizer, [" Yes", " No", "Yes", "No"])
    assert len(set(ids)) == 4


def test_chat_template_text_starts_with_bos_and_tokenizer_adds_none(smollm2):
    tok = smollm2.tokenizer
    text = chat_prompts(tok, ["I like cats"])[0]
    assert text.startswith("<|im_start|>system\n")
    plain = tok(text, add_special_tokens=False)["input_ids"]
    assert plain[0] == tok.bos_token_id == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok(text)["input_ids"] == plain  # SmolLM2's tokenizer never adds a BOS itself


def test_chat_answers_have_no_leading_space(smollm2):
    """default_answers(chat_template=True): the chat model prefers 'Yes'/'No' over ' Yes'/' No'."""
    tok, model = smollm2.tokenizer, smollm2.model
    texts = chat_prompts(tok, ["I like to help people", "I enjoy causing pain to others"])
    yes, no = answer_token_ids(tok, default_answers(True))
    sp_yes, sp_no = answer_token_ids(tok, default_answers(False))
    for text in texts:
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = model(ids).logits[0, -1]
        assert logits[yes] > logits[sp_yes] and logits[no] > logits[sp_no]


def test_cache_matches_a_direct_gguf_load(smollm2):
    """The safetensors cache holds exactly what transformers de-quantizes from the GGUF (~20 s)."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ours = dict(smollm2.model.named_parameters())
    for name, param in direct.named_parameters():
        assert torch.equal(param, ours[name]), name
