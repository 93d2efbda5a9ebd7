import pytest
import torch

from prefdyn.data import (
    BehaviorData,
    TaskConfig,
    build_behaviors,
    flip,
    load_persona_dir,
    mix_behaviors,
    render_prompt,
)
from prefdyn.data.records import PersonaItem
from prefdyn.errors import DataError, ModelError, PrefdynError
from tests._tiny import tiny_tokenizer

from ._helpers import write_persona

STATEMENT = "I like cats"
QUESTION = 'Is the following statement something you would say?\n"I like cats"'


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _items(name: str, n_yes: int, n_no: int) -> list[PersonaItem]:
    rows = [(f"{name} yes {i}", " Yes", " No") for i in range(n_yes)] + [(f"{name} no {i}", " No", " Yes") for i in range(n_no)]
    return [PersonaItem(name, s, m, nm, None, f"{name}.jsonl:{k + 1}") for k, (s, m, nm) in enumerate(rows)]


# --- TaskConfig -------------------------------------------------------------------------


def test_task_config_defaults_and_answers():
    cfg = TaskConfig()
    assert cfg.template.format(statement=STATEMENT) == QUESTION
    assert cfg.resolved_answers == ("Yes", "No")
    assert TaskConfig(chat_template=False).resolved_answers == (" Yes", " No")
    assert TaskConfig(answers=["A", "B"]).answers == ("A", "B")  # YAML lists become tuples


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "no placeholder"}, "must contain"),
        ({"template": "{statement} {other}"}, "placeholder other than"),
        ({"answers": ("Yes",)}, "two non-empty"),
        ({"answers": ("Yes", " ")}, "two non-empty"),
        ({"answers": ("Yes", "Yes")}, "must differ"),
        ({"n_per_behavior": 1}, "n_per_behavior"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": "0.2"}, "test_fraction"),
        ({"n_per_behavior": 10.0}, "n_per_behavior"),
        ({"flip_labels": "yes"}, "flip_labels"),
        ({"seed": None}, "seed"),
        ({"system_prompt": 3}, "system_prompt"),
    ],
)
def test_task_config_rejects_bad_values(kwargs, message):
    with pytest.raises(PrefdynError, match=message):
        TaskConfig(**kwargs)


def test_template_with_escaped_braces():
    cfg = TaskConfig(template='{{json}} "{statement}"', chat_template=False)
    assert render_prompt("x", None, cfg) == '{json} "x"'


# --- render_prompt ----------------------------------------------------------------------


def test_render_prompt_chat_template(tok):
    assert render_prompt(STATEMENT, tok, TaskConfig()) == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    with_system = render_prompt(STATEMENT, tok, TaskConfig(system_prompt="Be brief."))
    assert with_system == f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def test_render_prompt_raw_and_missing_chat_template(tok):
    assert render_prompt(STATEMENT, None, TaskConfig(chat_template=False)) == QUESTION
    with pytest.raises(ModelError, match="chat template"):
        render_prompt(STATEMENT, None, TaskConfig())


# --- build_behaviors --------------------------------------------------------------------


def test_build_labels_prompts_and_split(tok):
    (b,) = build_behaviors({"cats": _items("cats", 10, 10)}, tok, TaskConfig(test_fraction=0.2))
    assert b.name == "cats" and b.n == 20 and b.n_pos == 10 and b.n_neg == 10
    assert b.prefers_yes.dtype == torch.bool and b.prefers_yes[:10].all() and not b.prefers_yes[10:].any()
    assert b.prompts[0] == render_prompt("cats yes 0", tok, TaskConfig())
    assert b.sources[3] == "cats.jsonl:4" and b.answers == ("Yes", "No")
    assert b.group_names == ["cats"] and b.groups.tolist() == [0] * 20
    # Stratified: 2 of each class in test; train and test partition the rows.
    assert b.prefers_yes[b.test_idx].sum() == 2 and len(b.test_idx) == 4
    assert sorted(b.train_idx.tolist() + b.test_idx.tolist()) == list(range(20))


def test_split_keeps_each_class_on_both_sides(tok):
    (b,) = build_behaviors({"x": _items("x", 3, 2)}, tok, TaskConfig(test_fraction=0.1))
    assert b.prefers_yes[b.test_idx].sum() == 1 and (~b.prefers_yes[b.test_idx]).sum() == 1
    (b,) = build_behaviors({"x": _items("x", 3, 2)}, tok, TaskConfig(test_fraction=0.0))
    assert b.test_idx.numel() == 0 and b.train_idx.tolist() == list(range(5))


def test_balanced_seeded_subsample(tok):
    items = {"a": _items("a", 30, 50), "b": _items("b", 40, 40)}
    cfg = TaskConfig(n_per_behavior=10, seed=3)
    a, b = build_behaviors(items, tok, cfg)
    assert (a.n, a.n_pos, a.n_neg) == (10, 5, 5)
    assert a.sources == sorted(a.sources, key=lambda s: int(s.rsplit(":", 1)[1]))  # file order kept
    again = build_behaviors(items, tok, cfg)
    assert [x.statements for x in again] == [a.statements, b.statements]
    assert torch.equal(again[0].test_idx, a.test_idx)
    other_seed = build_behaviors(items, tok, TaskConfig(n_per_behavior=10, seed=4))
    assert other_seed[0].statements != a.statements
    # Each behavior draws from its own generator: dropping or adding another changes nothing.
    (b_alone,) = build_behaviors({"b": items["b"]}, tok, cfg)
    assert b_alone.statements == b.statements and torch.equal(b_alone.train_idx, b.train_idx)
    with_more = build_behaviors({"c": _items("c", 9, 9), **items}, tok, cfg)
    assert with_more[1].statements == a.statements


