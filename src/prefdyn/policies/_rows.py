"""Shuffled, resumable row order shared by the RL batch streams (bandit and rollouts)."""

from __future__ import annotations

import torch


class ShuffledRows:
    """Row ids ``0..n_rows-1`` in a fresh seeded order every epoch, ``rows_per_batch`` at a
    time, endlessly. ``generator`` is the stream's sampling RNG; ``state()`` /
    ``load_state()`` carry the position and that RNG through a checkpoint (JSON-safe), so
    a resumed stream yields what an unbroken one would."""

    def __init__(self, n_rows: int, rows_per_batch: int, seed: int) -> None:
        self.n_rows, self.rows_per_batch, self.seed = n_rows, rows_per_batch, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._restart(0, 0)

    def _restart(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        self.order = torch.randperm(self.n_rows, generator=gen).tolist()

    def next_rows(self) -> list[int]:
        """The next batch of row ids (a new epoch's order once this one is used up)."""
        if self.position >= self.n_rows:
            self._restart(self.epoch + 1, 0)
        rows = self.order[self.position:self.position + self.rows_per_batch]
        self.position += len(rows)
        return rows

    def __iter__(self):
        return self

    def state(self) -> dict:
        """JSON-serializable (it goes into a checkpoint's state.json)."""
        return {"epoch": self.epoch, "position": self.position,
                "generator": self.generator.get_state().tolist()}

    def load_state(self, state: dict) -> None:
        self._restart(int(state["epoch"]), int(state["position"]))
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
