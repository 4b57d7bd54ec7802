"""Multi-process training: data parallelism over processes started by `accelerate launch` or `torchrun`.

When the launcher starts N > 1 processes (WORLD_SIZE > 1), accelerate's PartialState initializes the
process group (gloo on CPU, nccl on CUDA, one GPU per process) and tunelab trains with DDP semantics:

- Every process builds the same model from the same seed (and rank 0's weights are broadcast anyway)
  and computes the same epoch order, so all agree on every step's examples and on the step count.
- The train.batch_size examples of a micro-batch are per process: one optimizer step takes
  batch_size x grad_accum x world_size examples (the global batch), dealt out round-robin.
- Each process backpropagates the summed NLL of its share divided by the loss-token count of the
  *whole global step* (every process knows it, since all know the step's examples); gradients are then
  summed over processes (one all-reduce per step, flattened into buckets, as DDP does with no_sync
  during accumulation). The result is the gradient of the token-mean loss over the global batch: the
  same update as one process with the same global batch.
- Validation batches are split between processes and their NLL sums and token counts all-reduced.
- Only rank 0 writes (prepared data, checkpoints, logs, artifacts, summary) and reports progress;
  the others wait at barriers where they need what rank 0 wrote.

FSDP and DeepSpeed ZeRO configs (configs/accelerate/) are recognized from accelerate's environment
(ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED); `check_backend` says clearly what is missing where
they cannot run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TunelabError

# Gradients are all-reduced in flat buckets of about this size (fewer, larger messages).
BUCKET_BYTES = 64 << 20


@dataclass
class Dist:
    """This process's place in the group and the few collectives the loop needs."""

    rank: int
    world: int
    local_world: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _tensor(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float64, device=self.device)

    def sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        t = self._tensor(values)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def check_same(self, value: int, what: str) -> None:
        """Raise on every rank when ranks disagree (they would deadlock at the next collective)."""
        import torch.distributed as dist

        t = self._tensor([value, -value])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t[0].item() != -t[1].item():
            raise TunelabError(f"the {self.world} processes disagree on {what} ({-t[1].item():g} to "
                               f"{t[0].item():g}); every process must see the same data and config")

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. prepares data), the others after it (and reuse its output)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def broadcast_params(self, params: Iterable[nn.Parameter]) -> None:
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def all_reduce_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every trainable parameter's gradient over processes. A parameter no process produced a
        gradient for keeps none (AdamW then skips it, as in one process)."""
        import torch.distributed as dist

        params = list(params)
        had = self._tensor([p.grad is not None for p in params])
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in params]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        dist.all_reduce(had)
        for p, count in zip(params, had.tolist(), strict=True):
            if count == 0:
                p.grad = None


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive gradients of one dtype and device, up to BUCKET_BYTES each."""
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or g.dtype != bucket[0].dtype or g.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += nbytes
    if bucket:
        yield bucket


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TunelabError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_backend(cuda: bool) -> None:
    """FSDP and DeepSpeed configs: say clearly why they cannot run here."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TunelabError(
                "this run was launched with a DeepSpeed config (ACCELERATE_USE_DEEPSPEED=true), but DeepSpeed is "
                "not installed. DeepSpeed needs CUDA GPUs and builds its kernels with a compiler: install it on "
                "the GPU machines (pip install deepspeed), or launch with configs/accelerate/ddp.yaml or fsdp.yaml"
            )
        if not cuda:
            raise TunelabError("DeepSpeed ZeRO configs need CUDA GPUs; none is visible to this process")
        raise TunelabError(
            "DeepSpeed is installed, but tunelab's training loop drives data parallelism itself (token-normalised "
            "gradients across processes) and does not hand the model to a DeepSpeed engine; launch with "
            "configs/accelerate/fsdp.yaml, which shards parameters, gradients and optimizer state like ZeRO-3"
        )


def setup(device_choice: str) -> Dist | None:
    """Join the process group when a launcher started several processes; None for a single process."""
    if world_size() <= 1:
        return None
    want_cuda = device_choice in ("auto", "cuda") or device_choice.startswith("cuda")
    cuda = want_cuda and torch.cuda.is_available()
    if device_choice.startswith("cuda") and not cuda:
        raise TunelabError(f"model.device {device_choice} was requested for a multi-process run, but no CUDA GPU "
                           "is visible; launch with --cpu (gloo) or on GPU machines")
    check_backend(cuda)
    from accelerate import PartialState

    state = PartialState(cpu=not cuda)
    if state.num_processes <= 1:
        raise TunelabError(f"WORLD_SIZE={world_size()} but accelerate did not join a process group "
                           f"(backend {state.backend}); launch with `accelerate launch` or `torchrun`")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    device = torch.device("cpu") if state.device.type == "cpu" else state.device  # accelerate says cpu:0
    return Dist(state.process_index, state.num_processes, max(1, local_world), device, str(state.backend))


def shard(indices: Sequence[int], dist: Dist | None) -> list[int]:
    """This process's share of a global step's examples (round-robin: similar lengths when bucketed)."""
    return list(indices) if dist is None else list(indices[dist.rank :: dist.world])
