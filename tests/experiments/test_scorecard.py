"""The scorecard's verdicts follow its stated rules, from the runs' summaries alone."""

import dataclasses
import json
from pathlib import Path

import pytest

from prefdyn.experiments import _claims
from prefdyn.experiments.registry import get_spec
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.scorecard import (
    Claim,
    Evidence,
    Verdict,
    judge,
    rank_evidence,
    scorecard_rows,
    share_evidence,
    verdict_of,
)
from prefdyn.experiments.spec import PartOutcome

CLAIMS = {c.key: c for c in _claims.CLAIMS}


def _outcome(summary: dict, folder: str = "runs/x") -> PartOutcome:
    return PartOutcome("x", Path(folder), ExperimentResult("x", "x", "", summary))


def _verdict(key: str, summary: dict) -> Verdict:
    return verdict_of(judge(CLAIMS[key], _outcome(summary))[0])


def test_rules_map_evidence_to_verdicts():
    assert verdict_of(None) is Verdict.NOT_TESTABLE
    assert verdict_of(Evidence("x", None, "why")) is Verdict.NOT_TESTABLE
    assert verdict_of(Evidence("x", True)) is Verdict.REPRODUCED
    assert verdict_of(Evidence("x", False)) is Verdict.NOT_REPRODUCED


def test_rank_rule_needs_five_units_for_an_exact_p_below_alpha():
    # 4 units: smallest exact two-sided p = 2/4! = 0.083 > 0.05 -> undecidable even when perfect.
    four = {k: float(i) for i, k in enumerate("abcd")}
    assert rank_evidence(four, four).holds is None
    # 5 units in perfect order: exact p = 2/120 = 0.0167 -> holds; reversed -> fails (wrong sign).
    five = {k: float(i) for i, k in enumerate("abcde")}
    assert rank_evidence(five, five).holds is True
    assert rank_evidence(five, {k: -v for k, v in five.items()}).holds is False
    # the claimed sign can be negative
    assert rank_evidence(five, {k: -v for k, v in five.items()}, sign=-1).holds is True
    # one swap in the middle: rho = 0.9, exact p = 0.083 -> not significant -> fails
    swapped = dict(five, b=2.0, c=1.0)
    ev = rank_evidence(five, swapped)
    assert ev.holds is False and "rho = 0.90" in ev.measured


def test_share_rule_all_and_majority():
    assert share_evidence({"a": True, "b": False}).holds is False
    assert share_evidence({"a": True, "b": False}, need="majority").holds is False  # 1/2 is not more than half
    assert share_evidence({"a": True, "b": True, "c": False}, need="majority").holds is True
    assert share_evidence({"a": None}).holds is None


def test_fabricated_speedups_flip_the_misalignment_verdict():
    summary = {"speedup": {"a": 1.4, "b": 1.2}}
    assert _verdict("il-fig9", summary) is Verdict.REPRODUCED
    summary["speedup"]["b"] = 0.9
    assert _verdict("il-fig9", summary) is Verdict.NOT_REPRODUCED
    summary["speedup"] = {"a": float("nan")}
    assert _verdict("il-fig9", summary) is Verdict.NOT_TESTABLE


def test_distinguishability_claim_reads_D_and_the_decrease():
    D = {k: float(i) for i, k in enumerate("abcde")}
    assert _verdict("il-fig6-train", {"D": D, "loss_decrease": dict(D)}) is Verdict.REPRODUCED
    assert _verdict("il-fig6-train", {"D": D, "loss_decrease": {k: -v for k, v in D.items()}}) \
        is Verdict.NOT_REPRODUCED
    three = {k: D[k] for k in "abc"}
    assert _verdict("il-fig6-test", {"D": three, "test_loss_decrease": three}) is Verdict.NOT_TESTABLE


def test_theorem41_counts_only_points_with_hypotheses_met():
    outside = {"theorem41_verdicts": {"holds, hypotheses met": 0, "holds outside the hypotheses": 27,
                                      "fails, hypotheses met": 0, "fails outside the hypotheses": 0}}
    assert _verdict("il-thm41", outside) is Verdict.NOT_TESTABLE
    met = {"theorem41_verdicts": dict(outside["theorem41_verdicts"], **{"holds, hypotheses met": 3})}
    assert _verdict("il-thm41", met) is Verdict.REPRODUCED
    met["theorem41_verdicts"]["fails, hypotheses met"] = 1
    assert _verdict("il-thm41", met) is Verdict.NOT_REPRODUCED


