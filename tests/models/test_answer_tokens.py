"""Single-token answers, default answers and the unembedding."""

from __future__ import annotations

import pytest
from tests._tiny import tiny_llama, tiny_tokenizer

from prefdyn.errors import ModelError
from prefdyn.models import answer_token_ids, default_answers, unembedding


def test_single_token_answers():
    tok = tiny_tokenizer()
    ids = answer_token_ids(tok, [" Yes", " No", "Yes", "No"])
    assert ids == [tok.convert_tokens_to_ids(t) for t in ["ĠYes", "ĠNo", "Yes", "No"]]
    assert len(set(ids)) == 4


def test_multi_token_answer_error_names_answer_ids_and_tokens():
    tok = tiny_tokenizer()
    ids = tok("zebra", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    with pytest.raises(ModelError) as err:
        answer_token_ids(tok, ["Yes", "zebra"])
    message = str(err.value)
    assert "'zebra'" in message
    assert str(ids) in message
    assert str(tok.convert_ids_to_tokens(ids)) in message


def test_empty_answer_is_an_error():
    with pytest.raises(ModelError, match="0 tokens"):
        answer_token_ids(tiny_tokenizer(), [""])


def test_default_answers():
    assert default_answers(chat_template=True) == ("Yes", "No")
    assert default_answers(chat_template=False) == (" Yes", " No")


@pytest.mark.parametrize("tied", [False, True])
def test_unembedding_is_the_lm_head_weight(tied):
    model = tiny_llama(hidden=16, vocab=50, tie_word_embeddings=tied)
    W_U = unembedding(model)
    assert W_U.shape == (50, 16)
    assert W_U is model.lm_head.weight
    assert (W_U is model.model.embed_tokens.weight) == tied
