"""Data-parallel LM training under ``accelerate launch`` (or torchrun).

Each process draws the same global minibatch (same seed), keeps its shard
(``rows[rank::world]``, see :meth:`LMBatchStream.layout`) and back-propagates
the sum of its shard's example losses; :meth:`Distributed.grad_sync` then sums the
gradients across processes and divides by the global batch size (DDP's plain average when
shards are equal), so the update is the one-process update of the global batch
also for an epoch's short last batch. The sync is an explicit all-reduce in
the one training step rather than a ``DistributedDataParallel`` wrapper because
:class:`~prefdyn.policies.lm.LMPolicy` calls the decoder and the head
directly (DDP only syncs what goes through its own ``forward``). Only rank 0
writes metrics and checkpoints.

Process set-up is accelerate's ``PartialState``, which reads the variables
``accelerate launch`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and picks NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn._runtime import is_main_process  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    """This process's place in the run; ``world == 1`` means no communication at all."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def grad_sync(self, grads: list[Tensor], finite: bool, n_examples: int) -> bool:
        """Replace ``grads`` (this process's gradients of the sum of its ``n_examples``
        example losses) by their sum over processes divided by the global number of
        examples (one flat all-reduce), which is the gradient of the global batch's mean
        loss even when shards are uneven; return whether every process had a finite loss."""
        import torch.distributed as dist

        device = grads[0].device
        flat = torch.cat([g.reshape(-1).float() for g in grads] +
                         [torch.tensor([float(n_examples), 0.0 if finite else 1.0], device=device)])
        if not finite:
            flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        total, bad = flat[-2].item(), flat[-1].item() > 0
        flat = flat[:-2] / max(total, 1.0)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g).to(g.dtype))
            offset += g.numel()
        return not bad

    def gather(self, t: Tensor) -> Tensor:
        """Per-example values of every process, concatenated in rank order (last dim)."""
        import torch.distributed as dist

        sizes = [torch.zeros((), dtype=torch.long, device=t.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor(t.shape[-1], device=t.device))
        width = int(max(s.item() for s in sizes))
        padded = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[..., :int(s)] for p, s in zip(parts, sizes)], dim=-1)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Together: a process that tears down while another still talks to it leaves a
        # gloo thread on a closed connection, which aborts the other process.
        dist.barrier()
        dist.destroy_process_group()


def launched_world_size() -> int:
    """How many processes the launcher started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: torch.device | None = None) -> Distributed:
    """A :class:`Distributed` for this process and the device it should train on;
    initialises the process group (via accelerate) only when the launcher started
    more than one process."""
    if launched_world_size() <= 1:
        return Distributed(0, 1, torch.device(device) if device is not None else None)
    try:
        from accelerate import PartialState
    except ImportError as e:  # pragma: no cover - accelerate is a declared dependency
        raise RuntimeError("multi-process training needs accelerate: pip install accelerate") from e
    cpu = device is not None and torch.device(device).type == "cpu"
    state = PartialState(cpu=cpu)
    # Torn down before the interpreter exits: gloo's threads still running at exit abort
    # the process ("terminate called without an active exception") after a finished run.
    atexit.unregister(_destroy_process_group)  # once, however many runs this process sets up
    atexit.register(_destroy_process_group)
    # On GPUs each process takes its own (cuda:LOCAL_RANK), whatever ``device`` said.
    device = torch.device("cpu") if cpu else state.device
    log.info("process %d of %d on %s (%s)", state.process_index, state.num_processes,
             device, state.backend)
    return Distributed(state.process_index, state.num_processes, device)
