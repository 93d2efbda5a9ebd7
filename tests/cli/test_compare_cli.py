"""``prefdyn compare`` end to end through the real entry point."""

import json

from typer.testing import CliRunner

from prefdyn.cli.app import app
from tests.experiments.test_compare import PAIRS, write_diagnosis, write_run


def test_compare_writes_json_and_html_and_prints_the_table(tmp_path):
    run = write_run(tmp_path / "run", {"fast": [0.0, 1.0, 1.0], "mid": [0.0, 0.5, 1.0],
                                       "slow": [0.0, 0.0, 0.5]}, PAIRS)
    diagnosis = write_diagnosis(tmp_path / "diagnosis.json", [0, 1, 2, 0, 1], ["slow", "fast", "mid"],
                                [3, 1, 2], [0, 1])
    result = CliRunner().invoke(app, ["compare", str(diagnosis), str(run), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "Spearman rho = 1.00" in result.output and "precision 0.50" in result.output
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["spearman"] == 1.0 and saved["risk"]["n_fell"] == 2
    assert (tmp_path / "cmp" / "compare.html").read_text().startswith("<!DOCTYPE html>")


def test_compare_on_a_folder_without_a_run_is_one_line(tmp_path):
    diagnosis = write_diagnosis(tmp_path / "diagnosis.json", [0], ["a"], [1], [])
    result = CliRunner().invoke(app, ["compare", str(diagnosis), str(tmp_path)])
    assert result.exit_code == 2
    assert "concepts.jsonl not found" in result.output