def test_theorem43_with_a_zero_guarantee_is_not_testable():
    point = {"d": 4096, "horizon": 10.0, "theorem41": {"verdict": "holds, hypotheses met"},
             "theorem43": {"printed": {"p": 0.0, "accuracy": 1.0, "conditions_met": True},
                           "proof_eq36": {"p": 1.0, "accuracy": 1.0, "conditions_met": True}}}
    summary = {"theorem41_verdicts": {}, "paper_regime": point}
    assert _verdict("il-thm43", summary) is Verdict.NOT_TESTABLE
    assert _verdict("il-thm43-eq36", summary) is Verdict.REPRODUCED
    point["theorem43"]["proof_eq36"]["accuracy"] = 0.5
    assert _verdict("il-thm43-eq36", summary) is Verdict.NOT_REPRODUCED


def test_failed_missing_and_unbuilt_parts_are_not_testable(tmp_path):
    claim = CLAIMS["il-fig9"]
    failed = PartOutcome("lm misalignment", tmp_path, None, "behaviors missing from data")
    evidence, why = judge(claim, failed)
    assert evidence is None and "behaviors missing" in why
    assert "not part of this suite" in judge(claim, None)[1]
    assert judge(CLAIMS["rv-vanish"], None)[0] is None  # its run is not in this suite
    # a summary without the key the test reads is reported, not raised
    evidence, why = judge(claim, _outcome({"other": 1}))
    assert evidence is None and "lacks" in why


def test_rows_link_the_run_folder_relative_to_the_suite(tmp_path):
    claim = Claim("k", "W", "Sec. 1", "q", "quantity", "criterion", "part",
                  lambda s: Evidence(str(s["v"]), s["v"] > 0))
    outcomes = {"part": PartOutcome("x", tmp_path / "part", ExperimentResult("x", "x", "", {"v": -1}))}
    (row,) = scorecard_rows([claim], outcomes, relative_to=tmp_path)
    assert row["run"] == "part" and row["verdict"] == Verdict.NOT_REPRODUCED.value
    assert row["measured"] == "-1" and row["quote"] == "q"


def test_every_claim_names_a_registered_run_or_says_why_not():
    folders = {folder for folder, _, _ in _claims.PARTS}
    for folder, name, _ in _claims.PARTS:
        get_spec(name)
    for claim in _claims.CLAIMS:
        assert claim.quote and claim.where and claim.criterion
        if claim.part is None:
            assert claim.why_untested
        else:
            assert claim.part in folders and claim.test is not None


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_parts_resolve_their_own_presets(preset):
    from prefdyn.experiments.configure import resolve_config
    from prefdyn.experiments.reproduce import part_config

    suite = resolve_config(get_spec("reproduce"), preset=preset, flags={"seed": 3, "data": {"path": "D"}})
    cfg = part_config(get_spec("lm misalignment"), suite, {})
    assert cfg.preset == preset and cfg.seed == 3 and cfg.data.path == "D"
    assert cfg.train.beta == (0.01 if preset == "paper" else 0.1)
    grid = part_config(get_spec("theory grid"), suite, {})
    assert grid.preset == "default"
    hh = part_config(get_spec("lm hh-rlhf"), suite, {"pairs": "p.jsonl"})
    assert hh.experiment.pairs == "p.jsonl"


