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

With an FSDP config (accelerate sets ACCELERATE_USE_FSDP) the model is also sharded, with torch's FSDP2
(`fully_shard`): every decoder layer is a unit and the causal LM around them the root unit (kept
unsharded after its forward, since the loss applies its output layer right after). Parameters,
gradients and AdamW state are sharded over the processes (ZeRO-3); FSDP_RESHARD_AFTER_FORWARD=false
keeps layers gathered between forward and backward (ZeRO-2-like: more memory, less communication) and
FSDP_OFFLOAD_PARAMS=true keeps the shards in CPU memory. Gradients are reduce-scattered as sums (the
loss is already normalised by the global step's tokens); every process runs the same number of forward
passes (a process short of examples runs one more micro-batch with zero weight), because each forward is
a collective. Checkpoints and artifacts hold whole tensors gathered from the shards, so they are the
same files as without FSDP. Not under FSDP: QLoRA (4-bit weights), torch.compile and generation during
training (train.eval_generate_every), each refused with a message.

DeepSpeed ZeRO configs (ACCELERATE_USE_DEEPSPEED; `accelerate launch` itself needs DeepSpeed installed
to start them) are run with the sharding they ask for, done by FSDP2 rather than by a DeepSpeed engine
(tunelab's loop owns the loss normalisation and checkpoints): ZeRO-3 = parameters, gradients and optimizer
state sharded, layers freed after their forward (FSDP FULL_SHARD); ZeRO-1/2 = the same without freeing
layers between forward and backward (FSDP SHARD_GRAD_OP, which PyTorch documents as the ZeRO-2 analogue);
offload to "cpu" keeps the shards in CPU memory. The run's summary says so in its warnings. Where
DeepSpeed or a GPU is missing the run stops with a message naming what is missing.
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
    fsdp: bool = False
    reshard_after_forward: bool = True
    offload: bool = False
    note: str | None = None  # how a DeepSpeed config was mapped, for the run's warnings

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


# -- FSDP ---------------------------------------------------------------------------------------------


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (a collective: every process must call it), else t itself."""
    return t.full_tensor() if is_sharded(t) else t


def gather(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the given parameters (collective under FSDP)."""
    return {name: full(p.detach()).to("cpu", copy=True) for name, p in params.items()}


def load_whole(params: dict[str, nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into parameters, each process keeping its own shard of a sharded one."""
    from torch.distributed.tensor import distribute_tensor

    with torch.no_grad():
        for name, p in params.items():
            w = weights[name]
            if is_sharded(p):
                w = distribute_tensor(w.to(p.device_mesh.device_type, p.dtype), p.device_mesh, p.placements)
            p.copy_(w.to(p.device, p.dtype) if not is_sharded(p) else w)


def shard_model(model: nn.Module, dist: Dist) -> None:
    """FSDP2 over the causal LM inside `model` (a PEFT wrapper or the model itself), in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

    from .loss import base_causal_lm

    causal = base_causal_lm(model)
    layers = getattr(causal.get_decoder(), "layers", None)
    if not layers:
        raise TunelabError(f"FSDP: {type(causal).__name__} has no decoder layers to shard")
    mesh = init_device_mesh(dist.device.type, (dist.world,))
    extra = {"offload_policy": CPUOffloadPolicy()} if dist.offload else {}
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=dist.reshard_after_forward, **extra)
    # The root stays gathered after forward: the loss uses its output layer outside the forward call.
    fully_shard(causal, mesh=mesh, reshard_after_forward=False, **extra)
    for module in causal.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sums: the loss is normalised by the global tokens
            if hasattr(module, "set_force_sum_reduction_for_comms"):  # torch >= 2.8
                module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no pre-multiplied sum)


def reshard(model: nn.Module) -> None:
    """Free gathered parameters after forwards without a backward (validation): the root unit stays
    gathered after its forward, and the optimizer and state-dict helpers expect the sharded ones."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            whole.pop(name, None)  # a tied weight (lm_head = embed_tokens) is saved once, as without FSDP
        seen.add(id(p))
    return whole


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state keyed by parameter name, on rank 0; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Every process loads the whole optimizer state (read from the checkpoint) and keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


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


def _deepspeed_options(cuda: bool) -> tuple[bool, bool, bool, str]:
    """(fsdp, reshard_after_forward, offload, note) for a DeepSpeed ZeRO config; raises where it cannot run."""
    import importlib.util
    import json

    if importlib.util.find_spec("deepspeed") is None:
        raise TunelabError(
            "this run was launched with a DeepSpeed config (ACCELERATE_USE_DEEPSPEED=true), but DeepSpeed is "
            "not installed. DeepSpeed needs CUDA GPUs and builds its kernels with a compiler: install it on "
            "the GPU machines (pip install deepspeed), or launch with configs/accelerate/ddp.yaml or fsdp.yaml")
    if not cuda:
        raise TunelabError("DeepSpeed ZeRO configs need CUDA GPUs; none is visible to this process")
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    offload = {os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
               os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")}
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file and config_file != "None":
        try:
            zero = json.loads(open(config_file, encoding="utf-8").read()).get("zero_optimization", {})
        except (OSError, ValueError) as exc:
            raise TunelabError(f"DeepSpeed config {config_file}: cannot read it ({exc})") from None
        stage = str(zero.get("stage", stage or 0))
        offload |= {str((zero.get(k) or {}).get("device", "none")) for k in ("offload_optimizer", "offload_param")}
    offload = {o.lower() for o in offload} - {"none", ""}
    if offload - {"cpu"}:
        raise TunelabError(f"DeepSpeed offload to {', '.join(sorted(offload - {'cpu'}))} is not supported by "
                           "tunelab's sharding; offload to cpu, or not at all")
    level = int(stage or 0)
    if level == 0:
        return False, True, False, "DeepSpeed ZeRO stage 0 config: plain data parallelism (no sharding)"
    note = (f"DeepSpeed ZeRO-{level} config: tunelab shards with torch FSDP2 instead of a DeepSpeed engine "
            f"({'FULL_SHARD, as ZeRO-3' if level == 3 else 'SHARD_GRAD_OP, the ZeRO-2 analogue'}"
            f"{', shards offloaded to CPU' if offload else ''})")
    return True, level == 3, bool(offload), note


def _fsdp_options(cuda: bool) -> tuple[bool, bool, bool, str | None]:
    """(fsdp, reshard_after_forward, offload, note) from accelerate's FSDP or DeepSpeed environment."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return _deepspeed_options(cuda)
    if not _flag("ACCELERATE_USE_FSDP"):
        return False, True, False, None
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    # FSDP1 configs name a sharding strategy here; SHARD_GRAD_OP (ZeRO-2) keeps layers gathered.
    keep = reshard in ("false", "0", "shard_grad_op", "2", "no_shard", "3", "_hybrid_shard_zero2", "5")
    return True, not keep, _flag("FSDP_OFFLOAD_PARAMS"), None


def setup(device_choice: str) -> Dist | None:
    """Join the process group when a launcher started several processes (or one under an FSDP or
    DeepSpeed config); None for a plain single process."""
    launched = _flag("ACCELERATE_USE_FSDP") or _flag("ACCELERATE_USE_DEEPSPEED")
    if world_size() <= 1 and not (launched and "LOCAL_RANK" in os.environ):
        return None
    want_cuda = device_choice in ("auto", "cuda") or device_choice.startswith("cuda")
    cuda = want_cuda and torch.cuda.is_available()
    if device_choice.startswith("cuda") and not cuda:
        raise TunelabError(f"model.device {device_choice} was requested for a multi-process run, but no CUDA GPU "
                           "is visible; launch on GPU machines, or on CPU with torchrun (gloo)")
    fsdp, reshard, offload, note = _fsdp_options(cuda)
    from accelerate import PartialState

    state = PartialState(cpu=not cuda)
    if state.num_processes <= 1 and not launched:
        raise TunelabError(f"WORLD_SIZE={world_size()} but accelerate did not join a process group "
                           f"(backend {state.backend}); launch with `accelerate launch` or `torchrun`")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    device = torch.device("cpu") if state.device.type == "cpu" else state.device  # accelerate says cpu:0
    if offload and device.type != "cuda":
        raise TunelabError("FSDP_OFFLOAD_PARAMS=true offloads GPU shards to CPU memory; this run has no GPU")
    return Dist(state.process_index, state.num_processes, max(1, local_world), device, str(state.backend),
                fsdp, reshard, offload, note)


def shard(indices: Sequence[int], dist: Dist | None) -> list[int]:
    """This process's share of a global step's examples (round-robin: similar lengths when bucketed)."""
    return list(indices) if dist is None else list(indices[dist.rank :: dist.world])
