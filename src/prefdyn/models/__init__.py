"""Models: loading (embedded default, local folders, GGUF, hub ids) and token look-ups."""

from prefdyn.models.embedded import EMBEDDED_NAME, embedded_gguf_path
from prefdyn.models.loading import LoadedModel, load_model, model_fingerprint, tokenizer_fingerprint
from prefdyn.models.tokens import answer_token_ids, default_answers, unembedding

__all__ = [
    "EMBEDDED_NAME",
    "LoadedModel",
    "answer_token_ids",
    "default_answers",
    "embedded_gguf_path",
    "load_model",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "unembedding",
]
