"""Single prompt, single-token answers: where does DPO move the probability mass?

Razin et al. (2024), Section 4 and Table 1: DPO (full fine-tuning) on ONE
prompt x with a preferred token y+ and a dispreferred token y- until the loss is
small. The measured outcome per pair: pi(y+|x) and pi(y-|x) before -> after, and
the tokens (other than y+ and y-) that gained the most probability, each marked
benign (same meaning as y+), catastrophic (opposite meaning) or other. The
prediction, from the unembeddings of the *initial* model only: the first-order
change of log pi(z|x) is proportional to <W_z, W_y+ - W_y-> (their Theorem 4,
:mod:`prefdyn.diagnostics.token_geometry`); overlap@k is the share of the k
predicted gainers among the k measured ones.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefdyn.data.tasks import DEFAULT_TEMPLATE, TaskConfig, render_prompt
from prefdyn.diagnostics.token_geometry import (
    displacement_conditions,
    displacement_scores,
    token_pair_geometry,
)
from prefdyn.errors import PrefdynError
from prefdyn.experiments._displacement import Synonyms, load_synonyms
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments._displacement import displacement_spec
from prefdyn.experiments.spec import Option, RunContext
from prefdyn.models.tokens import answer_token_ids, unembedding
from prefdyn.policies.lm import LMPolicy
from prefdyn.reports import plot_grouped_bars
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.evaluate import answer_logprobs
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_data import _pad_id, collate_prompts
from prefdyn.training.lm_runner import fit_lm

log = logging.getLogger(__name__)

DEFAULT_STATEMENT = "I am always willing to help other people, even strangers."
DEFAULT_PAIRS = (("Yes", "No"), ("No", "Never"), ("Sure", "Yes"))


@dataclass
class TokensConfig:
    """The prompt (a persona statement), the (y+, y-) answer pairs and when to stop.

    Training runs until the DPO loss is below ``loss_target`` or ``TrainConfig.steps``.
    """

    statement: str = DEFAULT_STATEMENT
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    loss_target: float = 0.05
    top_k: int = 10
    synonyms: str | None = None
    chat_template: bool = True
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        self.pairs = tuple(tuple(p) for p in self.pairs)  # type: ignore[assignment]
        if not self.pairs:
            raise PrefdynError("give at least one (y+, y-) answer pair")
        for p in self.pairs:
            if len(p) != 2 or not all(isinstance(a, str) and a for a in p) or p[0] == p[1]:
                raise PrefdynError(f"an answer pair is two different non-empty strings, got {p!r}")
        if not self.statement.strip():
            raise PrefdynError("the persona statement is empty")
        if self.loss_target <= 0 or self.top_k < 1:
            raise PrefdynError("loss_target must be > 0 and top_k >= 1")


def parse_answer_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"Yes:No,No:Never"`` -> ``(("Yes", "No"), ("No", "Never"))``."""
    pairs = []
    for part in (p for p in text.split(",") if p.strip()):
        bits = part.split(":")
        if len(bits) != 2 or not all(bits):
            raise PrefdynError(f"answer pairs are 'y+:y-' separated by commas, got {part!r} in {text!r}")
        pairs.append((bits[0], bits[1]))
    if not pairs:
        raise PrefdynError(f"no answer pairs in {text!r}")
    return tuple(pairs)


