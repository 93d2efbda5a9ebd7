"""The claims of the four works that ``prefdyn reproduce`` scores, each quoted with its section.

Sources (``../shared/papers``): Im & Li, ICML 2024 (full text); Im & Li 2024b, "Can DPO Learn
Diverse Human Values?" (a summary only: its claims are quoted from the summary and say so);
Razin et al.'s talk on likelihood displacement (2024) and vanishing gradients (ICLR 2024)
(slides). :data:`PARTS` are the runs that measure them (suite folder, spec, params overrides);
every test reads only its run's ``summary`` (:mod:`prefdyn.experiments.scorecard`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prefdyn.experiments._displacement import HH_DEFAULT
from prefdyn.experiments.displacement_predictors import subset_drop
from prefdyn.experiments.scorecard import Claim, Evidence, rank_evidence, share_evidence

IL = "Im & Li, ICML 2024"
DV = "Im & Li 2024b (diverse values; from the summary)"
RD = "Razin et al. 2024, likelihood displacement (slides)"
RV = "Razin et al., ICLR 2024, vanishing gradients (slides)"

S = Mapping[str, Any]

PARTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("distinguishability", "distinguishability", {}),
    ("priority_pair", "priority", {"pair": "auto"}),
    ("theory_grid", "theory grid", {}),
    ("theory_scaling", "theory scaling", {}),
    ("theory_scaling_persona", "theory scaling", {"source": "persona"}),
    ("lm_distinguishability", "lm distinguishability", {}),
    ("lm_priority", "lm priority", {}),
    ("lm_distribution", "lm distribution", {}),
    ("lm_misalignment", "lm misalignment", {}),
    ("lm_hh_rlhf", "lm hh-rlhf", {"pairs": HH_DEFAULT}),
    ("lm_scaling", "lm scaling", {}),
    ("displacement_tokens", "displacement tokens", {}),
    ("displacement_predictors", "displacement predictors", {}),
    ("displacement_mitigation", "displacement mitigation", {}),
    ("rl_census", "rl census", {}),
    ("rl_gain", "rl gain", {}),
    ("rl_theorem", "rl theorem", {}),
    ("rl_prevalence", "rl prevalence", {}),
    ("rl_heuristics", "rl heuristics", {}),
    ("rl_warm_start", "rl warm-start", {}),
)
"""(folder, spec, params overrides) of every run of the scorecard; each resolves its own
preset (``quick`` or ``paper`` where the spec ships one, else its default)."""


# ------------------------------------------------------------------ tests ---

def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _d_orders(decrease_key: str):
    return lambda s: rank_evidence(s["D"], s[decrease_key])


def _theorem41(s: S) -> Evidence:
    counts = dict(s["theorem41_verdicts"])
    paper = s.get("paper_regime")
    if paper:
        v = paper["theorem41"]["verdict"]
        counts[v] = counts.get(v, 0) + 1
    held, failed = counts.get("holds, hypotheses met", 0), counts.get("fails, hypotheses met", 0)
    outside = sum(counts.values()) - held - failed
    shown = f"{held}/{held + failed} points with its hypotheses met hold ({outside} outside them)"
    if held + failed == 0:
        return Evidence(shown, None, "no grid point meets Theorem 4.1's hypotheses")
    return Evidence(shown, failed == 0, "a bound that holds outside the hypotheses is not counted")


def _paper_point(s: S) -> Mapping[str, Any]:
    paper = s.get("paper_regime")
    if not paper:
        raise KeyError("paper_regime (theory grid with paper_d = 0 has none)")
    return paper


def _theorem42(s: S) -> Evidence:
    p = _paper_point(s)
    t = p["theorem42"]
    shown = f"final cos {t['final_cosine']:.6f} vs bound {t['final_bound']:.6f} (d = {p['d']})"
    if not all(t["conditions"].values()):
        return Evidence(shown, None, "the theorem's conditions on v and t are not met at this point")
    return Evidence(shown, bool(t["holds"]), f"up to the horizon t = {_fmt(p['horizon'])}")


def _theorem43(rule: str):
    def test(s: S) -> Evidence:
        p = _paper_point(s)
        t = p["theorem43"][rule]
        shown = f"Yes/No accuracy {t['accuracy']:.0%} vs guaranteed p = {t['p']:.0%} (d = {p['d']})"
        if not t["conditions_met"]:
            return Evidence(shown, None, "the theorem's conditions are not met at this point")
        if t["p"] <= 0:
            return Evidence(shown, None, "the guarantee is p = 0: nothing to test (as printed, the margin "
                                         "exceeds every sample norm on the proof's event)")
        return Evidence(shown, t["accuracy"] >= t["p"])
    return test


def _priority_pair(s: S) -> Evidence:
    if "prediction_holds" not in s:
        return Evidence("", None, "the run did not train a pair")
    return Evidence(f"higher D·P: {s['higher_priority']}; learned faster: {s['learned_faster']}",
                    bool(s["prediction_holds"]), "one pair: a direction, no p-value")


def _lm_priority_high(s: S) -> Evidence:
    hi = s["pairs"]["high gap"]
    return Evidence(f"higher D·P: {hi['higher_priority']}; lower loss AUC: {hi['learned_faster']}",
                    bool(hi["prediction_holds"]), "one pair: a direction, no p-value")


def _lm_priority_low(s: S) -> Evidence:
    pairs = s["pairs"]
    if "low gap" not in pairs:
        return Evidence("one pair only", None, "the high- and the low-gap pair are the same pair")
    hi, lo = pairs["high gap"]["auc_gap"], pairs["low gap"]["auc_gap"]
    return Evidence(f"loss-AUC gap {_fmt(lo)} (low-gap pair) vs {_fmt(hi)} (high-gap pair)", lo < hi,
                    "one pair each: a direction, no p-value")


def _d_grew(s: S) -> Evidence:
    grew = set(s["D_grew"])
    return share_evidence({n: n in grew for n in s["behaviors"]}, need="majority")


def _concentrated(s: S) -> Evidence:
    """Fig. 8's variance / D, with prefdyn's variance proxy: the squared mean distance to the
    class mean (``spread``), so spread^2 / D before and after."""
    flags = {}
    for n, c in s["change"].items():
        before = c["spread"]["before"] ** 2 / c["D"]["before"] if c["D"]["before"] else math.nan
        after = c["spread"]["after"] ** 2 / c["D"]["after"] if c["D"]["after"] else math.nan
        flags[n] = after < before if math.isfinite(before) and math.isfinite(after) else None
    return share_evidence(flags, need="majority")


def _speedup(s: S) -> Evidence:
    sp = s["speedup"]
    ev = share_evidence({n: (v > 1 if isinstance(v, (int, float)) and math.isfinite(v) else None)
                         for n, v in sp.items()})
    return Evidence(f"{ev.measured} faster from the aligned model (speed-ups "
                    + ", ".join(_fmt(v) for v in sp.values()) + ")", ev.holds, ev.why)


def _aligned_D(s: S) -> Evidence:
    before, after = s["D_before_alignment"], s["D_after_alignment"]
    ev = share_evidence({n: after[n] > before[n] for n in before if n in after})
    return Evidence(f"D grew for {ev.measured}", ev.holds, ev.why or "D of the probe rows before/after alignment")


def _hh_faster(s: S) -> Evidence:
    v = s["speedup"]
    if not (isinstance(v, (int, float)) and math.isfinite(v)):
        return Evidence(str(v), None, "the speed-up is undefined (the base curve did not fall)")
    return Evidence(f"speed-up {_fmt(v)} (log-prob difference, held-out pairs)", v > 1)


def _hh_fallback(s: S) -> Evidence:
    return Evidence(f"half the alignment gain undone at step {_fmt(s['fallback_step'])}; window "
                    f"{s['window']} steps", bool(s["fell_back_within_window"]),
                    f"the paper's window is 100 steps; this run's is {s['window']}")


def _scaling_K(s: S) -> Evidence:
    expo = s["exponent_steps_vs_K"]
    q = max(expo, key=lambda k: float(k))
    v = expo[q]
    if not (isinstance(v, (int, float)) and math.isfinite(v)):
        return Evidence(str(v), None, "the exponent is undefined (a cell never reached the target)")
    return Evidence(f"steps to the target margin ~ K^{_fmt(v)} at Q = {q}", v > 0,
                    "only its sign is the claim (the paper states no exponent in K)")


def _scaling_cells(s: S) -> dict[int, dict[int, dict]]:
    cells: dict[int, dict[int, dict]] = {}
    for c in s["cells"]:
        cells.setdefault(int(c["Q"]), {})[int(c["K"])] = c
    return cells


def _scaling_test_trend(s: S) -> Evidence:
    """Test margins fall with K wherever train margins do (the largest Q)."""
    cells = _scaling_cells(s)
    row = cells[max(cells)]
    ks = sorted(row)
    train = {str(k): -row[k]["final train margin"] for k in ks}
    test = {str(k): -row[k]["final test margin"] for k in ks}
    return rank_evidence(train, test, what="values of K")


def _scaling_Q(s: S) -> Evidence:
    effect = s["q_gap_effect"]
    ev = share_evidence({f"K={k}": v["gap_large_Q"] < v["gap_small_Q"] for k, v in effect.items()},
                        what="values of K")
    qs = s["Qs"]
    return Evidence(f"train - test margin gap smaller at Q = {max(qs)} than at Q = {min(qs)} for {ev.measured}",
                    ev.holds, ev.why)


def _clusters(s: S) -> Evidence:
    c = s["cluster_structure_by_class"]
    return Evidence(f"centered cosine within {c['within']:.2f}, to the other class {c['same_concept_other_class']:.2f}, "
                    f"to other concepts {_fmt(c['other_concepts'], 2)}", bool(c["separated"]),
                    "within a (concept, class) cluster above both")


def _tokens_displaced(s: S) -> Evidence:
    pairs = s["pairs"]
    return share_evidence({n: p["y_plus_displaced"] for n, p in pairs.items()}, need="majority",
                          what="answer pairs with π(y+) lower after DPO")


def _tokens_predicted(s: S) -> Evidence:
    pairs = s["pairs"]
    ev = share_evidence({n: p["predicted π(y+) falls"] == p["y_plus_displaced"] for n, p in pairs.items()},
                        what="pairs")
    return Evidence(f"geometry's prediction right for {ev.measured}", ev.holds, ev.why)


def _tokens_overlap(s: S) -> Evidence:
    v, k = s["mean_overlap_at_k"], s["k"]
    return Evidence(f"mean overlap@{k} = {_fmt(v)}", v >= 0.5,
                    "prefdyn's threshold: at least half of the measured top gainers predicted")


def _ches(s: S) -> Evidence:
    out, holds, why = [], [], []
    for source, info in s["sources"].items():
        corr = info["correlations"]
        c = corr["ches"]
        others = [abs(v["rho"]) for k, v in corr.items() if k not in ("ches", "ches_normalized")
                  and math.isfinite(v["rho"])]
        best = all(abs(c["rho"]) > o for o in others)
        out.append(f"{source}: rho(CHES) = {_fmt(c['rho'], 2)}, p = {_fmt(c['p'], 2)}, n = {c['n']}")
        if not math.isfinite(c["rho"]):
            continue
        holds.append(c["rho"] < 0 and c["p"] <= 0.05 and best)
        why.append(f"{source}: {'strongest' if best else 'not the strongest'} |rho| of the scores")
    if not holds:
        return Evidence("; ".join(out), None, "no finite correlation")
    return Evidence("; ".join(out), all(holds), "; ".join(why))


def _ches_subsets(s: S) -> Evidence:
    """The slides' design: per score, Δ log π(y+) of the lowest- minus the highest-percentile subset."""
    out, holds = [], []
    for source, info in s["sources"].items():
        subsets = info.get("percentile_subsets") or {}
        if not subsets or any(len(v) < 2 for v in subsets.values()):
            continue
        drops = {k: subset_drop(v) for k, v in subsets.items()}
        out.append(f"{source}: " + ", ".join(f"{k} {d:+.3f}" for k, d in drops.items()))
        holds.append(drops["ches"] > 0 and all(drops["ches"] > d for k, d in drops.items() if k != "ches"))
    if not holds:
        return Evidence("", None, "the percentile-subset design did not run (experiment.percentiles is empty)")
    return Evidence("Δ log π(y+), lowest minus highest percentile: " + "; ".join(out), all(holds),
                    "CHES's subsets must differ most, in the claimed direction")


