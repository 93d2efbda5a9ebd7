"""The paper presets against Im & Li's stated numbers, the quick presets' one-epoch bound, the
not-the-paper's-setting warning and one p-value per quantity in lm distinguishability."""

import math

import pytest
import yaml

from prefdyn.errors import DataError
from prefdyn.experiments.config import DataConfig
from prefdyn.experiments.configure import preset_path, resolve_config
from prefdyn.experiments.lm_common import LMParams
from prefdyn.experiments.lm_distinguishability import run_lm_distinguishability
from prefdyn.experiments.paper_setting import paper_setting_warnings
from prefdyn.experiments.registry import get_spec
from prefdyn.experiments.workspace import load_items
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded

PERSONA = ["lm distinguishability", "lm priority", "lm distribution", "lm misalignment"]
FIG6 = ["subscribes-to-average-utilitarianism",
        "okay-with-building-an-AI-with-different-goals-to-accomplish-its-task",
        "optionality-increasing", "desire-to-not-have-memory-erased", "subscribes-to-Buddhism"]
BEHAVIORS = {
    "lm distinguishability": FIG6,  # Fig. 6, least to most distinguishable
    "lm distribution": FIG6,  # Fig. 8 + App. E Fig. 23-26
    "lm priority": ["acts-like-it-wants-to-help-humans-but-does-not-care-about-that", "risk-seeking",
                    "desire-to-influence-world", "subscribes-to-Islam"],  # Fig. 7 (a), (b)
    "lm misalignment": ["subscribes-to-average-utilitarianism", "subscribes-to-Buddhism"],  # Fig. 9
}


def paper(name, **flags):
    return resolve_config(get_spec(name), preset="paper", flags=flags or None)


@pytest.mark.parametrize("name", [*PERSONA, "lm hh-rlhf"])
def test_paper_preset_is_the_papers_optimisation(name):
    # Sec. 5 and App. C: "AdamW", "The learning rate is 1e-5, and β = 0.01", "1 epoch"
    t = paper(name).train
    assert (t.optimizer, t.lr, t.beta) == ("adamw", 1e-5, 0.01)


@pytest.mark.parametrize("name", PERSONA)
def test_persona_paper_presets_train_one_epoch_on_raw_prompts_of_the_named_behaviors(name):
    cfg = paper(name)
    assert cfg.train.epochs == 1 and cfg.experiment.mode == "full"
    assert cfg.task.chat_template is False and cfg.task.n_per_behavior == 1000
    assert cfg.data.behaviors == BEHAVIORS[name]
    text = preset_path(get_spec(name), "paper").read_text()
    assert "--data" in text and "persona" in text and "prefdyn's choice" in text


def test_hh_paper_preset_is_app_c():
    e = paper("lm hh-rlhf").experiment
    assert (e.mode, e.lora_r, e.lora_alpha, e.lora_dropout) == ("lora", 8, 32, 0.05)
    # 1 epoch per phase: ceil(3200 / 32) = 100 steps, the paper's "first 100 steps" window
    b = paper("lm hh-rlhf").train.batch_size
    assert e.align_steps == e.flip_steps == math.ceil(e.n_train / b) == e.window == 100


def test_hh_lora_settings_reach_fit_lm(monkeypatch):
    import prefdyn.experiments.hh_rlhf as hh

    seen = {}

    def fake_fit(loaded, batches, cfg, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(hh, "fit_lm", fake_fit)
    monkeypatch.setattr(hh, "pair_batches", lambda *a, **k: iter(()))
    monkeypatch.setattr(hh, "run_identity", lambda *a, **k: {})
    with pytest.raises(RuntimeError, match="stop"):
        hh.fit_with_probe(tiny_loaded(), [], {}, None, TrainConfig(), hh.HHPreset(lora_r=4, lora_alpha=16),
                          steps=1, mode="lora", sink=None, tag="t", seed=0)
    assert seen["lora_kwargs"] == {"r": 4, "alpha": 16, "dropout": 0.05}


def test_paper_behaviors_on_the_demo_data_fail_naming_the_files():
    with pytest.raises(DataError, match=r"subscribes-to-Buddhism.*--data"):
        load_items(DataConfig(behaviors=BEHAVIORS["lm misalignment"]))


@pytest.mark.parametrize("name", PERSONA)
def test_quick_presets_train_at_most_one_epoch_of_their_train_rows(name):
    cfg = resolve_config(get_spec(name), preset="quick")
    assert cfg.train.epochs == 1
    raw = yaml.safe_load(preset_path(get_spec(name), "quick").read_text())
    assert "steps" not in raw["train"]


def test_quick_hh_runs_one_epoch_per_phase():
    cfg = resolve_config(get_spec("lm hh-rlhf"), preset="quick")
    e = cfg.experiment
    assert e.align_steps <= math.ceil(e.n_train / cfg.train.batch_size)
    assert e.flip_steps <= math.ceil(e.n_train / cfg.train.batch_size)


def test_a_later_steps_flag_beats_the_presets_epochs():
    cfg = resolve_config(get_spec("lm distinguishability"), preset="quick", flags={"train": {"steps": 2}})
    assert cfg.train.epochs is None and cfg.train.steps == 2


def test_warning_for_the_embedded_model_and_demo_data():
    warnings = paper_setting_warnings("lm distinguishability", paper("lm distinguishability"))
    assert any("Instruct" in w and "chat format" in w and "Llama-2-7B" in w for w in warnings)
    assert any("demo data" in w for w in warnings)
    ok = paper("lm distinguishability", model={"name": "meta-llama/Llama-2-7b-hf"},
               data={"path": "../shared/data/persona"})
    assert paper_setting_warnings("lm distinguishability", ok) == []
    quick = resolve_config(get_spec("lm distinguishability"), preset="quick")
    assert paper_setting_warnings("lm distinguishability", quick) == []


def test_one_p_value_in_headline_table_and_summary(tiny_workspace):
    train = TrainConfig(epochs=1, batch_size=4, lr=3e-3, eval_every=2, optimizer="adamw")
    res = run_lm_distinguishability(tiny_workspace, train, loaded=tiny_loaded(),
                                    preset=LMParams(eval_rows=None, probe_rows=8, n_behaviors=3,
                                                    snapshot_steps=()))
    s = res.summary
    # one epoch: ceil(train rows / 4) steps per behavior
    for i, name in enumerate(s["behaviors"]):
        n_train = len(tiny_workspace.behaviors[tiny_workspace.names.index(name)].train_idx)
        assert s["steps_per_behavior"][name] == math.ceil(n_train / 4)
    heads = {h[0]: h for h in res.headlines}
    table = {r["rows"]: r for r in dict(res.tables)["Does D order the speed? Train rows and test rows"]}
    for rows, key in (("train", "spearman_D_loss_decrease_p"), ("test", "spearman_D_test_loss_decrease_p")):
        p = f"{s[key]:.2g}"
        assert table[rows]["exact permutation p"] == p
        assert f"exact p = {p}" in heads[f"Spearman(D, {rows}-loss decrease)"][2]
        assert rows in heads[f"Spearman(D, {rows}-loss decrease)"][2]
    # 3 behaviors: the exact p is a multiple of 1/6, never scipy's "p < 0.001"
    assert s["spearman_D_loss_decrease_p"] * 6 == pytest.approx(round(s["spearman_D_loss_decrease_p"] * 6))


@pytest.mark.parametrize("name", PERSONA)
def test_mistral_presets_are_sec_5_4(name):
    # Sec. 5.4: "on the Mistral-7B model (Jiang et al., 2023) with β = 0.01 and learning rate 1e-6"
    cfg = resolve_config(get_spec(name), preset="mistral")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.beta, cfg.train.epochs) == ("adamw", 1e-6, 0.01, 1)
    assert cfg.task.chat_template is False and cfg.experiment.mode == "full"
    assert "Mistral-7B" in preset_path(get_spec(name), "mistral").read_text()


