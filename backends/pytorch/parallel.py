"""Data parallel, the PyTorch way: torch.distributed + DistributedDataParallel under torchrun.

PyTorch idiom (torchvision ``references/classification/train.py`` and its
``utils.init_distributed_mode``): one process per device started by the
elastic launcher (``torchrun``, ``python -m torch.distributed.run``), which
sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``; the process
group is NCCL on CUDA and gloo on the CPU; each rank reads its shard of the
epoch through a ``DistributedSampler`` (``set_epoch`` reshuffles); the model
is wrapped in ``DistributedDataParallel``, which broadcasts rank 0's weights
when it is built and averages gradients with an all-reduce during
``backward()``. DDP registers only parameters with ``requires_grad``, so the
wrapper is built after a phase has frozen its blocks, and again for every
phase that changes what trains.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from backends.base import BackendError
from common.config import TrainConfig
from common.parallel import device_problem, usable_cores

from .data import shuffle_seed


def init_process_group(train: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) of the torchrun worker this process is.

    NCCL on CUDA (one GPU per process: ``cuda:LOCAL_RANK``), gloo on the CPU. More
    processes on a node than it has GPUs, or a run that was not started by torchrun,
    is a one-line ``BackendError``.
    """
    if "LOCAL_RANK" not in os.environ:
        raise BackendError(f"a run on {train.devices * train.nnodes} devices runs under torchrun; "
                           f"start it with 'bench run --nproc-per-node {train.devices}'")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        found = torch.cuda.device_count()
        if train.devices > found:
            raise BackendError(f"--nproc-per-node {train.devices}: this node has {found} CUDA "
                               f"device(s); use at most {found}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        group = "nccl"
    else:
        # the rule the bench parent checked (common.parallel.device_problem), now with torch's
        # own answer about CUDA
        problem = device_problem(train.devices, train.sync_bn, cuda=False, cores=usable_cores())
        if problem:
            raise BackendError(problem)
        device = torch.device("cpu")
        group = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(group, timeout=timedelta(seconds=max(train.rdzv_timeout, 60)))
    return dist.get_rank(), dist.get_world_size(), device


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP over ``model``'s parameters that have ``requires_grad`` now (frozen ones are
    neither registered nor all-reduced; build a new wrapper when a phase changes them)."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm a ``SyncBatchNorm`` (statistics of the global batch)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def train_sampler(n: int, seed: int) -> DistributedSampler:
    """This rank's shard of the epoch: ranks take every ``world``-th index of one permutation.

    The permutation is ``torch.randperm(n)`` drawn as the single-process
    ``data.EpochShuffleSampler`` draws it (``data.shuffle_seed``), so global batch k of N
    ranks holds exactly the images of that process's batch k (when N divides the split;
    otherwise the last ranks repeat the first images, DistributedSampler's padding).
    """
    return DistributedSampler(range(n), shuffle=True, seed=shuffle_seed(seed), drop_last=False)


def eval_sampler(n: int) -> DistributedSampler:
    """Split order, ranks interleaved: rank r predicts r, r + world, ...; the last ranks
    repeat the first indices so that every rank has as many (``gather_in_order`` drops them)."""
    return DistributedSampler(range(n), shuffle=False, drop_last=False)


def gather_in_order(local: np.ndarray, n: int, device: torch.device) -> np.ndarray:
    """Every rank's rows of an ``eval_sampler`` pass, in split order, the padding dropped:
    the whole split exactly once, on every rank."""
    world = dist.get_world_size()
    tensor = torch.from_numpy(np.ascontiguousarray(local, np.float32)).to(device)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    # rank r's i-th row is index r + i * world: interleave, then cut the padded tail
    rows = torch.stack(parts, dim=1).reshape(-1, *tensor.shape[1:])[:n]
    return rows.cpu().numpy()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over every rank (an all-reduce)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