def overlap_at_k(predicted: Sequence[int], measured: Sequence[int], k: int) -> float:
    """|top-k predicted ∩ top-k measured| / k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(set(list(predicted)[:k]) & set(list(measured)[:k])) / k


def ranked_tokens(scores: torch.Tensor, exclude: Sequence[int]) -> list[int]:
    """Token ids by score, highest first (ties by id), without ``exclude``."""
    order = torch.sort(-scores.double(), stable=True).indices.tolist()
    skip = set(exclude)
    return [i for i in order if i not in skip]


class StopBelowLoss(Callback):
    """Stop the loop once the mean training loss is below ``target``. Keeps the last loss and
    the lowest log pi(y+) seen (read before each update: displacement can be transient)."""

    def __init__(self, target: float):
        self.target = target
        self.last_loss = float("nan")
        self.min_chosen_logp = float("inf")

    def on_step_end(self, state, policy, out) -> None:
        self.last_loss = out.loss.item()
        self.min_chosen_logp = min(self.min_chosen_logp, out.logps.chosen.detach().min().item())
        if self.last_loss < self.target:
            state.stop = True


def _token_row(tokenizer, tid: int, d_prob: float, d_logp: float, mark: str, pred_rank: int) -> dict:
    return {"token": repr(tokenizer.decode([tid])), "id": tid, "Δp": d_prob, "Δlog p": d_logp,
            "meaning": mark, "predicted rank": pred_rank}


def run_token_table(loaded, cfg: TokensConfig, train: TrainConfig, *, sink=None,
                    synonyms: Synonyms | None = None) -> ExperimentResult:
    """The single-token displacement table (Razin et al. 2024, Table 1) for ``cfg.pairs``."""
    tok = loaded.tokenizer
    synonyms = synonyms or load_synonyms(cfg.synonyms)
    pair_ids = [answer_token_ids(tok, list(p)) for p in cfg.pairs]  # ModelError before any training
    prompt = render_prompt(cfg.statement, tok, TaskConfig(template=cfg.template,
                                                          chat_template=cfg.chat_template))
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    k = cfg.top_k
    rows, gainer_rows, per_pair = [], [], {}
    for (yp_text, ym_text), (yp, ym) in zip(cfg.pairs, pair_ids):
        name = f"{yp_text}>{ym_text}"
        log.info("single-token DPO on %s", name)
        stopper = StopBelowLoss(cfg.loss_target)
        work = loaded.copy()
        device = next(work.model.parameters()).device
        batch = collate_prompts([prompt_ids], [0], torch.tensor([True]), yp, ym, _pad_id(tok))
        batch.input_ids, batch.attention_mask, batch.position_ids = (
            t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.position_ids))
        W_U = unembedding(work.model).detach().clone()
        before = answer_logprobs(LMPolicy(work.model), batch)[0].cpu().double()
        run = fit_lm(work, itertools.repeat(batch), train, mode="full", steps=train.steps,
                     callbacks=[stopper], sink=sink, name=name)
        after = answer_logprobs(run.policy, batch)[0].cpu().double()
        steps_done = run.state.step
        del work, run

        d_logp, d_prob = after - before, after.exp() - before.exp()
        predicted = ranked_tokens(displacement_scores(W_U, yp, ym), exclude=(yp, ym))
        measured_p = ranked_tokens(d_prob, exclude=(yp, ym))
        measured_lp = ranked_tokens(d_logp, exclude=(yp, ym))
        pred_rank = {t: r + 1 for r, t in enumerate(predicted)}
        marks = [synonyms.mark(tok.decode([t]), yp_text, ym_text) for t in measured_p[:k]]
        geometry = token_pair_geometry(W_U, yp, ym)
        conditions = displacement_conditions(W_U, before.exp(), yp, ym)
        top = ", ".join(f"{tok.decode([t])!r} ({m[0]})" for t, m in zip(measured_p[:k], marks))
        record = {
            "pair": f"{yp_text!r} > {ym_text!r}", "steps": steps_done,
            "final loss": stopper.last_loss,
            "pi(y+) before": float(before[yp].exp()), "pi(y+) after": float(after[yp].exp()),
            "min pi(y+) during": min(math.exp(stopper.min_chosen_logp), float(after[yp].exp())),
            "pi(y-) before": float(before[ym].exp()), "pi(y-) after": float(after[ym].exp()),
            f"top-{k} gainers (b/c/o)": top,
            f"overlap@{k} (Δp)": overlap_at_k(predicted, measured_p, k),
            f"overlap@{k} (Δlog p)": overlap_at_k(predicted, measured_lp, k),
            "benign": marks.count("benign"), "catastrophic": marks.count("catastrophic"),
            # The slide's two conditions (diagnostics.token_geometry.displacement_conditions):
            # <W_y+, W_y+ - W_y-> against the mass-weighted <W_z, W_y+ - W_y-> of the other tokens.
            "<W_y+ − W_y−, W_y+>/‖W_y+‖": geometry.along,
            "condition 1: <W_y+, W_y+ − W_y−>": conditions.condition1,
            "condition 2: Σ_z≠y± π(z)<W_z, W_y+ − W_y−>": conditions.condition2,
            "predicted π(y+) falls (condition 1 alone)": geometry.along < 0,
            "predicted π(y+) falls": conditions.falls,
        }
        rows.append(record)
        for t, m in zip(measured_p[:k], marks):
            gainer_rows.append({"pair": record["pair"],
                                **_token_row(tok, t, float(d_prob[t]), float(d_logp[t]), m, pred_rank[t])})
        per_pair[name] = {**{key: v for key, v in record.items() if key != f"top-{k} gainers (b/c/o)"},
                          "y_plus_displaced": record["pi(y+) after"] < record["pi(y+) before"],
                          "gainers": [tok.decode([t]) for t in measured_p[:k]], "marks": marks,
                          "predicted": [tok.decode([t]) for t in predicted[:k]],
                          "geometry": vars(geometry), "conditions": vars(conditions)}
    return _result(rows, gainer_rows, per_pair, cfg, train, prompt)


def _figure(rows: list[dict]):
    keys = {"π(y+) before": "pi(y+) before", "π(y+) after": "pi(y+) after",
            "π(y−) before": "pi(y-) before", "π(y−) after": "pi(y-) after"}
    return plot_grouped_bars([r["pair"] for r in rows],
                             {label: [r[key] for r in rows] for label, key in keys.items()},
                             ylabel="probability of the answer token")


def _result(rows, gainer_rows, per_pair, cfg: TokensConfig, train: TrainConfig, prompt: str) -> ExperimentResult:
    k = cfg.top_k
    displaced = [r["pair"] for r in rows if r["pi(y+) after"] < r["pi(y+) before"]]
    dipped = [r["pair"] for r in rows if r["min pi(y+) during"] < r["pi(y+) before"]]
    overlap = float(np.mean([r[f"overlap@{k} (Δp)"] for r in rows]))
    n_cat = sum(r["catastrophic"] for r in rows)
    summary = {"prompt": prompt, "pairs": per_pair, "mean_overlap_at_k": overlap, "k": k,
               "displaced_pairs": displaced, "dipped_pairs": dipped, "catastrophic_gainers": n_cat,
               "lr": train.lr, "beta": train.beta, "max_steps": train.steps, "loss_target": cfg.loss_target}
    res = ExperimentResult(
        name="displacement_tokens", title="Likelihood displacement: single prompt, single-token answers",
        explanation=("Full-model DPO on one persona prompt per (y+, y−) answer pair, until the loss is below "
                     f"{cfg.loss_target} or {train.steps} steps (AdamW). Gainers are the tokens other than y+ "
                     "and y− whose probability rose most (b = benign, same meaning as y+; c = catastrophic, "
                     "opposite meaning; o = other). The prediction ranks tokens by <W_z, W_y+ − W_y−> on the "
                     "initial unembeddings (Razin et al. 2024, Sec. 4)."),
        summary=summary,
        headlines=[("pairs where π(y+) fell", f"{len(displaced)}/{len(rows)}", "likelihood displacement"),
                   (f"mean overlap@{k}", fmt(overlap), "predicted vs measured gainers"),
                   ("catastrophic gainers", str(n_cat), f"among the top-{k} of every pair")],
        tables=[("Per answer pair", rows), (f"Top-{k} gainers by Δp", gainer_rows)])
    res.add_figure("answer_probabilities", _figure(rows), "π(y+) and π(y−) before and after DPO")
    predicted = [r["pair"] for r in rows if r["predicted π(y+) falls"]]
    res.notes.append("Prediction: the slide's two conditions (\"ln π_θ(y+|x) decreases when the following are large: "
                     "<W_y+, W_y->, <W_z, W_y+ − W_y−> for tokens z ≠ y+, y−\") combined as prefdyn's first-order "
                     "change through the hidden state, <W_y+ − Σ_z π(z) W_z, W_y+ − W_y−> < 0 (condition 1 minus "
                     "condition 2 and the answers' own term); the unembedding's own update, which always raises "
                     "π(y+), is left out.")
    res.notes.append(f"Unembedding geometry (Sec. 4) predicts π(y+) to fall for {len(predicted)}/{len(rows)} "
                     f"pair(s){': ' + ', '.join(predicted) if predicted else ''}; it fell for "
                     f"{len(displaced)}/{len(rows)}.")
    if displaced:
        res.notes.append(f"π(y+) fell while DPO widened the margin for {', '.join(displaced)}: likelihood "
                         "displacement, as Razin et al. (2024) report.")
    else:
        res.notes.append("π(y+) ended higher than it started for every pair: no likelihood displacement of y+ "
                         "at the end of this run" + (f" (it dipped below its start during training for "
                                                     f"{', '.join(dipped)})." if dipped else "."))
    return res


@dataclass
class TokensParams:
    """The ``experiment:`` params of ``displacement tokens`` (see :class:`TokensConfig`)."""

    pairs: str = "Yes:No,No:Never,Sure:Yes"
    statement: str | None = None
    synonyms: str | None = None
    top_k: int = 10
    loss_target: float | None = None


def run_tokens_spec(ctx: RunContext, loaded) -> ExperimentResult:
    """Razin et al. 2024, Table 1: one prompt, single-token answers; pi(y+), pi(y-) before and
    after DPO and which tokens gained the mass (see :func:`run_token_table`)."""
    p = ctx.params
    settings = TokensConfig(statement=p.statement or DEFAULT_STATEMENT, pairs=parse_answer_pairs(p.pairs),
                            loss_target=p.loss_target, top_k=p.top_k, synonyms=p.synonyms,
                            chat_template=ctx.cfg.task.chat_template, template=ctx.cfg.task.template)
    return run_token_table(loaded, settings, ctx.train, sink=ctx.sink)


SPEC = displacement_spec(
    "displacement tokens", "Likelihood displacement of single tokens",
    "Single prompt, single-token answers: pi(y+), pi(y-) before/after DPO and where the mass went.",
    run_tokens_spec, TokensParams,
    {"pairs": Option('Answer pairs "y+:y-", comma-separated; each one token.'),
             "statement": Option("The persona statement of the one prompt."),
             "synonyms": Option("YAML/JSON file: word -> list of synonyms (default: prefdyn's small list)."),
             "top_k": Option("Gainers shown per pair, and k of overlap@k."),
             "loss_target": Option("Stop once the DPO loss is below this (else --steps).")})
