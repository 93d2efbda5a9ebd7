"""prefdyn's dynamics recorded inside an unmodified TRL ``DPOTrainer``.

    from prefdyn.integrations.trl import DPODynamicsCallback
    trainer = DPOTrainer(model=model, args=DPOConfig(...), train_dataset=data, processing_class=tok)
    trainer.add_callback(DPODynamicsCallback(trainer, "runs/dpo", concepts="diagnosis.json"))
    trainer.train()

Every ``every`` optimizer steps (and at steps 0 and last) the callback scores a fixed
probe set of the training pairs with prefdyn's own evaluation layer
(:class:`~prefdyn.tracking.concepts.ConceptTracker`, the tracker of prefdyn's loop, so
a TRL run and a prefdyn run give the same numbers and the same run folder) and records:

* per concept and overall: the DPO loss, the reward margin ``beta * h`` and the reward
  accuracy (names: :mod:`prefdyn.tracking.metrics`), plus ``chosen_fell``, the share of
  probe pairs whose chosen log-prob fell below pi_ref's (likelihood displacement,
  Razin et al. 2024, talk slides: "However, the probability of preferred responses often
  decreases!");
* the tokens that gained the most log-probability after the probe prompts
  (:class:`~prefdyn.tracking.DisplacementMonitor` on the first response position);
* ``delta_W_U = ||W_U(t) - W_U(0)||`` and the relative drift of each decoder block
  (:class:`~prefdyn.training.lm_runner.LMTracker`'s definitions);
* every ``distinguishability_every`` steps, the distinguishability ``D = ||mu+ - mu-||``
  (Im & Li 2024, Sec. 3, :func:`~prefdyn.diagnostics.distinguishability.behavior_stats`)
  of the probe's chosen against its rejected sequences, each represented by the last
  hidden state at its last token (the input of ``W_U`` there). Im & Li (Sec. 1): "We
  characterize the data distributions through the lens of *preference
  distinguishability*, which refers to how far apart the distributions for the preferred
  and non-preferred responses are." They measure it on prompts whose answer is a single
  token; this sequence-level version is prefdyn's extension for multi-token pairs.

The numbers go through the trainer's own logging (``Trainer.log``, so every
``report_to`` backend and ``trainer.state.log_history`` get them, keys ``prefdyn/...``)
and to prefdyn's run folder: ``metrics.jsonl`` (History records), ``concepts.jsonl``
and ``pair_logps.json`` (read by ``prefdyn compare``), ``summary.json``.

The probe's sequences are truncated as TRL truncates them (``max_length``,
``truncation_mode``) and scored in eval mode, without grad; the model's train mode is
restored after. Under several processes (DDP) rank 0 measures and writes; a model
sharded over processes (FSDP, ZeRO-3) is not supported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from prefdyn.diagnostics.distinguishability import behavior_stats
from prefdyn.errors import PrefdynError
from prefdyn.integrations.trl._probe import (
    MemoryStart,
    by_pair,
    pair_batches,
    probe_indices,
    prompt_batch,
    resolve_concepts,
)
from prefdyn.losses import get_loss
from prefdyn.policies.lm import LMPolicy, PairBatch, to_device
from prefdyn.tracking.concepts import ConceptTracker
from prefdyn.tracking.displacement import DisplacementMonitor
from prefdyn.tracking.evaluate import answer_logprobs, eval_mode
from prefdyn.tracking.history import History
from prefdyn.tracking.run_dir import RunDir
from prefdyn.training.lm_runner import LMTracker

logger = logging.getLogger(__name__)

__all__ = ["DPODynamicsCallback", "dpo_objective", "sequence_distinguishability"]

_TRL_LOSSES = {"sigmoid": "dpo", "ipo": "ipo"}


def dpo_objective(args: Any):
    """prefdyn's loss for a ``DPOConfig`` (``loss_type`` ``sigmoid`` or ``ipo``, ``beta``)."""
    loss_type = args.loss_type if isinstance(args.loss_type, str) else list(args.loss_type)
    kinds = [loss_type] if isinstance(loss_type, str) else loss_type
    if len(kinds) != 1 or kinds[0] not in _TRL_LOSSES:
        raise PrefdynError(f"DPODynamicsCallback knows TRL's loss_type {sorted(_TRL_LOSSES)}, "
                           f"got {loss_type!r}; pass objective= (a prefdyn loss) yourself")
    return get_loss(_TRL_LOSSES[kinds[0]], beta=args.beta)


