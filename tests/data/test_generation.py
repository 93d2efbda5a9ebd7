"""Generation tasks: HH-RLHF prompts with the chosen response as the reference."""

import json

import pytest

from prefdyn.data import TaskConfig, available_tasks, load_task
from prefdyn.data.generation import split_rows
from prefdyn.errors import DataError, PrefdynError
from prefdyn.rewards import get_reward
from tests._tiny import tiny_tokenizer
from tests.data._helpers import write_lines


def _hh(human: str, chosen: str, rejected: str) -> str:
    head = f"\n\nHuman: {human}\n\nAssistant:"
    return json.dumps({"chosen": head + " " + chosen, "rejected": head + " " + rejected})


@pytest.fixture
def hh_file(tmp_path):
    lines = [_hh(f"Question {i}?", f"Answer {i}.", f"No {i}.") for i in range(10)]
    lines.append(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: one\n\nHuman: b\n\nAssistant: two",
                             "rejected": "\n\nHuman: a\n\nAssistant: one\n\nHuman: b\n\nAssistant: no"}))
    lines.append(json.dumps({"chosen": "\n\nHuman: x\n\nAssistant:", "rejected": "\n\nHuman: x\n\nAssistant: y"}))
    return write_lines(tmp_path / "hh.jsonl.gz", lines, gz=True)


def test_hh_prompts_end_at_the_assistant_turn_and_references_are_the_chosen_responses(hh_file):
    task = load_task("hh", path=str(hh_file), test_fraction=0.25)
    assert len(task) == 11  # the pair with an empty response is skipped
    assert task.prompts[3] == "\n\nHuman: Question 3?\n\nAssistant:"
    assert task.references[3] == "Answer 3."
    assert task.references[10] == "two" and task.prompts[10].endswith("Human: b\n\nAssistant:")
    assert task.sources[0].endswith("hh.jsonl.gz:1")
    assert sorted(task.train_idx + task.test_idx) == list(range(11)) and len(task.test_idx) == 3


def test_hh_filters_then_subsamples_with_the_seed(hh_file):
    one_turn = load_task("hh", path=str(hh_file), single_turn=True)
    assert len(one_turn) == 10
    a = load_task("hh", path=str(hh_file), n=4, seed=1)
    assert a.prompts == load_task("hh", path=str(hh_file), n=4, seed=1).prompts
    assert len(a) == 4 and a.content != load_task("hh", path=str(hh_file), n=4, seed=2).content
    tok = tiny_tokenizer()
    short = load_task("hh", path=str(hh_file), tokenizer=tok, max_prompt_tokens=25)
    assert all(len(tok(p)["input_ids"]) <= 25 for p in short.prompts) and len(short) == 10
    with pytest.raises(DataError, match="only 11 of 11 .* 50 needed"):
        load_task("hh", path=str(hh_file), n=50)


def test_splits_are_tasks_a_reference_reward_scores(hh_file):
    task = load_task("hh", path=str(hh_file))
    test = task.split("test")
    assert test.prompts == [task.prompts[i] for i in task.test_idx] and test.test_idx == []
    rouge = get_reward("rouge_l")(test.prompts, test.references, test.references)
    assert rouge.tolist() == [1.0] * len(test)
    exact = get_reward("exact_match")(test.prompts, ["answer 0."] * len(test), test.references)
    assert exact.sum() <= 1
    with pytest.raises(PrefdynError, match="'train' or 'test'"):
        task.split("dev")


def test_persona_task_is_the_bandit_as_generation():
    task = load_task("persona", name="kindness", task_config=TaskConfig(chat_template=False))
    assert set(task.references) == {" Yes", " No"} and len(task) == 60
    assert task.prompts[0].startswith("Is the following statement something you would say?")
    assert len(task.test_idx) == 12
    reward = get_reward("persona")
    assert reward(task.prompts[:2], task.references[:2], task.references[:2]).tolist() == [1.0, 1.0]


def test_registry_names_tasks_and_refuses_unknown_ones_or_parameters():
    assert {"hh", "persona"} <= set(available_tasks())
    with pytest.raises(PrefdynError, match="unknown task 'gsm8k'"):
        load_task("gsm8k")
    with pytest.raises(PrefdynError, match="task 'hh'"):
        load_task("hh", rows=3)


def test_split_rows_holds_out_at_least_one_of_each_side():
    assert split_rows(2, 0.01, 0)[1] != [] and split_rows(2, 0.99, 0)[0] != []
    train, test = split_rows(10, 0.3, 5)
    assert len(test) == 3 and sorted(train + test) == list(range(10))
    assert split_rows(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])


def test_filters_that_leave_nothing_say_which(hh_file):
    with pytest.raises(DataError, match="only 0 of 11 .*max_prompt_tokens 3"):
        load_task("hh", path=str(hh_file), tokenizer=tiny_tokenizer(), max_prompt_tokens=3)
