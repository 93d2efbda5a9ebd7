"""Embeddings: g(x), the lm_head input at a prompt's last token, and its on-disk cache."""

from prefdyn.embeddings.cache import cached_embeddings, embedding_cache_key
from prefdyn.embeddings.extract import extract_embeddings, tokenize_texts

__all__ = ["cached_embeddings", "embedding_cache_key", "extract_embeddings", "tokenize_texts"]
