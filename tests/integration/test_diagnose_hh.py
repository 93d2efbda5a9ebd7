"""``prefdyn diagnose`` end to end on the real HH-RLHF file with the embedded model (a few pairs)."""

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import prefdyn

HH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
pytestmark = pytest.mark.integration


@pytest.mark.skipif(not HH.is_file(), reason="needs ../shared/data/hh-rlhf")
def test_diagnose_hh_rlhf_end_to_end(tmp_path):
    # The default cache: the converted embedded model is reused (a rerun also reuses the data's caches).
    r = prefdyn("diagnose", HH, "--max-pairs", "16", "--clusters", "2", "--out", tmp_path / "out",
                "--fail-on", "ches_share>1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert d["data"]["format"] == "jsonl:hh" and d["data"]["n_pairs"] == 16
    assert d["model"] == "SmolLM2-135M-Instruct"
    concepts = d["concepts"]
    assert concepts["source"] == "clusters" and concepts["k"] == 2
    assert sum(item["n"] for item in concepts["items"]) == sum(c >= 0 for c in concepts["assignment"])
    assert all(item["distinguishability"] > 0 for item in concepts["items"])
    ches = d["pairs"]["ches"]
    assert len(ches) == 16 and sum(v is not None for v in ches) == len(d["pairs"]["usable"])
    assert d["pairs"]["risky"] == [i for i, v in enumerate(ches) if v is not None and v > 0]
    assert d["metrics"]["ches_share"] == pytest.approx(len(d["pairs"]["risky"]) / len(d["pairs"]["usable"]))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Riskiest pairs by CHES" in html and "row i is predicted to be learned before column j" in html
