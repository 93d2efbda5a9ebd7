"""Token look-ups: single-token answers and the unembedding matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefdyn.errors import ModelError


def answer_token_ids(tokenizer, answers: Sequence[str]) -> list[int]:
    """The one token id of each answer, encoded without special tokens.

    The preference dynamics are read off single unembedding rows, so an
    answer that splits into several tokens is an error (it names the pieces).
    """
    ids = []
    for answer in answers:
        encoded = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            pieces = tokenizer.convert_ids_to_tokens(encoded)
            raise ModelError(
                f"answer {answer!r} is not a single token: it encodes to {len(encoded)} tokens "
                f"ids={encoded} tokens={pieces}; pick an answer that is one token "
                "(e.g. with or without a leading space)"
            )
        ids.append(encoded[0])
    return ids


def default_answers(chat_template: bool) -> tuple[str, str]:
    """The (yes, no) answer strings.

    With a chat template the assistant turn starts on a fresh line and SmolLM2
    answers ``Yes``/``No`` with no leading space; a raw prompt ending in a
    question is continued with ``" Yes"``/``" No"``.
    """
    return ("Yes", "No") if chat_template else (" Yes", " No")


def unembedding(model) -> torch.Tensor:
    """W_U, the lm_head weight, shape (V, d): logits = g(x) @ W_U.T.

    This is the live parameter (tied to the input embedding when the model
    ties them), not a copy.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ModelError(f"{type(model).__name__} has no output embedding (lm_head)")
    return head.weight
