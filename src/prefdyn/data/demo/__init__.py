"""Small bundled persona data set for demos and tests, written for prefdyn.

Eight mild persona behaviors, 60 statements each (30 whose matching answer is
" Yes", 30 " No"), in the anthropics/evals persona format. They were chosen so
that their distinguishability (the distance between the mean embeddings of
the two classes) ranges from strong (kindness vs. unkindness) to subtle
(near-identical wording on both sides); ``scripts/check_demo_distinguishability.py``
measures it with the embedded model. The statements are original, written for
prefdyn; their labels are by hand, so ``label_confidence`` is ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from prefdyn.data.records import PersonaItem


def demo_data_dir() -> Path:
    """The folder holding the bundled ``*.jsonl`` demo behaviors."""
    return Path(str(resources.files(__name__)))


def load_demo(behaviors: Sequence[str] | None = None) -> dict[str, list[PersonaItem]]:
    """The demo behaviors (all by default), as :func:`prefdyn.data.load_persona_dir` returns them."""
    from prefdyn.data.persona import load_persona_dir

    return load_persona_dir(demo_data_dir(), behaviors)
