"""DPODynamicsCallback in a few real TRL DPOTrainer steps on a tiny random Llama."""

import copy
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from prefdyn.errors import DataError, PrefdynError
from prefdyn.integrations.trl import DPODynamicsCallback
from prefdyn.integrations.trl._probe import probe_indices, resolve_concepts, truncate
from prefdyn.losses import get_loss
from prefdyn.policies.lm import LMPolicy, apply_lora
from prefdyn.tracking import History, read_concepts, read_metrics, read_pair_logps
from prefdyn.tracking.lm_metrics import LMEvalTracker
from tests._tiny import tiny_llama, tiny_tokenizer

N = 8


def _data() -> Dataset:
    return Dataset.from_list([{"prompt": f"Q{i}: is it kind?", "chosen": " Yes" * (1 + i % 2),
                               "rejected": " No", "category": "ab"[i % 2]} for i in range(N)])


def _trainer(tmp_path, model, ref_model, steps: int) -> DPOTrainer:
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=steps,
                     learning_rate=1e-2, lr_scheduler_type="constant", beta=0.5, report_to="none",
                     use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=_data(),
                      processing_class=tiny_tokenizer())


def _diagnosis(path, assignment, names):
    """A diagnosis.json written by hand, following notes/diagnosis_schema.md."""
    path.write_text(json.dumps({
        "schema": "prefdyn.diagnosis/1",
        "data": {"source": "toy", "format": "trl", "n_pairs": len(assignment), "fingerprint": "x"},
        "model": "tiny",
        "concepts": {"source": "column:category", "k": len(names), "assignment": assignment,
                     "items": [{"name": n, "n": assignment.count(i), "distinguishability": 1.0,
                                "priority": 1.0, "predicted_rank": i + 1, "starved": False}
                               for i, n in enumerate(names)]},
        "pairs": {"ches": [None] * len(assignment), "ches_norm": [None] * len(assignment),
                  "risk_threshold": 0.0, "risky": [0]},
        "problems": [], "recommendations": []}))
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    model = tiny_llama().train()
    trainer = _trainer(tmp, model, copy.deepcopy(model), steps=3)
    diagnosis = _diagnosis(tmp / "diagnosis.json", [i % 2 for i in range(N)], ["odd_len", "even_len"])
    callback = DPODynamicsCallback(trainer, tmp / "run", concepts=str(diagnosis), probe=6, every=2)
    trainer.add_callback(callback)
    trainer.train()
    return trainer, callback, tmp / "run"


def test_concepts_from_a_column_a_list_or_a_diagnosis(tmp_path):
    data = _data()
    assignment, names = resolve_concepts("category", data)
    assert names == ["a", "b"] and assignment.tolist() == [0, 1] * 4
    assert resolve_concepts([1, 0] * 4, data)[1] == ["concept_0", "concept_1"]
    assert resolve_concepts(None, data)[1] == ["all"]
    with pytest.raises(DataError, match="neither a column"):
        resolve_concepts("topic", data)
    diagnosis = str(_diagnosis(tmp_path / "d.json", [0, 1, 0], ["x", "y"]))
    with pytest.raises(DataError, match="3 concept assignments for 8 pairs"):
        resolve_concepts(diagnosis, data)
    # a subset of a diagnosed data set: each row names its pair
    subset = data.select(range(2)).add_column("pair", [2, 1])
    assert resolve_concepts(diagnosis, subset, pair_index=[2, 1])[0].tolist() == [0, 1]
    with pytest.raises(DataError, match="pair index 5"):
        resolve_concepts(diagnosis, subset, pair_index=[5, 1])
    # round-robin over the concepts: concept 0 has rows 0 and 3, concept 1 rows 1, 2, 4
    assert probe_indices(3, torch.tensor([0, 1, 1, 0, 1])) == [0, 1, 3]
    assert probe_indices([4, 2], torch.tensor([0, 1, 1, 0, 1])) == [2, 4]


def test_probe_sequences_are_cut_as_trl_cuts_them():
    ids = [1, 2, 3, 4, 5]  # prompt 1, 2; response 3, 4, 5
    assert truncate(ids, 2, None, "keep_start") == (ids, 2)
    assert truncate(ids, 2, 4, "keep_start") == ([1, 2, 3, 4], 2)
    assert truncate(ids, 2, 4, "keep_end") == ([2, 3, 4, 5], 1)
    assert truncate(ids, 2, 2, "keep_end") == ([4, 5], 0)
    with pytest.raises(DataError, match="truncation_mode"):
        truncate(ids, 2, 4, "middle")


