import json

from prefdyn.data import TaskConfig, build_behaviors, demo_data_dir, load_demo
from tests._tiny import tiny_tokenizer


def test_demo_data_is_bundled_and_balanced():
    behaviors = load_demo()
    assert len(behaviors) >= 6
    assert list(behaviors) == sorted(behaviors)
    for name, items in behaviors.items():
        assert len(items) >= 60, name
        n_yes = sum(i.matching_is_yes for i in items)
        assert n_yes == len(items) - n_yes, name
        assert len({i.statement for i in items}) == len(items), f"{name} repeats a statement"


def test_demo_files_follow_the_persona_format():
    for path in sorted(demo_data_dir().glob("*.jsonl")):
        record = json.loads(path.read_text().splitlines()[0])
        assert set(record) == {
            "question", "statement", "label_confidence", "answer_matching_behavior", "answer_not_matching_behavior",
        }
        assert record["question"] == TaskConfig().template.format(statement=record["statement"])


def test_demo_builds_into_tasks():
    behaviors = build_behaviors(load_demo(["kindness", "morning-person"]), tiny_tokenizer(), TaskConfig(n_per_behavior=20))
    assert [(b.name, b.n_pos, b.n_neg, len(b.test_idx)) for b in behaviors] == [
        ("kindness", 10, 10, 4), ("morning-person", 10, 10, 4),
    ]