def _filtering(s: S) -> Evidence:
    held = {r: v["held-out"]["chosen_logp_change"] for r, v in s["runs"].items()}
    beats = held["drop top CHES"] > max(held["drop random"], held["all + SFT"])
    return Evidence("held-out Δ log π(y+): " + ", ".join(f"{r} {v:+.3f}" for r, v in held.items()), beats,
                    "dropping top-CHES must beat dropping as many random pairs and the SFT term")



# RL fine-tuning (Razin et al., ICLR 2024): each test reads its ``rl ...`` run's summary.

CONSIDERABLE = 0.1
"""prefdyn's reading of the slides' "considerable #": at least 10% of the train inputs."""


def _vanish(s: S) -> Evidence:
    slope, small, n = s["slope"], s["slope_small_std_half"], s["points"]
    shown = f"log-log slope {_fmt(slope)} (small-std half {_fmt(small)}) over {n} inputs"
    if small is None or not math.isfinite(small) or n < 3:
        return Evidence(shown, None, "too few inputs with a measured gradient to fit a slope")
    return Evidence(shown, small >= 2 / 3, "a norm that is O(std^(2/3)) falls at least as fast as "
                    "std^(2/3) as std -> 0: slope >= 2/3 on the small-std half (the slides give no constant)")


def _finding_i(s: S) -> Evidence:
    label, splits = next(iter(s["tasks"].items()))  # the run's own task comes first
    share = splits["train"]["frac_small_std_and_low_reward"]
    return Evidence(f"{label}: {_fmt(100 * share)}% of train inputs", share >= CONSIDERABLE,
                    f"'considerable' read as >= {CONSIDERABLE:.0%} of the train inputs (prefdyn's threshold)")


