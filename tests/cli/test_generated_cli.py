"""The CLI is generated from the registry: every spec has its verb with the same options."""

import re

from typer.testing import CliRunner

from prefdyn.cli.app import app
from prefdyn.experiments.configure import preset_names
from prefdyn.experiments.registry import specs

SHARED = ("--config", "--preset", "--out", "--set", "--seed", "--steps", "--lr", "--beta", "--model")


def _help(*verb: str) -> str:
    result = CliRunner().invoke(app, [*verb, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return re.sub(r"\x1b\[[0-9;]*m", "", result.output)


def test_every_spec_has_a_verb_with_the_shared_options():
    assert len(specs()) >= 16
    for spec in specs():
        text = _help(*spec.name.split(" "))
        for option in SHARED:
            assert option in text, (spec.name, option)
        for field, option in spec.options.items():
            assert "--" + (option.flag or field).replace("_", "-") in text, (spec.name, field)


def test_common_flags_have_the_same_help_everywhere():
    def lr_help(text):
        return re.search(r"^\W*--lr\s+\S+\s+(.*?)\s*\W*$", text, re.M).group(1)

    helps = {lr_help(_help(*spec.name.split(" "))) for spec in specs()}
    assert len(helps) == 1


def test_presets_lists_every_shipped_file():
    result = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {tuple(c.strip() for c in line.strip("│┃ ").split("│")[:2]) for line in result.output.splitlines()}
    for spec in specs():
        for name in preset_names(spec):
            assert (spec.name, name) in rows, (spec.name, name)


def test_unknown_config_key_is_one_line_naming_file_and_key(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    result = CliRunner().invoke(app, ["distinguishability", "--config", str(bad)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "run.yaml: unknown key train.stepz" in result.output and result.output.count("\n") == 1