def test_odd_subsample_and_too_few(tok):
    (b,) = build_behaviors({"a": _items("a", 5, 5)}, tok, TaskConfig(n_per_behavior=5))
    assert (b.n_pos, b.n_neg) == (3, 2)
    with pytest.raises(DataError, match="only 4 available"):
        build_behaviors({"a": _items("a", 20, 4)}, tok, TaskConfig(n_per_behavior=10))


def test_flip_labels_keeps_rows(tok):
    items = {"a": _items("a", 12, 20)}
    plain = build_behaviors(items, tok, TaskConfig(n_per_behavior=9))[0]
    flipped = build_behaviors(items, tok, TaskConfig(n_per_behavior=9, flip_labels=True))[0]
    assert flipped.statements == plain.statements and torch.equal(flipped.test_idx, plain.test_idx)
    assert torch.equal(flipped.prefers_yes, ~plain.prefers_yes)
    assert flipped.chosen_answers() == plain.rejected_answers()


def test_single_class_or_empty_behavior_is_an_error(tok):
    with pytest.raises(DataError, match="both classes"):
        build_behaviors({"a": _items("a", 4, 0)}, tok)
    with pytest.raises(DataError, match="no statements"):
        build_behaviors({"a": []}, tok)


def test_build_from_files(tmp_path, tok):
    write_persona(tmp_path / "b.jsonl", 3, 3)
    write_persona(tmp_path / "a.jsonl", 2, 4)
    behaviors = build_behaviors(load_persona_dir(tmp_path), tok, TaskConfig(chat_template=False))
    assert [b.name for b in behaviors] == ["a", "b"]
    assert behaviors[0].prompts[0] == 'Is the following statement something you would say?\n"s yes 0"'
    assert behaviors[0].answers == (" Yes", " No")


# --- flip, subset, mix, to_pairs --------------------------------------------------------


def _behavior(tok, name="a", n_yes=4, n_no=4, **cfg) -> BehaviorData:
    return build_behaviors({name: _items(name, n_yes, n_no)}, tok, TaskConfig(**cfg))[0]


def test_flip(tok):
    b = _behavior(tok)
    f = flip(b)
    assert torch.equal(f.prefers_yes, ~b.prefers_yes) and f.statements == b.statements
    assert torch.equal(flip(f).prefers_yes, b.prefers_yes)
    assert b.prefers_yes[:4].all()  # the original is untouched


def test_subset_carries_split(tok):
    b = _behavior(tok, test_fraction=0.25)
    test_row = int(b.test_idx[0])
    train_row = int(b.train_idx[0])
    s = b.subset([test_row, train_row])
    assert s.statements == [b.statements[test_row], b.statements[train_row]]
    assert s.test_idx.tolist() == [0] and s.train_idx.tolist() == [1]
    assert s.prefers_yes.tolist() == [bool(b.prefers_yes[test_row]), bool(b.prefers_yes[train_row])]


def test_mix_behaviors(tok):
    a, b = _behavior(tok, "a", 2, 2), _behavior(tok, "b", 3, 3)
    m = mix_behaviors([a, flip(b)])
    assert m.name == "mixture" and m.n == 10 and m.group_names == ["a", "b"]
    assert m.groups.tolist() == [0] * 4 + [1] * 6
    assert m.statements == a.statements + b.statements
    assert torch.equal(m.prefers_yes, torch.cat([a.prefers_yes, ~b.prefers_yes]))
    assert m.test_idx.tolist() == a.test_idx.tolist() + (b.test_idx + 4).tolist()
    assert m.train_idx.tolist() == a.train_idx.tolist() + (b.train_idx + 4).tolist()
    nested = mix_behaviors([m, _behavior(tok, "c", 1, 1)], name="all")
    assert nested.group_names == ["a", "b", "c"] and nested.groups.tolist()[-2:] == [2, 2]
    assert m.subset(torch.tensor([5, 0])).groups.tolist() == [1, 0]


def test_mix_rejects_different_answers_and_empty(tok):
    with pytest.raises(PrefdynError, match="different answers"):
        mix_behaviors([_behavior(tok), _behavior(tok, chat_template=False)])
    with pytest.raises(PrefdynError, match="at least one"):
        mix_behaviors([])


def test_to_pairs(tok):
    m = mix_behaviors([_behavior(tok, "a", 1, 1), _behavior(tok, "b", 1, 1)])
    pairs = m.to_pairs()
    assert [(p.chosen, p.rejected, p.group) for p in pairs] == [
        ("Yes", "No", "a"), ("No", "Yes", "a"), ("Yes", "No", "b"), ("No", "Yes", "b"),
    ]
    assert pairs[0].prompt == m.prompts[0] and pairs[3].source == "b.jsonl:2"
    assert [p.group for p in m.to_pairs(torch.tensor([2]))] == ["b"]
