"""Shared pytest set-up for all of ``tests/``.

``tests`` and its sub-folders are packages (``__init__.py``), so pytest puts
the repository root on ``sys.path`` and helpers import by full name, e.g.
``from tests._tiny import tiny_llama, tiny_tokenizer`` (see ``tests/_tiny.py``).
"""

import pytest

from tests._warnings import prefdyn_warnings


@pytest.fixture(autouse=True)
def _prefdyn_calls_do_not_warn():
    """A warning that prefdyn's own calls raise fails the test (rule: ``tests/_warnings.py``),
    so a deprecated transformers or torch API is replaced before an upgrade removes it."""
    with prefdyn_warnings() as found:
        yield
    if found:
        pytest.fail("prefdyn's calls raised warnings:\n" + "\n".join(dict.fromkeys(found)),
                    pytrace=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + tokenizer saved as a local Hugging Face folder."""
    from tests._tiny import tiny_llama, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path