@torch.no_grad()
def sequence_distinguishability(policy: LMPolicy, batches: Sequence[PairBatch]) -> dict[str, float]:
    """``D``, ``D_debiased`` and ``separable_share`` of the chosen vs the rejected sequences
    of ``batches``, each sequence represented by the last hidden state at its last token
    (see the module docstring)."""
    decoder, _ = policy._parts(policy.model)
    device = next(policy.model.parameters()).device
    chosen, rejected = [], []
    with eval_mode(policy):
        for batch in batches:
            batch = to_device(batch, device)
            position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=position_ids, use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(hidden), device=device), batch.attention_mask.sum(-1) - 1]
            chosen.append(last[:len(batch)].float().cpu())
            rejected.append(last[len(batch):].float().cpu())
    embeddings = torch.cat([*chosen, *rejected])
    labels = torch.arange(len(embeddings)) < len(embeddings) // 2
    stats = behavior_stats(embeddings, labels)
    return {"D": stats.D, "D_debiased": stats.D_debiased, "separable_share": stats.separable_share}


class DPODynamicsCallback(TrainerCallback):
    """Records prefdyn's dynamics in a TRL ``DPOTrainer`` (see the module docstring).

    Args:
        trainer: the ``DPOTrainer`` (built: its ``train_dataset`` is tokenized).
        run_dir: prefdyn's run folder for this run.
        concepts: the concept of every pair: a ``diagnosis.json`` path, a column of the
            data set, a list of ints (see :func:`~prefdyn.integrations.trl._probe.resolve_concepts`),
            or None for one concept.
        concept_names: names for a list of ints.
        probe: the probe pairs: their positions in the data set, or how many (taken round-robin
            over the concepts).
        every: measure every ``every`` optimizer steps (and at the first and last).
        top_k: how many top-gaining tokens to record.
        distinguishability_every: measure ``D`` every this many steps (None: at the first and
            last measurement only; 0: never).
        batch_size: pairs per probe forward pass.
        objective: prefdyn's loss matching the trainer's (default: from ``trainer.args``).
        index_column: a column of the data set holding each row's pair index in the
            diagnosed data's load order, when the trainer sees a subset or another order
            (default: the row's position).
    """

    prefix = "prefdyn/"

    def __init__(self, trainer: Any, run_dir: str | Path, *, concepts: Any = None,
                 concept_names: Sequence[str] | None = None, probe: int | Sequence[int] = 64,
                 every: int = 10, top_k: int = 10, distinguishability_every: int | None = None,
                 batch_size: int = 8, objective: Any = None, index_column: str | None = None):
        if every < 1:
            raise PrefdynError(f"every must be >= 1, got {every}")
        self.trainer, self.every, self.dist_every = trainer, every, distinguishability_every
        self.policy: LMPolicy | None = None
        # Under several processes (DDP) rank 0 measures, logs and writes; the others idle.
        self.active = bool(trainer.is_world_process_zero())
        if not self.active:
            return
        dataset, tok = trainer.train_dataset, trainer.processing_class
        tok = getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        pair_index = list(dataset[index_column]) if index_column is not None else None
        concept_of, names = resolve_concepts(concepts, dataset, concept_names, pair_index=pair_index)
        positions = probe_indices(probe, concept_of)
        self.batches = pair_batches(dataset, positions, pad_id, batch_size, pair_index,
                                    max_length=getattr(trainer.args, "max_length", None),
                                    truncation_mode=getattr(trainer.args, "truncation_mode", "keep_start"))
        self.indices = torch.cat([b.rows for b in self.batches]).tolist()  # pair indices
        self.run = RunDir(run_dir, config={"trainer": type(trainer).__name__, "probe": self.indices,
                                           "concepts": names, "every": every,
                                           "args": trainer.args.to_dict()}, seed=trainer.args.seed)
        self.history = History(self.run)
        self.tracker = ConceptTracker(objective or dpo_objective(trainer.args), self.batches,
                                      concepts=by_pair(concept_of, pair_index or range(len(dataset))),
                                      names=names, folder=run_dir,
                                      history=self.history, every=every, name="trl")
        prompts, first_chosen, first_rejected = prompt_batch(self.batches, pad_id)
        self.monitor = DisplacementMonitor(prompts, answer_logprobs, history=History(), every=every,
                                           top_k=top_k, tokenizer=tok,
                                           pair_ids=lambda _: (first_chosen, first_rejected))
        self._last_step: int | None = None
        self.last: dict[str, Any] = {}

    # -- the policy view of the trainer's model --------------------------------------

    def _policy(self) -> LMPolicy:
        model, ref = self.trainer.model, self.trainer.ref_model
        policy = LMPolicy(model, reference_model=ref)
        if ref is None and not policy.lora:
            # precompute_ref_log_probs without a ref_model: W(0) exists only now.
            policy.start_weights, policy.at_start = MemoryStart(model), True
        return policy

    # -- the trainer's events ----------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.active:
            return
        self.policy = self._policy()
        self.tracker.on_setup(self.policy)
        self.monitor.on_setup(self.policy)
        self.policy.at_start = False
        self.measure(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.policy is None:
            return
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.policy is None:
            return
        if state.global_step != self._last_step:
            self.measure(state.global_step)
        self.run.write_summary({"step": self._last_step, **self.last})
        self.run.close()

    # -- one measurement ---------------------------------------------------------------

    def _wants_distinguishability(self, step: int) -> bool:
        if self.dist_every == 0:
            return False
        if self.dist_every is None:
            return self._last_step is None or step == self.trainer.state.max_steps
        return step % self.dist_every == 0

    def measure(self, step: int) -> dict[str, Any]:
        """Score the probe now; record to the run folder and log through the trainer."""
        policy = self.policy
        if policy is None:
            raise PrefdynError("DPODynamicsCallback.measure before the trainer started")
        self.tracker.record(step, policy)
        probe_record = next(r for r in reversed(self.history.records)
                            if r.get("split") == "probe" and r.get("group") is None)
        whole = {k: v for k, v in probe_record.items() if isinstance(v, float)}
        gains = self.monitor.measure(policy)
        record: dict[str, Any] = {"top_gain_tokens": gains["top_gain_tokens"], "top_gain": gains["top_gain"],
                                  **LMTracker(History()).weight_change(policy)}
        if self._wants_distinguishability(step):
            record |= {f"distinguishability/{k}": v
                       for k, v in sequence_distinguishability(policy, self.batches).items()}
        self.history.add({"step": step, "split": "probe_model", "problem": "trl", "group": None, **record})
        logs = {f"{self.prefix}{k}": v for k, v in whole.items()}
        logs |= {f"{self.prefix}concept/{c}/{k}": v
                 for c, means in (self.tracker.last_concepts or {}).items() for k, v in means.items()}
        logs |= {f"{self.prefix}{k}": v for k, v in record.items() if isinstance(v, float)}
        logs[f"{self.prefix}top_gain"] = gains["top_gain"][0]
        # Trainer.log, not the DPOTrainer override: that one would also flush (and so move
        # to this step) the batch metrics TRL is averaging for its next logging step. Its
        # on_log event clears should_log, which would skip the trainer's own log of this step.
        should_log = self.trainer.control.should_log
        Trainer.log(self.trainer, logs)
        self.trainer.control.should_log = should_log
        logger.info("step %d: top-gaining tokens %s", step, gains["top_gain_tokens"])
        self._last_step, self.last = step, {**whole, **record}
        return logs
