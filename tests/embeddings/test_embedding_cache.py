"""cached_embeddings: content-keyed, atomic, self-checking safetensors files."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import prefdyn.embeddings.cache as cache
from prefdyn.embeddings import cached_embeddings, embedding_cache_key, extract_embeddings
from tests._tiny import chat_prompts, tiny_loaded

TEXTS = ["I like to help people.", "I enjoy causing pain to others.", "zebra"]


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts the extractions that actually run."""
    counted: list[int] = []

    def counting(*args, **kwargs):
        counted.append(len(args[2]))
        return extract_embeddings(*args, **kwargs)

    monkeypatch.setattr(cache, "extract_embeddings", counting)
    return counted


def _path(tmp_path, loaded, texts):
    return tmp_path / "embeddings" / f"{embedding_cache_key(loaded, texts)}.safetensors"


def test_hit_returns_the_same_tensor_without_recomputing(tmp_path, calls):
    loaded = tiny_loaded()
    first = cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    second = cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    assert calls == [3]
    assert torch.equal(first, second)
    assert torch.equal(first, extract_embeddings(loaded.model, loaded.tokenizer, TEXTS, progress=False))


def test_file_carries_key_and_shape(tmp_path):
    loaded = tiny_loaded()
    cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    path = _path(tmp_path, loaded, TEXTS)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        assert meta["key"] == path.stem
        assert meta["kind"] == "embeddings"
        assert meta["model"] == "tiny"
        assert f.get_slice("embeddings").get_shape() == [3, 32]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_key_depends_on_texts_model_and_tokenizer():
    loaded = tiny_loaded()
    key = embedding_cache_key(loaded, TEXTS)
    assert key == embedding_cache_key(tiny_loaded(), TEXTS)
    assert key != embedding_cache_key(loaded, TEXTS[::-1])
    assert key != embedding_cache_key(loaded, chat_prompts(loaded.tokenizer, TEXTS))
    assert key != embedding_cache_key(tiny_loaded(seed=1), TEXTS)
    loaded.tokenizer.chat_template = None
    assert key != embedding_cache_key(loaded, TEXTS)


def test_changed_weights_miss_after_refresh(tmp_path, calls):
    loaded = tiny_loaded()
    before = cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        loaded.model.model.norm.weight.mul_(2.0)
    loaded.refresh_fingerprint()
    after = cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    assert calls == [3, 3]
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "wrong_key"])
def test_corrupt_file_is_recomputed_with_a_warning(tmp_path, calls, damage):
    loaded = tiny_loaded()
    good = cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    path = _path(tmp_path, loaded, TEXTS)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-50])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:  # a whole file, only its tensor or its metadata is off
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        if damage == "wrong_shape":
            save_file({"embeddings": good[:2].contiguous()}, path, metadata=meta)
        else:
            save_file({"embeddings": good}, path, metadata={**meta, "key": "0" * 32})
    with pytest.warns(UserWarning, match="corrupt embeddings cache"):
        again = cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False)
    assert calls == [3, 3]
    assert torch.equal(again, good)
    # the file was rewritten, so the next call is a clean hit
    assert torch.equal(cached_embeddings(loaded, TEXTS, cache_dir=tmp_path, progress=False), good)
    assert calls == [3, 3]
