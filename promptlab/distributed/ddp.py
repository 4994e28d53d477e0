"""Data-parallel contrastive fine-tuning: ``torchrun --nproc-per-node N -m promptlab.cli finetune CONFIG``.

Every rank takes the same global batch of ``batch_size`` examples (the data order is a pure function of
seed and epoch) and embeds only its own contiguous ``batch_size / N`` examples. The vectors are gathered
across ranks, each rank putting its own rows back in place with their autograd graph, so the InfoNCE loss
sees every rank's examples as in-batch negatives (as SimCSE's multi-GPU training does, Gao et al., 2021)
and equals the loss of one process on the whole batch. Each rank's backward then yields the gradient
through its own rows; summing the LoRA gradients over ranks (one all-reduce) gives exactly the one-process
gradient, so every rank takes the same optimizer step and the adapters stay identical.

The model's forward goes through the `Embedder`'s backend, not through a module we call, so gradients are
summed explicitly after ``backward`` rather than by `torch.nn.parallel.DistributedDataParallel`'s hooks;
only the LoRA parameters (the trainable ones) are communicated. Rank 0 alone writes checkpoints, the best
adapter and the log; a run resumes on any number of ranks, because the global batch does not depend on it.
Process groups use gloo on CPU and NCCL on GPUs (one GPU per rank, ``LOCAL_RANK``).

The equality with one process holds for objectives without random noise (``supervised`` and
``two_template`` with ``lora_dropout = 0``); with dropout noise each rank draws masks for its own rows, so
runs agree in distribution rather than number for number.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch

from promptlab.errors import PromptlabError


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` ranks of a data-parallel run (``rank`` 0 writes the files)."""

    rank: int
    world: int

    @classmethod
    def from_environment(cls) -> DataParallel | None:
        """The run `torchrun` started this process in (joining its process group), or None outside one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        import torch.distributed as dist

        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group("nccl")
            else:
                dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world:
            lower = max(self.world, batch_size - batch_size % self.world)
            raise PromptlabError(
                f"batch_size {batch_size} does not split evenly over {self.world} ranks; set batch_size to a "
                f"multiple of {self.world} (e.g. --set batch_size={lower}), or change --nproc-per-node."
            )

    def owners(self, n: int) -> list[int]:
        """The rank that embeds each of ``n`` examples: contiguous blocks of ``n / world``."""
        self.check_batch_size(n)
        return [i // (n // self.world) for i in range(n)]

    def encode(
        self, view, groups: Sequence[tuple[Sequence[str], Sequence[int]]], *, denoise: bool = False
    ) -> list[torch.Tensor]:
        """Each group's vectors over all ranks, [len(texts), H] in group order: this rank embeds its own rows
        (``owners[i] == rank``) in one forward, with gradients; the other rows come from the other ranks."""
        import torch.distributed as dist

        from promptlab.finetune.objectives import encode_with_grad

        mine = [[t for t, o in zip(texts, owners, strict=True) if o == self.rank] for texts, owners in groups]
        local = encode_with_grad(view, [t for texts in mine for t in texts], denoise=denoise)  # [m, H]
        # counts[r][g]: rows of group g that rank r embedded (known to every rank: the batch is shared).
        counts = [[list(owners).count(r) for _, owners in groups] for r in range(self.world)]
        longest = max(sum(c) for c in counts)
        padded = torch.zeros(longest, local.shape[1], dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local.detach()
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        pieces = []  # pieces[r]: rank r's rows split by group
        for r in range(self.world):
            rows = local if r == self.rank else gathered[r][: sum(counts[r])]
            pieces.append(torch.split(rows, counts[r]))
        return [torch.cat([pieces[r][g] for r in range(self.world)]) for g in range(len(groups))]

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks (one all-reduce of one flat buffer)."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Rank 0's values of ``params`` on every rank."""
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
