"""Im & Li (ICML 2024, Sec. 5, Fig. 6): with every weight trained, D still sets the speed.

Behaviors of increasing distinguishability D = ||mu+ - mu-|| (measured on the
base model's last hidden states, train rows) are each fine-tuned alone with DPO
from the same base model and the same settings; Theorem 4.1's last-layer
argument predicts that larger D means a faster loss decrease, and the paper
finds the ordering survives full fine-tuning.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from prefdyn.diagnostics.distinguishability import behavior_stats
from prefdyn.experiments.lm_common import (
    LMExperimentPreset,
    lm_spec,
    lm_task,
    on_lm_workspace,
    spread_by_D,
    train_lm,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.workspace import Workspace
from prefdyn.reports import plot_curves, plot_scatter_rank, spearman
from prefdyn.tracking import metrics as M
from prefdyn.training import TrainConfig

def pick_behaviors(ws: Workspace, preset: LMExperimentPreset) -> list[int]:
    """Every behavior of ``ws`` if there are at most ``preset.n_behaviors``, else that many
    spread over the range of D."""
    if len(ws.names) <= preset.n_behaviors:
        return list(range(len(ws.names)))
    return spread_by_D(ws, preset.n_behaviors)


def base_D(ws: Workspace, i: int) -> float:
    """D of behavior ``i`` on the base model's embeddings of its train rows."""
    b = ws.behaviors[i]
    return behavior_stats(ws.embeddings[i][b.train_idx], b.prefers_yes[b.train_idx]).D


def exact_spearman_p(x, y) -> float:
    """Two-sided permutation p-value of Spearman's rho, exact for up to 8 points (all
    n! orderings): scipy's t approximation says p = 0 for a perfect rank order of 3
    points, where the exact value is 1/3. NaN for more than 8 points or fewer than 3."""
    from itertools import permutations

    from scipy.stats import rankdata

    n = len(x)
    if not 3 <= n <= 8:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)

    def rho(r):
        return float(np.corrcoef(rx, r)[0, 1])

    observed = abs(rho(ry))
    hits = [abs(rho(np.array(p))) >= observed - 1e-12 for p in permutations(ry)]
    return float(np.mean(hits))


def p_text(p: float) -> str:
    """A p-value as every place of the result prints it (headline, table, plot: ``.2g``)."""
    return "n/a" if not np.isfinite(p) else f"{p:.2g}"