def _finding_ii(s: S) -> Evidence:
    gains = s["splits"]["held-out"]["bin_gain"]
    shown = f"held-out gain, lowest vs highest std bin: {_fmt(gains[0])} vs {_fmt(gains[-1])}"
    return Evidence(shown, bool(s["finding_ii_holds_held_out"]), "the lowest-std bin must gain less")


def _finding_iii(s: S) -> Evidence:
    mixes = s["mixes"]
    shown = "held-out reward after RFT by small-std share: " + ", ".join(
        f"{k} {_fmt(v['held_out_reward'])}" for k, v in mixes.items())
    return Evidence(shown, bool(s["finding_iii_holds_held_out"]),
                    "the mix with the most small-std inputs must end below the one with the fewest")


def _heuristics(s: S) -> Evidence:
    runs = {name: r["held-out"] for name, r in s["runs"].items() if name != "baseline"}
    shown = ", ".join(f"{n}: small-std gain {_fmt(r['gain_small_std'])} vs other {_fmt(r['gain_other'])}"
                      for n, r in runs.items())
    if not runs or any(not r["gain_other"] > 0 for r in runs.values()):
        return Evidence(shown, None, "RFT did not raise the other inputs' reward in every run: no gap to keep")
    kept = all(r["gain_small_std"] < 0.5 * r["gain_other"] for r in runs.values())
    return Evidence(shown, kept, "each heuristic leaves the small-std group gaining less than half of "
                    "the other inputs' gain (prefdyn's reading of 'does not fix')")


