import dataclasses

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.experiments.lm_common import (
    LAST,
    LMParams,
    lm_task,
    spread_by_D,
    train_lm,
)
from prefdyn.experiments.configure import resolve_config
from prefdyn.experiments.lm_distinguishability import base_D
from prefdyn.experiments.registry import get_spec
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded

TINY = LMParams(eval_rows=4, probe_rows=6, snapshot_steps=(0, LAST))
TRAIN = TrainConfig(steps=4, batch_size=4, lr=1e-2, eval_every=2, optimizer="adamw")


def test_lm_params_and_quick_preset():
    with pytest.raises(PrefdynError, match="mode"):
        LMParams(mode="half")
    cfg = resolve_config(get_spec("lm distinguishability"), flags={"train": {"steps": 7}})
    assert cfg.train.steps == 7  # a flag beats the preset
    assert cfg.preset == "quick" and cfg.train.lr == 5e-5 and cfg.train.optimizer == "adamw"
    assert cfg.task.n_per_behavior == 60 and cfg.experiment == LMParams(n_behaviors=3, snapshot_steps=())


def test_task_rows_groups_and_eval_batches(tiny_workspace):
    ws = tiny_workspace
    task = lm_task(ws, tiny_loaded(), [2, 0])
    assert task.group_names == [ws.names[2], ws.names[0]]
    assert (task.yes_id, task.no_id) == tuple(ws.answer_ids)
    rows = task.split_rows("train", limit=6)
    for g in range(2):
        mine = rows[task.row_groups[rows] == g]
        assert len(mine) == 6
        labels = task.data.prefers_yes[mine]
        assert labels.any() and (~labels).any()  # both classes kept
    batches = task.eval_batches("train", limit=6, batch_size=5)
    seen = torch.cat([b.rows for b in batches])
    assert sorted(seen.tolist()) == rows.tolist()  # every row exactly once
    flipped = lm_task(ws, tiny_loaded(), [2, 0], flip=True)
    assert torch.equal(flipped.data.prefers_yes, ~task.data.prefers_yes)
    probe = task.probe("test")
    assert len(probe) == len(task.data.test_idx)


def test_spread_by_D_is_ordered_and_distinct(tiny_workspace):
    ws = tiny_workspace
    picks = spread_by_D(ws, 3)
    D = [base_D(ws, i) for i in picks]
    assert len(set(picks)) == 3 and D == sorted(D)
    all_D = sorted(base_D(ws, i) for i in range(len(ws.names)))
    assert D[0] == all_D[0] and D[-1] == all_D[-1]  # spans the range
    assert sorted(spread_by_D(ws, 99)) == list(range(len(ws.names)))


def test_train_lm_keeps_the_base_and_records_everything(tiny_workspace):
    ws = tiny_workspace
    loaded = tiny_loaded()
    base = [p.clone() for p in loaded.model.parameters()]
    task = lm_task(ws, loaded, [0, 1], name="pair")
    tr = train_lm(loaded, task, TRAIN, TINY, name="pair")
    assert all(torch.equal(a, b) for a, b in zip(base, loaded.model.parameters()))
    trained = list(tr.run.policy.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(base, trained))
    steps, loss = tr.history.curves("loss", split="test", by="group")
    assert steps.tolist() == [0, 2, 4] and set(loss) == set(task.group_names)
    assert sorted(tr.snapshots.snapshots) == [0, 4]
    # The step-0 snapshot is the base model's g(x): its D matches the workspace's embeddings.
    probe_rows = task.split_rows("all", TINY.probe_rows)
    emb = torch.cat([ws.embeddings[0], ws.embeddings[1]])[probe_rows]
    for g, name in enumerate(task.group_names):
        sel = task.row_groups[probe_rows] == g
        from prefdyn.diagnostics.distinguishability import behavior_stats
        D0 = behavior_stats(emb[sel], task.data.prefers_yes[probe_rows][sel]).D
        assert tr.snapshots.stats(0)[name]["D"] == pytest.approx(D0, rel=1e-3)
    lora = dataclasses.replace(TINY, mode="lora", snapshot_steps=())
    tr_lora = train_lm(loaded, task, TRAIN, lora, name="pair")
    assert tr_lora.snapshots is None and tr_lora.run.policy.lora
