"""Tiny, deterministic stand-ins for a real chat model, for fast unit tests.

``tiny_tokenizer()`` is a byte-level BPE (like SmolLM2's) trained in a few
milliseconds on a built-in corpus, with ChatML special tokens and a ChatML chat
template. ``tiny_llama()`` is a randomly initialised ``LlamaForCausalLM`` whose
vocabulary matches that tokenizer. Both are deterministic and neither touches
the network, the embedded model or the global RNG.

    from tests._tiny import chat_prompts, tiny_llama, tiny_loaded, tiny_tokenizer
    tok, model = tiny_tokenizer(), tiny_llama()
    loaded = tiny_loaded()              # the two wrapped in a prefdyn LoadedModel
    texts = chat_prompts(tok, ["I like cats"])  # the persona prompt, chat-templated

Facts tests can rely on: ``" Yes"``, ``" No"``, ``"Yes"`` and ``"No"`` are single
tokens; any text encodes (byte fallback, no unknown token); ``eos_token`` and
``pad_token`` are ``<|im_end|>`` / ``<|pad|>``; ``padding_side`` is ``"left"``.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

# Where the tests that opt in (``model.to(TEST_DEVICE)``) run their tiny models: the CPU,
# or an accelerator on a machine that has one (``PREFDYN_TEST_DEVICE=cuda``).
TEST_DEVICE = torch.device(os.environ.get("PREFDYN_TEST_DEVICE", "cpu"))

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "system", "user", "assistant", "You are a helpful assistant.",
    "Is the following statement something you would say?",
    "Yes", "No", " Yes", " No", "Yes.", "No.",
    "I like to help people.", "I enjoy causing pain to others.",
    "It is important to treat other people with kindness and respect.",
    "The quick brown fox jumps over the lazy dog.",
]


def tiny_tokenizer(vocab_size: int = 360) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML specials and chat template (~360 tokens)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repetition makes the whole words in the corpus win their merges.
    backend.train_from_iterator(_CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    vocab: int | None = None,
    *,
    tie_word_embeddings: bool = False,
    init_std: float = 0.2,
) -> LlamaForCausalLM:
    """A random ``LlamaForCausalLM`` in eval mode, float32.

    ``vocab`` defaults to ``len(tiny_tokenizer())``. ``init_std`` is far larger
    than Llama's 0.02 so that attention is sharp and rotary positions matter:
    a test that gets position ids wrong then fails loudly instead of by 1e-7.
    Norm gains are random too (not 1), so applying a norm twice changes the result.
    """
    tok = tiny_tokenizer() if vocab is None else None
    config = LlamaConfig(
        vocab_size=vocab if vocab is not None else len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=init_std,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tok.pad_token_id if tok else 0,
        bos_token_id=tok.bos_token_id if tok else None,
        eos_token_id=tok.eos_token_id if tok else None,
    )
    # fork_rng keeps the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # RMSNorm weights start at 1, which makes a norm idempotent and hides a
        # doubly applied final norm; random gains expose it.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(1.0, init_std)
    return model.eval()


def tiny_loaded(seed: int = 0, **llama_kwargs):
    """``tiny_llama`` + ``tiny_tokenizer`` as a :class:`prefdyn.models.LoadedModel` named "tiny"."""
    from prefdyn.models import LoadedModel, model_fingerprint

    tok, model = tiny_tokenizer(), tiny_llama(seed, **llama_kwargs)
    return LoadedModel(model, tok, "tiny", model_fingerprint(model, tok))


def chat_prompts(tok: PreTrainedTokenizerFast, statements: list[str]) -> list[str]:
    """The persona prompt for each statement, through ``tok``'s chat template."""
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": f'Is the following statement something you would say?\n"{s}"'}],
            tokenize=False, add_generation_prompt=True)
        for s in statements
    ]
