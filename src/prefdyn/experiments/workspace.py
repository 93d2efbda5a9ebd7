"""What every experiment starts from: a model's view of a set of behaviors.

Loading the model, rendering the prompts and extracting the embeddings happen
once (embeddings cached on disk by content hash); experiments then only train
the last layer on these tensors.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn._runtime import resolve_device
from prefdyn.data import BehaviorData, TaskConfig, build_behaviors, load_demo, load_persona_dir
from prefdyn.embeddings import cached_embeddings
from prefdyn.errors import DataError
from prefdyn.experiments.config import DataConfig, ModelConfig
from prefdyn.models import LoadedModel, answer_token_ids, load_model, unembedding
from prefdyn.policies.last_layer import LastLayerData, stack_problems
from prefdyn.training import LastLayerRun, TrainConfig, fit_last_layer

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """Behaviors with their embeddings and the answer rows of the unembedding.

    embeddings[i]: (n_i, d) g(x) of every row of behaviors[i]; other_lse[i]: (n_i,)
    logsumexp of the logits of every token except the two answers (frozen in
    last-layer training, so log-probs stay full-vocabulary ones); W_U: (V, d) the
    unembedding; answer_ids: the token ids of (yes, no).
    """

    model_name: str
    model_fingerprint: str
    behaviors: list[BehaviorData]
    embeddings: list[Tensor]
    other_lse: list[Tensor]
    W_U: Tensor
    answer_ids: list[int]

    @property
    def W_answers(self) -> Tensor:
        """(2, d) the unembedding rows of the (yes, no) answers."""
        return self.W_U[self.answer_ids]

    def start_weights(self, rows: str) -> tuple[Tensor, int, int]:
        """(W_init, yes row, no row) for ``rows="answers"`` (2 rows) or ``"all"`` (V rows)."""
        if rows == "all":
            return self.W_U, self.answer_ids[0], self.answer_ids[1]
        return self.W_answers, 0, 1

    def fit(self, data: LastLayerData, cfg: TrainConfig, *, start: Tensor | None = None,
            reference: Tensor | None = None, **kwargs) -> LastLayerRun:
        """Last-layer training from this model's unembedding; ``cfg.rows`` picks the rows.

        ``start``/``reference`` override the initial/reference weights (same rows).
        """
        W0, yes, no = self.start_weights(cfg.rows)
        if cfg.rows == "all":
            # Every row is trained: the softmax runs over the whole vocabulary.
            data = dataclasses.replace(data, other_lse=None)
        return fit_last_layer(W0 if start is None else start, data, cfg, yes=yes, no=no,
                              reference=reference, **kwargs)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.behaviors]

    @property
    def d(self) -> int:
        return self.W_answers.shape[1]

    def rows(self, i: int, split: str) -> Tensor:
        b = self.behaviors[i]
        return {"train": b.train_idx, "test": b.test_idx, "all": torch.arange(b.n)}[split]

    def problems(self, which: list[int] | None = None, *, split: str = "train",
                 flip: bool = False) -> LastLayerData:
        """Each behavior as an independent last-layer problem (vectorized)."""
        which = list(range(len(self.behaviors))) if which is None else which
        idx = [self.rows(i, split) for i in which]
        return stack_problems(
            [self.embeddings[i][r] for i, r in zip(which, idx)],
            [self.behaviors[i].prefers_yes[r] ^ flip for i, r in zip(which, idx)],
            other_lse=[self.other_lse[i][r] for i, r in zip(which, idx)])

    def mixture(self, which: list[int] | None = None, *, split: str = "train",
                flip: bool = False) -> LastLayerData:
        """The behaviors concatenated into one problem; ``groups`` says which row is whose."""
        which = list(range(len(self.behaviors))) if which is None else which
        idx = [self.rows(i, split) for i in which]
        return stack_problems(
            [torch.cat([self.embeddings[i][r] for i, r in zip(which, idx)])],
            [torch.cat([self.behaviors[i].prefers_yes[r] ^ flip for i, r in zip(which, idx)])],
            groups=[torch.cat([torch.full((len(r),), k) for k, r in enumerate(idx)])],
            other_lse=[torch.cat([self.other_lse[i][r] for i, r in zip(which, idx)])])


def load_items(data: DataConfig):
    """Persona items by behavior: the bundled demo set or a folder of persona files."""
    if data.path is None:
        demo = set(load_demo().keys()) if data.behaviors else set()
        missing = [b for b in data.behaviors or [] if b not in demo]
        if missing:
            raise DataError(f"the bundled demo data has no file for {', '.join(missing)}; give the "
                            "persona folder with --data (e.g. --data ../shared/data/persona)")
        return load_demo(data.behaviors)
    return load_persona_dir(data.path, data.behaviors)


@torch.no_grad()
def other_logsumexp(embeddings: Tensor, W_U: Tensor, exclude: list[int],
                    chunk: int = 256) -> Tensor:
    """logsumexp over all vocabulary rows but ``exclude`` of ``W_U g``: (n,)."""
    keep = torch.ones(W_U.shape[0], dtype=torch.bool)
    keep[exclude] = False
    W = W_U[keep].float()
    return torch.cat([torch.logsumexp(e @ W.T, dim=-1) for e in embeddings.split(chunk)])


def prepare_workspace(model: ModelConfig, data: DataConfig, task: TaskConfig, *,
                      progress: bool = False, loaded: LoadedModel | None = None) -> Workspace:
    """Load the model and data, render prompts, extract (or read cached) embeddings."""
    device = resolve_device(model.device)
    if loaded is None:
        loaded = load_model(model.name, cache_dir=model.cache_dir, device=device,
                            trust_remote_code=model.trust_remote_code)
    answers = task.resolved_answers
    answer_ids = answer_token_ids(loaded.tokenizer, answers)
    tokenizer = loaded.tokenizer if task.chat_template else None
    behaviors = build_behaviors(load_items(data), tokenizer, task)
    texts = [p for b in behaviors for p in b.prompts]
    log.info("embedding %d prompts of %d behaviors with %s", len(texts), len(behaviors), loaded.name)
    # One call for all behaviors: they share the template prefix, computed once.
    all_emb = cached_embeddings(loaded, texts, cache_dir=model.cache_dir,
                                batch_size=model.batch_size, reuse_prefix=model.reuse_prefix,
                                progress=progress, device=device).cpu()
    embeddings = list(all_emb.split([b.n for b in behaviors]))
    W_U = unembedding(loaded.model).detach().float().cpu()
    return Workspace(
        model_name=loaded.name, model_fingerprint=loaded.fingerprint, behaviors=behaviors,
        embeddings=embeddings,
        other_lse=[other_logsumexp(e, W_U, answer_ids) for e in embeddings],
        W_U=W_U, answer_ids=answer_ids)
