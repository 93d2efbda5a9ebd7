"""One precedence rule: dataclass defaults < preset < --config < flags < --set."""

from dataclasses import dataclass

import pytest
import yaml

from prefdyn.errors import PrefdynError
from prefdyn.experiments.configure import check_layer, load_yaml, preset_names, preset_path, resolve_config
from prefdyn.experiments.registry import get_spec, specs
from prefdyn.experiments.spec import ExperimentSpec


@dataclass
class Params:
    mode: str = "full"
    rows: int = 4
    ds: tuple[int, ...] = (1, 2)


SPEC = ExperimentSpec(name="toy", title="toy", params=Params, run=lambda ctx: None, default_preset=None)


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_defaults_preset_config_flags(tmp_path, monkeypatch):
    preset = write(tmp_path / "p.yaml", {"train": {"lr": 5.0e-5, "steps": 20}, "experiment": {"rows": 8},
                                         "by_mode": {"lora": {"train": {"lr": 5.0e-4}}}})
    monkeypatch.setattr("prefdyn.experiments.configure.preset_path", lambda spec, name: preset)
    monkeypatch.setattr("prefdyn.experiments.configure.preset_names", lambda spec: ["p"])
    config = write(tmp_path / "run.yaml", {"train": {"steps": 30}, "seed": 3})
    cfg = resolve_config(SPEC, preset="p", config_file=config)
    assert (cfg.train.lr, cfg.train.steps, cfg.seed, cfg.experiment.rows) == (5e-5, 30, 3, 8)
    assert cfg.train.beta == 0.1 and cfg.preset == "p"  # dataclass default
    assert cfg.train.seed == 3 and cfg.task.seed == 3  # one seed for everything
    # the LoRA section of the preset applies when mode is lora, from whichever layer
    lora = resolve_config(SPEC, preset="p", flags={"experiment": {"mode": "lora"}})
    assert lora.train.lr == 5e-4
    # an explicit flag wins even when it equals the full preset's value or the default
    explicit = resolve_config(SPEC, preset="p", flags={"train": {"lr": 5e-5, "steps": 300},
                                                       "experiment": {"mode": "lora"}})
    assert explicit.train.lr == 5e-5 and explicit.train.steps == 300
    # flags not given (None) are not part of the config
    assert resolve_config(SPEC, preset="p", config_file=config, flags={"train": {"steps": None}}).train.steps == 30
    assert resolve_config(SPEC, preset="p", sets=["train.steps=7", "experiment.ds=4,5"]).experiment.ds == (4, 5)


def test_unknown_keys_are_one_line_naming_file_and_key(tmp_path):
    bad = write(tmp_path / "run.yaml", {"train": {"lrr": 1}})
    with pytest.raises(PrefdynError, match=r"run.yaml: unknown key train.lrr") as e:
        resolve_config(SPEC, config_file=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(PrefdynError, match=r"run.yaml: unknown key 'optim'"):
        resolve_config(SPEC, config_file=write(tmp_path / "run.yaml", {"optim": {}}))
    with pytest.raises(PrefdynError, match=r"--set: unknown key experiment.nope"):
        resolve_config(SPEC, sets=["experiment.nope=1"])
    with pytest.raises(PrefdynError, match=r"unknown preset 'fast'"):
        resolve_config(get_spec("distinguishability"), preset="fast")
    with pytest.raises(PrefdynError, match=r"expected float"):
        resolve_config(SPEC, sets=["train.lr=fast"])


def test_every_shipped_preset_parses_into_its_spec_config():
    shipped = [(spec, name) for spec in specs() for name in preset_names(spec)]
    assert len(shipped) >= len(specs())
    for spec, name in shipped:
        raw = load_yaml(preset_path(spec, name))
        assert raw.get("description"), f"{spec.name}/{name} has no description"
        check_layer(spec, name, raw)
        cfg = resolve_config(spec, preset=name)
        assert cfg.preset == name
        if spec.params is not None:
            assert isinstance(cfg.experiment, spec.params)


def test_saved_config_reloads_as_config(tmp_path):
    from prefdyn.experiments.configure import to_yaml_dict

    cfg = resolve_config(SPEC, flags={"train": {"lr": 1e-3}, "experiment": {"ds": (3,)}}, sets=["seed=4"])
    again = resolve_config(SPEC, config_file=write(tmp_path / "config.yaml", to_yaml_dict(cfg)))
    assert again == cfg


def test_a_preset_with_a_base_starts_from_it(tmp_path, monkeypatch):
    from prefdyn.experiments import configure

    (tmp_path / "a.yaml").write_text("train: {lr: 0.1, beta: 0.5}\nbase: b\n")
    (tmp_path / "b.yaml").write_text("train: {lr: 0.2, steps: 7}\n")
    (tmp_path / "c.yaml").write_text("base: d\n")
    (tmp_path / "d.yaml").write_text("base: c\n")
    spec = get_spec("lm misalignment")
    monkeypatch.setattr(configure, "preset_dir", lambda s: tmp_path)
    cfg = configure.resolve_config(spec, preset="a")
    assert (cfg.train.lr, cfg.train.beta, cfg.train.steps) == (0.1, 0.5, 7)
    with pytest.raises(PrefdynError, match="cycle"):
        configure.resolve_config(spec, preset="c")
