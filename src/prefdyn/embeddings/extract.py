"""g(x): the hidden state that feeds the unembedding at a prompt's last token.

For a causal LM, logits(x) = W_U g(x) where g(x) is the decoder's final,
*already normalised* hidden state at the last prompt position (Llama's
``LlamaModel`` applies its final RMSNorm before returning
``last_hidden_state``; applying the norm again, as some public code does, is
wrong). We call the decoder (``model.get_decoder()``) directly, so the
(V x n) vocabulary logits are never computed.

Tokenization: texts are final strings (any chat template already applied) and
are encoded with ``add_special_tokens=False``, so no BOS is added by us. Chat
templates write their own start token (SmolLM2's ``<|im_start|>`` is its BOS,
id 1; its tokenizer adds nothing even when asked), so adding special tokens
would only risk a doubled BOS for tokenizers such as Llama 3's. For raw text,
prepend ``tokenizer.bos_token`` yourself if the model expects one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from prefdyn.embeddings._prefix import common_prefix_length, prefix_cache, suffix_last_hidden
from prefdyn.errors import DataError

logger = logging.getLogger(__name__)


def tokenize_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens (see the module docstring)."""
    token_ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(token_ids):
        if not ids:
            raise DataError(f"text {i} is empty: there is no last token to read", field="text")
    return token_ids


def extract_embeddings(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    reuse_prefix: bool = True,
    progress: bool = False,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """g(x) for every text: the lm_head input at its last token. Returns (n, d) float32 on CPU.

    ``lm_head(g)`` equals the model's logits at that position. Texts are
    processed longest first in batches of ``batch_size`` (less padding), and
    returned in input order. With ``reuse_prefix`` the longest common token
    prefix is run once and its key/value cache reused (see ``_prefix.py``);
    the result equals the plain computation (no prefix, every text its own suffix)
    up to float round-off.
    ``device`` is where the inputs are built: the model's device (the
    default); the model itself is never moved. ``autocast`` (e.g. ``torch.bfloat16``)
    runs the matrix products in that dtype under :func:`torch.autocast` (about 3x the
    fp32 rate on CPUs with avx512_bf16, the usual mode on GPUs) while the fp32 weights,
    the residual stream, the norms and the returned g(x) stay fp32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    decoder = model.get_decoder()
    hidden_size = model.get_output_embeddings().weight.shape[1]
    if not texts:
        return torch.empty(0, hidden_size)
    token_ids = tokenize_texts(tokenizer, texts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefix_len = common_prefix_length(token_ids) if reuse_prefix else 0
    logger.info("extracting %d embeddings (shared prefix: %d tokens)", len(texts), prefix_len)

    out = torch.empty(len(texts), hidden_size, dtype=torch.float32)
    mixed = torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)
    with torch.inference_mode(), mixed, _progress_bar(len(texts), progress) as advance:
        cache = prefix_cache(decoder, token_ids[0][:prefix_len], device) if prefix_len else None
        for batch in _length_sorted_batches([len(ids) for ids in token_ids], batch_size):
            suffixes = [token_ids[i][prefix_len:] for i in batch]
            hidden = suffix_last_hidden(decoder, cache, prefix_len, suffixes, pad_id, device)
            out[batch] = hidden.float().cpu()
            advance(len(batch))
    return out


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches, longest first: similar lengths share a batch (less padding), and the
    largest batch runs first so an out-of-memory error shows up at once."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@contextmanager
def _progress_bar(total: int, enabled: bool, description: str = "embeddings") -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar, or a no-op; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
