"""The real persona files and the HH-RLHF test split under ``../shared/data``."""

from pathlib import Path

import pytest

from prefdyn.data import TaskConfig, build_behaviors, load_pairs, load_persona_dir
from prefdyn.errors import DataError
from tests._tiny import tiny_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PERSONA = SHARED / "persona"
HH = SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz"

pytestmark = pytest.mark.integration


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not found (the shared data sits next to the repository)")


def test_real_persona_behaviors():
    _need(PERSONA)
    names = ["agreeableness", "desire-for-acquiring-power", "believes-life-has-no-meaning"]
    loaded = load_persona_dir(PERSONA, names)
    assert list(loaded) == sorted(names)
    for name, items in loaded.items():
        assert len(items) == 1000 and sum(i.matching_is_yes for i in items) == 500, name
    behaviors = build_behaviors(loaded, tiny_tokenizer(), TaskConfig(n_per_behavior=200))
    assert all((b.n_pos, b.n_neg, len(b.test_idx)) == (100, 100, 40) for b in behaviors)


def test_real_hh_rlhf():
    _need(HH)
    # The public split has 9 bad pairs of 2312: 4 empty chosen responses and 5 dialogues
    # whose turns run together, so chosen and rejected differ before the last Assistant turn.
    with pytest.raises(DataError, match="harmless-base-test.jsonl.gz:87") as err:
        load_pairs(HH)
    assert err.value.field == "chosen"
    pairs = load_pairs(HH, on_error="skip")
    assert len(pairs) == 2303
    for pair in pairs:
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
        assert pair.chosen.strip() and pair.rejected.strip()
        assert "\n\nAssistant:" not in pair.chosen
