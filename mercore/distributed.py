"""Data-parallel training under torchrun: rank helpers, batch sharding and loss scaling.

With ``torchrun --nproc_per_node=P -m mercore run RECIPE`` every process reads the same recipe; each global
batch of ``trainer.batch_size`` dialogues is split across ranks (rank r takes dialogues r, r+P, ...), and
each rank's loss is scaled by its share of the batch's utterances so that the averaged DDP gradient equals
the single-process gradient of the whole batch. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import os

import attrs
import torch
import torch.distributed as tdist

from mercore.data.types import PAD_LABEL, DialogueBatch
from mercore.model_api import ModelOutput


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_if_needed(device_name: str = "cpu") -> None:
    """Start the process group from torchrun's environment (gloo on CPU, nccl on CUDA)."""
    if is_distributed() and not tdist.is_initialized():
        backend = "nccl" if device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available()) else "gloo"
        tdist.init_process_group(backend=backend)


def device_for_rank(device_name: str) -> str:
    if device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available()):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    init_if_needed(str(device))
    # find_unused_parameters: a sparse MoE leaves unselected experts without gradient in some steps.
    ddp = DistributedDataParallel(_AsDict(model), device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=True)
    return _FromDict(ddp)


class _AsDict(torch.nn.Module):
    """Returns the model's ModelOutput as a dict: DDP finds the output tensors in dicts, not in attrs classes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, teacher=None) -> dict:
        out = self.model(batch, teacher=teacher)
        return {f.name: getattr(out, f.name) for f in attrs.fields(type(out))}


class _FromDict(torch.nn.Module):
    """The DDP-wrapped model seen as a mercore model again: ``forward(batch, teacher) -> ModelOutput``."""

    def __init__(self, ddp: torch.nn.Module):
        super().__init__()
        self.ddp = ddp

    def forward(self, batch, teacher=None) -> ModelOutput:
        return ModelOutput(**self.ddp(batch, teacher=teacher))


def shard_batch(batch: DialogueBatch, rank_: int, world: int) -> DialogueBatch:
    """Rank ``rank_``'s share of a global batch: dialogues ``rank_, rank_ + world, ...``."""
    if world <= 1:
        return batch
    idx = list(range(rank_, len(batch.dialogue_ids), world))
    if not idx:  # a last, short batch: give this rank one dialogue with no labels, so collectives still match
        idx = [0]
        labels = torch.full_like(batch.labels[:1], PAD_LABEL)
    else:
        labels = batch.labels[idx]
    return DialogueBatch(
        features={m: f[idx] for m, f in batch.features.items()},
        mask=batch.mask[idx], speakers=batch.speakers[idx], labels=labels,
        dialogue_ids=[batch.dialogue_ids[i] for i in idx],
    )


def scale_loss(loss: torch.Tensor, batch: DialogueBatch) -> torch.Tensor:
    """Scale a rank's mean loss by ``world * local_utterances / global_utterances`` (identity without DDP)."""
    if not is_distributed() or not tdist.is_initialized():
        return loss
    local = (batch.labels != PAD_LABEL).sum().to(torch.float64)
    total = local.clone()
    tdist.all_reduce(total)
    return loss * (world_size() * local / total.clamp_min(1)).to(loss.dtype)


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (scaled) loss over ranks: the global batch's loss, for logging."""
    if not is_distributed() or not tdist.is_initialized():
        return value
    value = value.detach().clone()
    tdist.all_reduce(value)
    return value / world_size()


def barrier() -> None:
    """Wait for every rank (e.g. before reading a checkpoint that rank 0 writes)."""
    if is_distributed() and tdist.is_initialized():
        tdist.barrier()


def gather_to_main(obj: object) -> list | None:
    """Every rank's ``obj`` as a list indexed by rank on rank 0 (``[obj]`` without torchrun), None elsewhere.

    A collective: every rank must call it at the same point (used for per-rank random states in checkpoints).
    """
    if not is_distributed() or not tdist.is_initialized():
        return [obj]
    if tdist.get_backend() == "nccl":  # gather_object stages the pickles on the current CUDA device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    out: list | None = [None] * world_size() if rank() == 0 else None
    tdist.gather_object(obj, out, dst=0)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (the flag itself without torchrun). A collective, like
    :func:`gather_to_main`: ranks agree on a stop request so that all of them save at the same step."""
    if not is_distributed() or not tdist.is_initialized():
        return flag
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if tdist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
    return bool(value.item())
