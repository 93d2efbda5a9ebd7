"""Shared pytest set-up for all of ``tests/``.

``tests`` and its sub-folders are packages (``__init__.py``), so pytest puts
the repository root on ``sys.path`` and helpers import by full name, e.g.
``from tests._tiny import tiny_llama, tiny_tokenizer`` (see ``tests/_tiny.py``).
"""

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + tokenizer saved as a local Hugging Face folder."""
    from tests._tiny import tiny_llama, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path

