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


def is_main_process() -> bool:
    """Whether this process writes the run's files (rank 0; every single process)."""
    return process_rank() == 0


def record(train: TrainConfig, engine: str, **extra) -> dict:
    """What result.json says about how the run was spread over devices."""
    return {"devices": train.devices, "nnodes": train.nnodes, "workers": workers(train),
            "global_batch": train.batch_size, "per_device_batch": per_device_batch(train),
            "rule": GLOBAL_BATCH_RULE, "engine": engine, **extra}
