"""Shared pytest set-up for all of ``tests/``.

``tests`` and its sub-folders are packages (``__init__.py``), so pytest puts
the repository root on ``sys.path`` and helpers import by full name, e.g.
``from tests._tiny import tiny_llama, tiny_tokenizer`` (see ``tests/_tiny.py``).
"""
