import pytest

from prefdyn.tracking.history import History
from prefdyn.tracking.tensorboard import Tee, TensorBoardSink


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sink_writes_numeric_fields_as_scalars(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    memory = []

    class Mem:
        def log(self, record):
            memory.append(record)

    history = History(Tee(sink, None, Mem()))
    history.add({"step": 1, "split": "train", "problem": "lm", "group": None, "loss": 0.5,
                 "drift/layer_00": 0.25, "note": "text", "flag": True, "bad": float("nan")})
    history.add({"step": 2, "split": "test", "problem": "lm", "group": "kindness", "loss": 0.25})
    sink.close()
    assert len(memory) == 2
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    scalars = _scalars(tmp_path / "tb")
    assert scalars == {"train/lm/loss": [(1, 0.5)], "train/lm/drift/layer_00": [(1, 0.25)],
                       "test/lm/kindness/loss": [(2, 0.25)]}


def test_fit_lm_mirrors_its_history_to_tensorboard(tmp_path, monkeypatch):
    from prefdyn.models import answer_token_ids
    from prefdyn.training import TrainConfig
    from prefdyn.training.lm_data import answer_batches
    from prefdyn.training.lm_runner import fit_lm
    from tests._tiny import tiny_loaded
    from tests.policies.test_lm import _behavior

    monkeypatch.setenv("PREFDYN_CACHE", str(tmp_path / "cache"))
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    stream = answer_batches(_behavior(tok), tok, yes_id, no_id, batch_size=2, seed=0)
    run = fit_lm(loaded, stream, TrainConfig(optimizer="adamw", lr=1e-3), mode="lora", steps=3,
                 tensorboard_dir=tmp_path / "tb")
    losses = _scalars(tmp_path / "tb")["train/lm/loss"]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert [v for _, v in losses] == pytest.approx([r["loss"] for r in run.history.records], rel=1e-6)