def _sft_reduces(s: S) -> Evidence:
    full = s["variants"]["full SFT"]
    before, after = full["small_std_train_before_sft"], full["small_std_train_after_sft"]
    return Evidence(f"small-std train inputs {before} -> {after} after the full SFT phase", after < before,
                    "fewer small-std inputs after SFT")


def _sft_cheap(s: S) -> Evidence:
    v = s["variants"]
    cheap, full = v[s["cheap_variant"]], v["full SFT"]
    shown = (f"held-out reward after RFT: {s['cheap_variant']} {_fmt(cheap['held_out_reward_after_rft'])}, "
             f"full SFT {_fmt(full['held_out_reward_after_rft'])}")
    return Evidence(shown, bool(s["cheap_within_10pct_of_full"]),
                    "'roughly same' read as within 10% of the reward's range (prefdyn's threshold)")


# ----------------------------------------------------------------- claims ---

_SEC5 = "Sec. 5 runs: full fine-tuning of every weight"

CLAIMS: tuple[Claim, ...] = (
    Claim("il-fig3", IL, "Sec. 5.1 (about Fig. 3, last layer)",
          "Recall from Figure 3 that the loss decreases rapidly for the more distinguishable behaviors and vice "
          "versa, when we fine-tune the last layer weights.",
          "Spearman(D, loss decrease), each behavior trained alone on the unembedding",
          "rho > 0 and p <= 0.05", "distinguishability", _d_orders("loss_decrease")),
    Claim("il-fig4", IL, "Sec. 4.2 (Fig. 4)",
          "The theorem tells us that given the same training configuration, behaviors with more "
          "distinguishability allow for a faster rate of change of weight parameters.",
          "Spearman(D, rate of ||W_U(t) - W_U(0)||)", "rho > 0 and p <= 0.05", "distinguishability",
          lambda s: rank_evidence(s["D"], s["weight_change_slope"])),
    Claim("il-thm41", IL, "Theorem 4.1",
          "after t DPO steps with gradient descent, ||W_U(t) - W_U(0)|| <= 6β'ηt d^{Δ - 1/2}",
          "the bound at synthetic grid points whose hypotheses (β'^2 η c_n^2 <= 1/4, Δ <= 1/2) are met",
          "holds at every such point", "theory_grid", _theorem41),
    Claim("il-thm42", IL, "Theorem 4.2",
          "we can guarantee that the decision boundary improves at a given rate (Theorem 4.2)",
          "final boundary cosine vs the printed bound at a d = 4096 point inside the conditions",
          "cosine >= bound", "theory_grid", _theorem42),
    Claim("il-thm43", IL, "Theorem 4.3 (as printed)",
          "and lower bound the accuracy (Theorem 4.3)", "Yes/No accuracy on the training samples vs the printed "
          "guarantee p", "accuracy >= p with p > 0", "theory_grid", _theorem43("printed")),
    Claim("il-thm43-eq36", IL, "Theorem 4.3 via the proof's Eq. 36 (prefdyn's reading)",
          "and lower bound the accuracy (Theorem 4.3)", "Yes/No accuracy vs p with Eq. 36's margin",
          "accuracy >= p with p > 0", "theory_grid", _theorem43("proof_eq36")),
    Claim("il-fig5", IL, "Sec. 4.3 (Fig. 5, last layer)",
          "the training loss for higher-priority behaviors (in red) indeed decreases at a faster rate.",
          "which behavior of the largest-gap pair has the lower loss AUC, trained jointly on the unembedding",
          "the higher D·P (Eq. 5) one", "priority_pair", _priority_pair),
    Claim("il-fig6-train", IL, "Sec. 5.1 (Fig. 6)",
          "Consistent with our previous finding, we still observe that the more distinguishable behaviors "
          "have a faster rate of loss decreasing.", "Spearman(D, train-loss decrease), " + _SEC5,
          "rho > 0 and p <= 0.05", "lm_distinguishability", _d_orders("loss_decrease")),
    Claim("il-fig6-test", IL, "Sec. 5.1 (Fig. 6 shows train and test loss)",
          "Consistent with our previous finding, we still observe that the more distinguishable behaviors "
          "have a faster rate of loss decreasing.", "Spearman(D, test-loss decrease), " + _SEC5,
          "rho > 0 and p <= 0.05", "lm_distinguishability", _d_orders("test_loss_decrease")),
    Claim("il-fig7-high", IL, "Sec. 5.1 (Fig. 7)",
          "We can see that for the pair with a high priority gap, the training loss corresponding to each "
          "behavior has a significant gap.", "which behavior of the high-gap pair has the lower loss AUC",
          "the higher D·P one", "lm_priority", _lm_priority_high),
    Claim("il-fig7-low", IL, "Sec. 5.1 (Fig. 7)",
          "Moreover, for the pair with a small priority gap, the training loss for the behaviors follow "
          "similar trajectories.", "loss-AUC gap of the low-gap pair vs the high-gap pair",
          "smaller for the low-gap pair", "lm_priority", _lm_priority_low),
    Claim("il-fig8-D", IL, "Sec. 5.2 (Fig. 8)",
          "the positive and negative examples generally become more distinguishable after DPO",
          "D of each behavior's probe rows before vs after DPO on that behavior alone", "D grew for more than half",
          "lm_distribution", _d_grew),
    Claim("il-fig8-conc", IL, "Sec. 5.2 (Fig. 8)",
          "their distributions are more concentrated as their ratios of variance to distinguishability are "
          "reduced", "spread^2 / D before vs after (spread = mean distance to the class mean: prefdyn's "
          "variance proxy)", "fell for more than half", "lm_distribution", _concentrated),
    Claim("il-fig9", IL, "Sec. 5.3 (Fig. 9)",
          "We find that the training loss decreases at a significantly faster rate for the aligned models",
          "misalignment speed-up per behavior (flipped-label loss drop from the aligned start / from the base)",
          "> 1 for every behavior", "lm_misalignment", _speedup),
    Claim("il-sec53-D", IL, "Sec. 5.3",
          "an aligned model has a larger preference distinguishability between the positive vs negative "
          "distributions", "D before vs after alignment, per behavior", "grew for every behavior",
          "lm_misalignment", _aligned_D),
    Claim("il-appC-faster", IL, "App. C (Fig. 15)", "We find that the loss does decrease faster when "
          "starting with the aligned model.", "speed-up of the log-prob difference on held-out HH-RLHF pairs",
          "> 1", "lm_hh_rlhf", _hh_faster),
    Claim("il-appC-fallback", IL, "App. C (Fig. 16)",
          "the difference between the log-probabilities of preferred and non-preferred outputs is near that "
          "of the base model within the first 100 steps", "first step at which half the alignment gain is "
          "undone", "within the run's window", "lm_hh_rlhf", _hh_fallback),
    Claim("il-appD", IL, "App. D.1 (Fig. 17-19)",
          "We verify that the training and test loss decreases at a faster rate for the more distinguishable "
          "behaviors across β = {0.001, 0.1, 1}", "Spearman(D, loss decrease) per β", "rho > 0, p <= 0.05 "
          "at every β", None, why_untested="not one of the scorecard's runs (five full runs per β): "
          "`prefdyn lm distinguishability --preset app-d-beta0.001` (and app-d-beta0.1, app-d-beta1) run it"),
    Claim("il-mistral", IL, "Sec. 5.4 (Fig. 10, 11)",
          "We find that similar behavior occurs for distinguishability as seen in Figure 10 and for "
          "misalignment training as seen in Figure 11.", "the Fig. 6 and Fig. 9 quantities on Mistral-7B",
          "as for Fig. 6 and 9", None, why_untested="needs Mistral-7B (a GPU): the `mistral` presets of lm "
          "distinguishability and lm misalignment run it with --model"),
    Claim("dv-K", DV, "Key Results",
          "Training reward margins grow more rapidly with fewer preference concepts (clusters)",
          "exponent of steps-to-target-margin in K (synthetic concepts, largest Q)", "> 0", "theory_scaling",
          _scaling_K),
    Claim("dv-test", DV, "Key Results", "Test reward margins follow the same trend as training margins",
          "Spearman(final train margin, final test margin) over K at the largest Q", "rho > 0 and p <= 0.05",
          "theory_scaling", _scaling_test_trend),
    Claim("dv-Q", DV, "Key Results",
          "Generalization error decreases as the number of samples per concept increases",
          "train - test margin gap at the largest vs the smallest Q, per K", "smaller for every K",
          "theory_scaling", _scaling_Q),
    Claim("dv-K-lm", DV, "Key Results",
          "Training reward margins grow more rapidly with fewer preference concepts (clusters)",
          "exponent of steps-to-target-margin in K, LM fine-tuning (LoRA in quick, full in paper), largest Q",
          "> 0", "lm_scaling", _scaling_K),
    Claim("dv-Q-lm", DV, "Key Results",
          "Generalization error decreases as the number of samples per concept increases",
          "train - test margin gap at the largest vs the smallest Q, per K, LM fine-tuning",
          "smaller for every K", "lm_scaling", _scaling_Q),
    Claim("dv-clusters", DV, "Mechanism 2, core assumption",
          "The data distribution consists of K pairs of clusters representing different concepts, with Q i.i.d. "
          "samples from each cluster.", "cosine of centered hidden states within vs across (concept, class) "
          "clusters, persona behaviors as concepts", "within above both", "theory_scaling_persona", _clusters),
    Claim("dv-Q-persona", DV, "Key Results",
          "Generalization error decreases as the number of samples per concept increases",
          "train - test margin gap at the largest vs the smallest Q, per K (persona behaviors as concepts)",
          "smaller for every K", "theory_scaling_persona", _scaling_Q),
    Claim("rd-displaced", RD, "single-token table",
          "However, the probability of preferred responses often decreases!",
          "answer pairs whose π(y+) is lower after DPO on one prompt", "more than half",
          "displacement_tokens", _tokens_displaced),
    Claim("rd-predicted", RD, "Theorem: When does likelihood displacement occur?",
          "At any training step, ln π_θ(y+|x) decreases when the following are large: <W_y+, W_y->",
          "the unembedding geometry's prediction (π(y+) falls) vs the measured fall, per pair",
          "right for every pair", "displacement_tokens", _tokens_predicted),
    Claim("rd-where", RD, "Theorem: Where does the probability mass go?",
          "The log probability change of z is proportional to: <W_z, W_y+ - W_y->",
          "overlap@k of predicted and measured top gainers", ">= 0.5 (prefdyn's threshold)",
          "displacement_tokens", _tokens_overlap),
    Claim("rd-ches", RD, "CHES score",
          "CHES score identifies training samples causing likelihood displacement, whereas alternative "
          "measures do not", "Spearman(CHES, Δ log π(y+)) per source, against edit and hidden similarity",
          "rho < 0, p <= 0.05 and the largest |rho|", "displacement_predictors", _ches),
    Claim("rd-ches-subsets", RD, "CHES score (percentile panels)",
          "CHES score identifies training samples causing likelihood displacement, whereas alternative "
          "measures do not", "DPO on the lowest- and the highest-percentile subset of each score alone: "
          "Δ log π(y+) of the lowest minus the highest", "> 0 for CHES and larger than for edit and hidden "
          "similarity", "displacement_predictors", _ches_subsets),
    Claim("rd-filter", RD, "mitigation",
          "Removing samples with high CHES scores mitigates unintentional unalignment, and goes beyond adding "
          "an SFT term to the loss", "held-out Δ log π(y+) after DPO per training set",
          "drop-top-CHES above drop-random and all + SFT", "displacement_mitigation", _filtering),
    Claim("rv-vanish", RV, "Theorem (expected gradient)",
          "Expected gradient for an input vanishes when reward std is small, even if reward mean is "
          "suboptimal", "log-log slope of the expected-gradient norm against reward std, per input",
          "slope >= 2/3 on the small-std half (O(std^(2/3)))", "rl_theorem", _vanish),
    Claim("rv-finding-i", RV, "Finding I",
          "3 of 7 datasets contain considerable # of train inputs with small reward std and low reward",
          "share of train inputs with small reward std and low reward under the base model",
          ">= 10% (prefdyn's threshold)", "rl_census", _finding_i),
    Claim("rv-finding-ii", RV, "Finding II",
          "As expected, RFT has limited impact on the reward of inputs with small reward std",
          "held-out reward gain after RFT per initial-std bin", "lowest-std bin gains less than the highest",
          "rl_gain", _finding_ii),
    Claim("rv-finding-iii", RV, "Finding III",
          "RFT performance is worse when inputs with small reward std are prevalent",
          "held-out reward after the same RFT budget per small-std share of the training mix",
          "the largest share ends below the smallest", "rl_prevalence", _finding_iii),
    Claim("rv-heuristics", RV, "Exploring ways to overcome vanishing gradients in RFT",
          "Common Heuristics: Increasing learning rate, temperature, entropy regularization",
          "held-out gain of the small-std inputs vs the others, per heuristic",
          "small-std gain < half the others' in every heuristic run", "rl_heuristics", _heuristics),
    Claim("rv-sft-std", RV, "Observation",
          "Initial SFT phase reduces number of inputs with small reward std",
          "small-std train inputs before and after the full SFT phase", "fewer after", "rl_warm_start",
          _sft_reduces),
    Claim("rv-sft", RV, "Result", "Using 1% of labeled samples and 40% of steps for initial SFT allows RFT to "
          "reach roughly same reward as with \"full\" initial SFT", "held-out reward after RFT per initial SFT budget",
          "within 10% of the reward's range (prefdyn's threshold)", "rl_warm_start", _sft_cheap),
)
