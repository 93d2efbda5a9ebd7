import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.experiments.configure import resolve_config
from prefdyn.experiments.lm_common import LAST, LMParams
from prefdyn.experiments.lm_misalignment import run_lm_misalignment
from prefdyn.experiments.registry import get_spec
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded

PRESET = {"n_behaviors": 2, "eval_rows": 8, "probe_rows": 8, "snapshot_steps": (0, LAST)}
TRAIN = {"steps": 4, "batch_size": 4, "beta": 0.5, "eval_every": 2, "optimizer": "adamw"}


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
    preset = LMParams(mode=mode, **PRESET)
    sink = Sink()
    res = run_lm_misalignment(tiny_workspace, TrainConfig(lr=lr, **TRAIN), loaded=loaded,
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
    preset = LMParams(mode="full", **PRESET)
    res = run_lm_misalignment(tiny_workspace, TrainConfig(lr=1e-2, **{**TRAIN, "steps": 2}), loaded=tiny_loaded(),
                              preset=preset, which=[2])
    name = tiny_workspace.names[2]
    assert res.summary["behaviors"] == [name] and set(res.summary["speedup"]) == {name}
    assert set(res.summary["D_after_alignment"]) == {name}
    assert set(res.summary["scale_free_D_after_alignment"]) == {name}


def test_presets_per_mode():
    spec = get_spec("lm misalignment")
    full = resolve_config(spec, preset="quick")
    assert full.experiment.mode == "full" and full.train.lr == 5e-5
    lora = resolve_config(spec, preset="quick", flags={"experiment": {"mode": "lora"}})
    assert lora.experiment.mode == "lora" and lora.train.lr == 5e-4  # the preset's by_mode.lora
    # an explicit --lr on a LoRA run is kept, even when it equals the full preset's value
    explicit = resolve_config(spec, preset="quick", flags={"train": {"lr": 5e-5}, "experiment": {"mode": "lora"}})
    assert explicit.train.lr == 5e-5
    assert resolve_config(spec, preset="paper").train.beta == 0.01  # Im & Li Sec. 5
    with pytest.raises(PrefdynError, match="unknown preset"):
        resolve_config(spec, preset="slow")


def test_per_behavior_runs_one_behavior_per_run(tiny_workspace):
    """Sec. 5.3: "we fine-tune the model using the flipped preference labels, for each behavior"."""
    from prefdyn.experiments.lm_misalignment import LMMisalignmentParams

    sink = Sink()
    preset = LMMisalignmentParams(mode="full", per_behavior=True, **PRESET)
    res = run_lm_misalignment(tiny_workspace, TrainConfig(lr=1e-2, **{**TRAIN, "steps": 2}), loaded=tiny_loaded(),
                              preset=preset, sink=sink, which=[0, 1])
    names = tiny_workspace.names[:2]
    runs = {f"{phase}_{n}": n for n in names for phase in ("align", "flip_from_base", "flip_from_aligned")}
    # six runs (align, flip from base, flip from aligned per behavior), each sees only its behavior
    assert {r["run"] for r in sink.records} == set(runs)
    assert all(r["group"] == runs[r["run"]] for r in sink.records if r.get("group") is not None)
    s = res.summary
    assert s["per_behavior"] is True and set(s["speedup"]) == set(names)
    assert set(s["D_after_alignment"]) == set(names) and "align_" + names[1] in s["seconds"]


def test_paper_and_quick_presets_misalign_each_behavior_alone():
    for preset in ("quick", "paper", "mistral"):
        assert resolve_config(get_spec("lm misalignment"), preset=preset).experiment.per_behavior is True
