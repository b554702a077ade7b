"""Data parallelism, framework-free: the global-batch rule, this process's rank, the record.

Every backend scales out on its framework's own engine (``backends/<fw>/parallel.py``:
torch.distributed DDP under torchrun, ``keras.distribution.DataParallel`` on jax,
``tf.distribute.MirroredStrategy`` on TensorFlow, slim clones); what they share is
decided here, once: ``--batch-size`` is the GLOBAL batch, split evenly over the
devices, and the learning rate is unchanged (no linear scaling), so N devices and
one device take the same optimizer steps on the same images.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.config import TrainConfig

GLOBAL_BATCH_RULE = ("--batch-size is the global batch, split evenly over the devices; "
                     "the learning rate is unchanged (no scaling with the device count)")


def workers(train: TrainConfig) -> int:
    """Devices that share one global batch: devices per node x nodes."""
    return train.devices * train.nnodes


def is_parallel(train: TrainConfig) -> bool:
    return workers(train) > 1


def per_device_batch(train: TrainConfig) -> int:
    """The batch each device computes (``validate_parallel`` made it divide evenly)."""
    return train.batch_size // workers(train)


def process_rank() -> int:
    """This process's global rank: torchrun's ``RANK``, 0 in a single process (Keras and
    slim drive every device from one process)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def process_count() -> int:
    """How many processes share this run: torchrun's ``WORLD_SIZE``, 1 in a single process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Whether this process writes the run's files (rank 0; every single process)."""
    return process_rank() == 0


def record(train: TrainConfig, engine: str, **extra) -> dict:
    """What result.json says about how the run was spread over devices."""
    return {"devices": train.devices, "nnodes": train.nnodes, "workers": workers(train),
            "global_batch": train.batch_size, "per_device_batch": per_device_batch(train),
            "rule": GLOBAL_BATCH_RULE, "engine": engine, **extra}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cuda_visible() -> bool:
    """Whether a CUDA device may be visible to a run started from here, decided without a
    framework (the ``bench`` parent imports none): not when ``CUDA_VISIBLE_DEVICES`` hides
    every device, nor without the NVIDIA driver (no ``/proc/driver/nvidia/gpus/*``) and
    without ``nvidia-smi``."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or shutil.which("nvidia-smi") is not None


def device_problem(devices: int, sync_bn: bool, cuda: bool, cores: int) -> str | None:
    """Why ``devices`` devices on this node (with SyncBatchNorm or not) cannot run, or None:
    without CUDA each device is a CPU device (torch gloo processes, TensorFlow logical CPUs,
    jax host devices) that needs a core of its own, and SyncBatchNorm needs CUDA. The
    ``bench`` parent asks with ``cuda_visible()``, the run's process with its framework's
    answer (``torch.cuda.is_available()``, TensorFlow's GPU list): one rule, checked before
    any framework starts and again where it runs."""
    if cuda:
        return None
    if devices > cores:
        return (f"--devices {devices}: no CUDA device here, and each device on the CPU needs a "
                f"core of its own ({cores} core(s)); use at most --devices {cores}")
    if sync_bn:
        return ("--sync-bn: torch.nn.SyncBatchNorm runs on CUDA devices only and no CUDA device "
                "is visible here (no NVIDIA driver, no nvidia-smi, or CUDA_VISIBLE_DEVICES "
                "hides them); drop --sync-bn on the CPU")
    return None