def test_suite_keeps_going_and_scores_from_the_summaries(tmp_path, monkeypatch):
    """A tiny suite through the real harness: one part fails, one runs; the scorecard says so."""
    from prefdyn.experiments import reproduce
    from prefdyn.experiments.configure import resolve_config
    from prefdyn.experiments.harness import run_suite
    from prefdyn.experiments.spec import REGISTRY, ExperimentSpec, register
    from prefdyn.errors import PrefdynError

    def ok(ctx):
        return ExperimentResult("ok", "ok", "", {"speedup": {"a": 2.0}})

    def bad(ctx):
        raise PrefdynError("no such behaviors")

    for name, fn in (("t-ok", ok), ("t-bad", bad)):
        register(ExperimentSpec(name=name, title=name, run=fn, needs_model=False))
    try:
        claims = (dataclasses.replace(CLAIMS["il-fig9"], part="good"),
                  dataclasses.replace(CLAIMS["il-sec53-D"], part="broken"))
        monkeypatch.setattr(reproduce, "CLAIMS", claims)
        spec = dataclasses.replace(get_spec("reproduce"), parts=(("good", "t-ok", {}), ("broken", "t-bad", {})))
        cfg = resolve_config(spec, flags={"seed": 0})
        result, out = run_suite(spec, cfg, out=tmp_path)
    finally:
        REGISTRY.pop("t-ok"), REGISTRY.pop("t-bad")
    rows = {r["claim"]: r for r in result.summary["scorecard"]}
    assert rows["il-fig9"]["verdict"] == Verdict.REPRODUCED.value and rows["il-fig9"]["run"] == "good"
    assert rows["il-sec53-D"]["verdict"] == Verdict.NOT_TESTABLE.value
    assert "no such behaviors" in rows["il-sec53-D"]["why"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["failed"] == {"broken": "no such behaviors"}
    assert saved["verdict_counts"][Verdict.REPRODUCED.value] == 1
    html = (out / "report.html").read_text()
    assert html.index("Scorecard") < html.index("<h2>ok</h2>")
    assert 'href="good/report.html"' in html


def test_ches_subset_claim_needs_ches_to_differ_most():
    def subsets(ches, edit, hidden):
        return {k: {"0": {"chosen_logp_change": 0.0}, "100": {"chosen_logp_change": -d}}
                for k, d in (("ches", ches), ("edit", edit), ("hidden", hidden))}

    summary = {"sources": {"hh": {"percentile_subsets": subsets(0.5, 0.1, 0.2)}}}
    assert _verdict("rd-ches-subsets", summary) is Verdict.REPRODUCED
    summary["sources"]["hh"]["percentile_subsets"] = subsets(0.5, 0.6, 0.2)
    assert _verdict("rd-ches-subsets", summary) is Verdict.NOT_REPRODUCED
    summary["sources"]["hh"]["percentile_subsets"] = {}
    assert _verdict("rd-ches-subsets", summary) is Verdict.NOT_TESTABLE


def test_q_effect_and_cluster_claims_read_the_scaling_summary():
    summary = {"Qs": [8, 128], "q_gap_effect": {"1": {"gap_small_Q": 0.5, "gap_large_Q": 0.1},
                                                "2": {"gap_small_Q": 0.6, "gap_large_Q": 0.2}}}
    assert _verdict("dv-Q", summary) is Verdict.REPRODUCED
    summary["q_gap_effect"]["2"]["gap_large_Q"] = 0.9
    assert _verdict("dv-Q", summary) is Verdict.NOT_REPRODUCED
    clusters = {"within": 0.3, "same_concept_other_class": 0.1, "other_concepts": -0.1, "separated": True}
    assert _verdict("dv-clusters", {"cluster_structure_by_class": clusters}) is Verdict.REPRODUCED
    clusters["separated"] = False
    assert _verdict("dv-clusters", {"cluster_structure_by_class": clusters}) is Verdict.NOT_REPRODUCED


def test_rl_claims_follow_their_runs_summaries():
    theorem = {"slope": 1.9, "slope_small_std_half": 1.2, "points": 40}
    assert _verdict("rv-vanish", theorem) is Verdict.REPRODUCED
    assert _verdict("rv-vanish", {**theorem, "slope_small_std_half": 0.4}) is Verdict.NOT_REPRODUCED
    assert _verdict("rv-vanish", {**theorem, "points": 2}) is Verdict.NOT_TESTABLE
    census = {"tasks": {"persona / persona": {"train": {"frac_small_std_and_low_reward": 0.25}},
                        "other / sentiment": {"train": {"frac_small_std_and_low_reward": 0.0}}}}
    assert _verdict("rv-finding-i", census) is Verdict.REPRODUCED  # the run's own task, first
    census["tasks"]["persona / persona"]["train"]["frac_small_std_and_low_reward"] = 0.05
    assert _verdict("rv-finding-i", census) is Verdict.NOT_REPRODUCED
    gain = {"splits": {"held-out": {"bin_gain": [0.01, 0.4]}}, "finding_ii_holds_held_out": True}
    assert _verdict("rv-finding-ii", gain) is Verdict.REPRODUCED
    heur = {"runs": {"baseline": {"held-out": {"gain_small_std": 0.0, "gain_other": 0.3}},
                     "lr x10": {"held-out": {"gain_small_std": 0.05, "gain_other": 0.5}},
                     "temperature 2": {"held-out": {"gain_small_std": 0.1, "gain_other": 0.4}}}}
    assert _verdict("rv-heuristics", heur) is Verdict.REPRODUCED
    heur["runs"]["lr x10"]["held-out"]["gain_small_std"] = 0.3  # this heuristic closes the gap
    assert _verdict("rv-heuristics", heur) is Verdict.NOT_REPRODUCED
    heur["runs"]["lr x10"]["held-out"]["gain_other"] = 0.0  # nothing moved: no gap to judge
    assert _verdict("rv-heuristics", heur) is Verdict.NOT_TESTABLE
    warm = {"cheap_variant": "1% labels, 40% steps", "cheap_within_10pct_of_full": False,
            "variants": {"full SFT": {"held_out_reward_after_rft": 0.8, "small_std_train_before_sft": 30,
                                      "small_std_train_after_sft": 4},
                         "1% labels, 40% steps": {"held_out_reward_after_rft": 0.2}}}
    assert _verdict("rv-sft-std", warm) is Verdict.REPRODUCED
    assert _verdict("rv-sft", warm) is Verdict.NOT_REPRODUCED
