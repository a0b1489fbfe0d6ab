"""Data-parallel search with torch.distributed (``torchrun``): NCCL on GPU, gloo on CPU.

Weights go through DDP; architecture gradients are all-reduced (averaged) by the strategies through
``StepContext.sync_grads`` before every alpha update, so every rank keeps bitwise-identical alphas and
derives the same genotype. Only rank 0 writes logs and checkpoints.
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def env_world() -> tuple[int, int]:
    """(rank, world_size) from the torchrun environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(name: str) -> torch.device:
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name if name != "auto" else "cpu")


def init(device_name: str) -> tuple[int, int]:
    rank, world_size = env_world()
    if world_size > 1 and not dist.is_initialized():
        device = local_device(device_name)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size


def wrap(module: torch.nn.Module) -> DistributedDataParallel:
    # No device_ids: inputs are already on the device, and ArchWeights masks must stay on the CPU.
    # Masked ops get no gradient in a step, hence find_unused_parameters.
    return DistributedDataParallel(module, find_unused_parameters=True)


def all_reduce_grads(params) -> None:
    """Average the gradients of ``params`` over ranks (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (every rank must call it at the same point)."""
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