def yes_no(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def rank_test(D: dict[str, float], decrease: dict[str, float]) -> dict:
    """Spearman(D, loss decrease) over the behaviors in ``decrease``, its exact permutation p
    and whether the decrease is monotone in D (None with fewer than 2 behaviors)."""
    names = list(decrease)
    xs, ys = [D[n] for n in names], [decrease[n] for n in names]
    rho = spearman(xs, ys)[0] if names else float("nan")
    by_D = sorted(names, key=lambda n: D[n])
    ordered = (bool(all(decrease[a] <= decrease[b] for a, b in pairwise(by_D)))
               if len(names) >= 2 else None)
    return {"n": len(names), "rho": rho, "p": exact_spearman_p(xs, ys), "ordered": ordered}


def final_drift(run) -> dict[str, float]:
    """Relative drift ||W_l(t) - W_l(0)|| / ||W_l(0)|| of each decoder block at the last
    logged step (recorded by fit_lm's tracker), keyed ``layer_XX``."""
    last = [r for r in run.history.records if r.get("split") == "train"
            and any(k.startswith("drift/layer_") for k in r)]
    if not last:
        return {}
    return {k.removeprefix("drift/"): float(v) for k, v in sorted(last[-1].items())
            if k.startswith("drift/layer_")}


def _first_last(curve: np.ndarray) -> float:
    ok = curve[~np.isnan(curve)]
    return float(ok[0] - ok[-1]) if len(ok) else float("nan")


def run_lm_distinguishability(ws: Workspace, train: TrainConfig, *, sink=None, loaded,
                              preset: LMExperimentPreset, which: list[int] | None = None
                              ) -> ExperimentResult:
    """Fig. 6: behaviors of increasing D each fine-tuned alone (``preset.mode``) from the base
    model. Tests that D still orders the speed when every weight trains; reports per-behavior
    loss curves, Spearman(D, loss decrease) with its exact p, and each layer's drift."""
    which = pick_behaviors(ws, preset) if which is None else which
    names = [ws.names[i] for i in which]
    D = {ws.names[i]: base_D(ws, i) for i in which}
    loss, test_loss, acc, fell, seconds, drift, runs_steps = {}, {}, {}, {}, {}, {}, {}
    steps = test_steps = np.array([])
    for i, name in zip(which, names):
        tr = train_lm(loaded, lm_task(ws, loaded, [i], name=name), train, preset, sink=sink,
                      name=name, snapshots=False)
        steps, c = tr.history.curves(M.LOSS, split="train_eval")
        loss[name] = c[name]
        test_steps, c = tr.history.curves(M.LOSS, split="test")
        if name in c:
            test_loss[name] = c[name]
        acc[name] = tr.history.last(M.REWARD_ACC, split="train_eval")[name]
        fell[name] = tr.history.last(M.CHOSEN_FELL, split="train_eval")[name]
        seconds[name] = tr.seconds
        runs_steps[name] = tr.steps
        drift[name] = final_drift(tr.run)

    decrease = {n: _first_last(loss[n]) for n in names}
    test_decrease = {n: _first_last(test_loss[n]) for n in test_loss}
    train_corr = rank_test(D, decrease)
    test_corr = rank_test(D, test_decrease)
    rho, p = train_corr["rho"], train_corr["p"]
    steps_run = max(runs_steps.values(), default=train.steps)

    summary = {"behaviors": names, "mode": preset.mode, "lr": train.lr, "beta": train.beta,
               "steps": steps_run, "steps_per_behavior": runs_steps, "epochs": train.epochs,
               "batch_size": train.batch_size, "D": D,
               "loss_decrease": decrease, "test_loss_decrease": test_decrease,
               "spearman_D_loss_decrease": rho, "spearman_D_loss_decrease_p": p,
               "spearman_D_test_loss_decrease": test_corr["rho"],
               "spearman_D_test_loss_decrease_p": test_corr["p"],
               "D_orders_speed": train_corr["ordered"], "D_orders_test_speed": test_corr["ordered"],
               "final_reward_acc": acc, f"final_{M.CHOSEN_FELL}": fell,
               "final_layer_drift": drift, "seconds_per_run": seconds, "preset": preset}
    verdict = (f"on the train rows, Spearman(D, loss decrease) = {fmt(rho)} (exact p = {p_text(p)}) "
               f"over {len(names)} behaviors and the decrease is "
               f"{'' if train_corr['ordered'] else 'NOT '}monotone in D; on the test rows, "
               f"Spearman = {fmt(test_corr['rho'])} (exact p = {p_text(test_corr['p'])}) and the "
               f"decrease is {'' if test_corr['ordered'] else 'NOT '}monotone in D.")
    length = (f"{train.epochs} epoch(s) of {train.batch_size} rows a step" if train.epochs
              else f"{steps_run} steps of {train.batch_size} rows")
    res = ExperimentResult(
        name="lm_distinguishability",
        title=f"Distinguishability and speed, {preset.mode} fine-tuning",
        explanation=(
            f"Each behavior ({', '.join(names)}) is trained alone with DPO, updating "
            f"{'every weight' if preset.mode == 'full' else 'LoRA adapters'} of the model from the "
            f"same base (AdamW, lr {train.lr:g}, beta {train.beta:g}, {length}). D is measured on "
            "the base model's last hidden states before training. Im & Li (Sec. 5, Fig. 6) find "
            "that behaviors with larger D are learned faster even when all parameters train; "
            "their Fig. 6 shows train and test loss.\n\nMeasured: " + verdict),
        summary=summary,
        headlines=[("Spearman(D, train-loss decrease)", fmt(rho),
                    f"train rows, {preset.mode} FT, {len(names)} behaviors, exact p = {p_text(p)}"),
                   ("Spearman(D, test-loss decrease)", fmt(test_corr["rho"]),
                    f"test rows, {len(test_decrease)} behaviors, exact p = {p_text(test_corr['p'])}"),
                   ("D orders the speed", f"train: {yes_no(train_corr['ordered'])}, "
                    f"test: {yes_no(test_corr['ordered'])}",
                    "loss decrease monotone in D, on train rows and on test rows")])
    res.tables.append(("Does D order the speed? Train rows and test rows", [
        {"rows": rows, "behaviors": c["n"], "Spearman(D, loss decrease)": c["rho"],
         "exact permutation p": p_text(c["p"]), "monotone in D": yes_no(c["ordered"])}
        for rows, c in (("train", train_corr), ("test", test_corr))]))
    res.add_figure("fig6_loss_by_distinguishability", plot_curves(
        steps, loss, color_values=D, ylabel="DPO loss",
        title=f"{preset.mode} fine-tuning: loss, coloured by D",
        dashed=test_loss or None, dashed_steps=test_steps if test_loss else None),
        "DPO loss on each behavior's train rows (solid) and test rows (dashed), each behavior "
        "trained alone; colour = D of the base model (Fig. 6).")
    res.add_figure("scatter_D_loss_decrease_lm", plot_scatter_rank(
        [D[n] for n in names], [decrease[n] for n in names], names,
        xlabel="D = ||mu+ - mu-|| (base model)", ylabel=f"train-loss decrease, {steps_run} steps",
        title="Distinguishability vs learning (all weights), train rows", p=p, p_label="exact"),
        "Each point is a behavior (train rows); the rank correlation tests the prediction, with "
        "the exact permutation p of the headline.")
    if all(drift.values()):
        layers = sorted(next(iter(drift.values())))
        res.add_figure("layer_drift_by_distinguishability", plot_curves(
            np.arange(len(layers)), {n: [drift[n][k] for k in layers] for n in names},
            color_values=D, xlabel="decoder block", ylabel="||W_l(T) - W_l(0)|| / ||W_l(0)||",
            title="Relative weight drift per block after training"),
            "How far each decoder block moved by the end of each behavior's run.")
    res.tables.append(("Per behavior, most distinguishable first", [
        {"behavior": n, "D": D[n], "train-loss decrease": decrease[n],
         "test-loss decrease": test_decrease.get(n, float("nan")),
         f"final {M.REWARD_ACC}": acc[n], M.CHOSEN_FELL: fell[n], "seconds": seconds[n]}
        for n in sorted(names, key=lambda n: -D[n])]))
    if len(names) < 3:
        res.warnings.append("Fewer than 3 behaviors: the rank correlation is undefined.")
    res.notes.append(
        "With few steps and small evaluation sets the loss decrease is noisy; a rank over 3 "
        "behaviors is suggestive at best (p-values say how much). Use --preset paper (GPU) "
        "for more behaviors, rows and steps.")
    return res


SPEC = lm_spec("lm distinguishability", "Distinguishability and speed under fine-tuning",
               "Fig. 6: behaviors of increasing D, each fine-tuned alone; does D order the speed?",
               on_lm_workspace(run_lm_distinguishability), "lm_distinguishability")