def test_mistral_presets_name_the_captions_behaviors():
    acausal = "willingness-to-make-acausal-trades-with-other-AIs-to-help-humanity"
    mis = resolve_config(get_spec("lm misalignment"), preset="mistral")
    assert mis.data.behaviors == ["subscribes-to-average-utilitarianism", acausal]  # Fig. 11
    dist = resolve_config(get_spec("lm distribution"), preset="mistral")
    assert dist.data.behaviors == ["subscribes-to-average-utilitarianism", acausal]  # Fig. 13, 14
    coop = "desire-to-cooperate-with-different-AIs-to-achieve-its-goals"
    prio = resolve_config(get_spec("lm priority"), preset="mistral").experiment
    assert prio.pairs == (("willingness-to-be-non-HHH-to-not-have-current-goals-changed-by-training", coop),
                          ("has-strong-aesthetic-preferences", coop))  # Fig. 12 (a), (b)
    assert resolve_config(get_spec("lm distinguishability"), preset="mistral").data.behaviors == FIG6


def test_priority_paper_preset_sets_fig7_pairs_not_eq5():
    pairs = paper("lm priority").experiment.pairs
    assert pairs == (tuple(BEHAVIORS["lm priority"][:2]), tuple(BEHAVIORS["lm priority"][2:]))


@pytest.mark.parametrize("beta,lr", [(0.001, 1e-5), (0.1, 1e-5), (1.0, 1e-6)])
def test_app_d_presets(beta, lr):
    # App. D.1: "across β = {0.001, 0.1, 1}"; Fig. 19: "We use a learning rate of 1e−6 for β = 1"
    cfg = resolve_config(get_spec("lm distinguishability"), preset=f"app-d-beta{beta:g}")
    assert (cfg.train.beta, cfg.train.lr, cfg.train.epochs) == (beta, lr, 1)
    assert cfg.data.behaviors == FIG6 and cfg.task.chat_template is False


def test_mistral_preset_warns_about_the_model():
    cfg = resolve_config(get_spec("lm misalignment"), preset="mistral", flags={"model": {"name": "meta-llama/Llama-2-7b-hf"}})
    assert any("Mistral-7B" in w for w in paper_setting_warnings("lm misalignment", cfg))
    ok = resolve_config(get_spec("lm misalignment"), preset="mistral",
                        flags={"model": {"name": "mistralai/Mistral-7B-v0.1"}, "data": {"path": "x"}})
    assert paper_setting_warnings("lm misalignment", ok) == []


@pytest.mark.parametrize("preset, pair", [
    ("paper", ("acts-like-it-wants-to-help-humans-but-does-not-care-about-that", "risk-seeking")),  # Fig. 5(a)
    ("paper-small-gap", ("desire-to-influence-world", "subscribes-to-Islam")),  # Fig. 5(b)
])
def test_last_layer_priority_paper_presets_train_the_caption_pairs(preset, pair):
    cfg = resolve_config(get_spec("priority"), preset=preset)
    assert cfg.experiment.pair == ",".join(pair)  # named, not picked by Eq. 5
    assert tuple(cfg.data.behaviors) == pair
    assert cfg.task.chat_template is False and cfg.task.n_per_behavior == 1000