def test_callback_logs_through_the_trainer_and_keeps_its_own_logs(full_run):
    trainer, _, _ = full_run
    history = trainer.state.log_history
    ours = [r for r in history if "prefdyn/loss" in r]
    assert [r["step"] for r in ours] == [0, 2, 3]  # first, every 2, last
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3]  # TRL's own logging_steps=1 kept
    first, last = ours[0], ours[-1]
    assert first["prefdyn/loss"] == pytest.approx(math.log(2))  # pi == pi_ref at step 0
    assert first["prefdyn/delta_W_U"] == 0.0 and first["prefdyn/chosen_fell"] == 0.0
    assert last["prefdyn/delta_W_U"] > 0 and last["prefdyn/drift/layer_00"] > 0
    assert last["prefdyn/concept/odd_len/loss"] < math.log(2)
    assert "prefdyn/distinguishability/D" in first and "prefdyn/distinguishability/D" in last
    assert "prefdyn/distinguishability/D" not in ours[1]  # only first and last by default


def test_callback_numbers_equal_prefdyns_own_tracker_on_the_trained_model(full_run):
    """The last concepts.jsonl line is what prefdyn's LMEvalTracker measures on the same
    probe pairs, tokenized by TRL, with the trainer's model and reference."""
    trainer, callback, run = full_run
    steps, curves = read_concepts(run)
    assert steps.tolist() == [0, 2, 3]
    tracker = LMEvalTracker(get_loss("dpo", beta=0.5), {"probe": callback.batches}, history=History(),
                            every=1, row_groups=torch.tensor([i % 2 for i in range(N)]),
                            group_names=["odd_len", "even_len"])
    tracker.record(3, LMPolicy(trainer.model, reference_model=trainer.ref_model))
    _, own = tracker.history.curves("loss", split="probe", by="group")
    for name in ("odd_len", "even_len"):
        assert curves[name]["loss"][-1] == pytest.approx(own[name][0], rel=1e-5)
    pairs = read_pair_logps(run)
    assert pairs["indices"].tolist() == [0, 1, 2, 3, 4, 5]
    assert (pairs["chosen_end"] > pairs["chosen_start"]).all()  # DPO pushed y+ up on this toy set
    records = read_metrics(run / "metrics.jsonl")
    model_records = [r for r in records if r["split"] == "probe_model"]
    assert len(model_records) == 3 and len(model_records[-1]["top_gain_tokens"]) == 10
    assert json.loads((run / "summary.json").read_text())["step"] == 3


def test_compare_reads_the_trl_run_folder(full_run):
    from prefdyn.experiments.compare import compare_run

    _, _, run = full_run
    cmp = compare_run(run.parent / "diagnosis.json", run)
    assert {r["name"]: r["n_probe"] for r in cmp.concepts} == {"odd_len": 3, "even_len": 3}
    assert cmp.risk["n_probe"] == 6 and cmp.risk["n_fell"] == 0  # no chosen log-prob fell here
    assert cmp.risk["n_hits"] == 0 and cmp.risk["precision"] == 0.0
    from prefdyn.experiments.compare import _probe_curves

    steps, curves = _probe_curves(run)  # the run's chosen_fell curve, for the report
    assert steps.tolist() == [0, 2, 3] and curves["all probe pairs"].tolist() == [0.0, 0.0, 0.0]


def test_lora_run_measures_against_disabled_adapters(tmp_path):
    model = apply_lora(tiny_llama().train(), seed=0)
    trainer = _trainer(tmp_path, model, None, steps=2)
    callback = DPODynamicsCallback(trainer, tmp_path / "run", concepts="category", probe=4, every=1,
                                   distinguishability_every=0)
    trainer.add_callback(callback)
    trainer.train()
    ours = [r for r in trainer.state.log_history if "prefdyn/loss" in r]
    assert [r["step"] for r in ours] == [0, 1, 2]
    assert ours[0]["prefdyn/margin"] == 0.0 and ours[-1]["prefdyn/margin"] != 0.0
    assert ours[-1]["prefdyn/delta_W_U"] == 0.0  # LoRA leaves W_U alone
    assert ours[-1]["prefdyn/drift/layer_00"] > 0
    assert not any(k.startswith("prefdyn/distinguishability") for r in ours for k in r)
    assert np.isfinite(read_concepts(tmp_path / "run")[1]["a"]["margin"]).all()


def test_only_the_main_process_measures_and_writes(tmp_path):
    model = tiny_llama().train()
    trainer = _trainer(tmp_path, model, copy.deepcopy(model), steps=1)
    trainer.is_world_process_zero = lambda: False  # what another rank sees
    trainer.add_callback(DPODynamicsCallback(trainer, tmp_path / "run"))
    trainer.train()
    assert not (tmp_path / "run").exists()
    assert not any(k.startswith("prefdyn/") for r in trainer.state.log_history for k in r)


def test_unknown_loss_type_is_a_clear_error(tmp_path):
    model = tiny_llama().train()
    trainer = _trainer(tmp_path, model, copy.deepcopy(model), steps=1)
    trainer.args.loss_type = ["hinge"]
    with pytest.raises(PrefdynError, match="loss_type"):
        DPODynamicsCallback(trainer, tmp_path / "run")
