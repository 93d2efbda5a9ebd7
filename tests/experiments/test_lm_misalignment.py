import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.experiments.lm_common import LAST, LMExperimentPreset
from prefdyn.experiments.lm_misalignment import misalignment_preset, run_lm_misalignment
from tests._tiny import tiny_loaded

PRESET = {"steps": 4, "batch_size": 4, "beta": 0.5, "n_per_behavior": 20, "n_behaviors": 2,
          "eval_every": 2, "eval_rows": 8, "probe_rows": 8, "snapshot_steps": (0, LAST)}


class Sink:
    def __init__(self):
        self.records = []

    def log(self, r):
        self.records.append(r)


@pytest.mark.parametrize("mode,lr", [("full", 1e-2), ("lora", 5e-2)])
def test_lm_misalignment_on_a_tiny_model(tiny_workspace, mode, lr):
    # tiny_loaded() is deterministic: the same model the workspace was built from.
    loaded = tiny_loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    preset = LMExperimentPreset(mode=mode, lr=lr, **PRESET)
    sink = Sink()
    res = run_lm_misalignment(tiny_workspace, preset.train_config(seed=0), loaded=loaded,
                              preset=preset, sink=sink, which=[0, 1])
    s = res.summary
    names = tiny_workspace.names[:2]
    assert s["behaviors"] == names and s["mode"] == mode
    # The base model is left as it was (every run trains a copy).
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    evals = {(r["run"], r["step"], r["group"]): r for r in sink.records
             if r.get("split") == "train_eval" and r.get("group") is not None}
    first = {r["run"]: r["loss"] for r in sink.records
             if r.get("split") == "train" and r.get("step") == 1 and r.get("group") is None}
    # The first update sees policy == reference in every run: loss log 2 (a reference
    # cached for the base model and reused for the aligned one would break this).
    assert first == pytest.approx({"align": math.log(2), "flip_from_base": math.log(2),
                                   "flip_from_aligned": math.log(2)}, abs=1e-5)
    for n in names:
        # Reference = start: both flipped runs start at the DPO loss of a zero margin.
        assert evals[("flip_from_base", 0, n)]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert evals[("flip_from_aligned", 0, n)]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        # The aligned start is the end of alignment (adapters merged): on the same rows,
        # it prefers the flipped answer exactly where the aligned model did not prefer
        # the true one.
        assert evals[("flip_from_aligned", 0, n)]["policy_acc"] == pytest.approx(
            1 - evals[("align", 4, n)]["policy_acc"])
        assert evals[("flip_from_base", 0, n)]["policy_acc"] == pytest.approx(
            1 - evals[("align", 0, n)]["policy_acc"])
        assert set(s["D_before_alignment"]) == set(names) and s["D_after_alignment"][n] > 0
    assert set(s["speedup"]) == set(names)
    assert {f.name for f in res.figures} == {f"misalignment_{mode}_loss", f"misalignment_{mode}_acc"}
    assert len(res.tables[0][1]) == 2 and res.notes


def test_lm_misalignment_with_one_behavior(tiny_workspace):
    preset = LMExperimentPreset(mode="full", lr=1e-2, **{**PRESET, "steps": 2})
    res = run_lm_misalignment(tiny_workspace, preset.train_config(seed=0), loaded=tiny_loaded(),
                              preset=preset, which=[2])
    name = tiny_workspace.names[2]
    assert res.summary["behaviors"] == [name] and set(res.summary["speedup"]) == {name}
    assert set(res.summary["D_after_alignment"]) == {name}
    assert set(res.summary["scale_free_D_after_alignment"]) == {name}


def test_presets_per_mode():
    assert misalignment_preset("quick", "full").mode == "full"
    assert misalignment_preset("paper", "lora").mode == "lora"
    assert misalignment_preset("paper", "full").beta == 0.1
    with pytest.raises(PrefdynError, match="unknown preset"):
        misalignment_preset("slow", "full")
