"""Data parallel, the Keras way: one process drives every device.

Keras 3 idiom (keras.io "Distributed training with Keras 3" and "Multi-GPU
distributed training with TensorFlow"):

* on jax, ``keras.distribution.set_distribution(DataParallel(devices=...))``
  before the model is built: variables are replicated on every device, each
  batch is sharded along its first axis, and ``fit`` runs one XLA program
  over the mesh, whose gradient of the mean loss over the global batch XLA
  computes with its own all-reduce;
* on TensorFlow, ``tf.distribute.MirroredStrategy``: model, optimizer and
  ``compile`` inside ``strategy.scope()``; ``fit`` splits each global batch
  of the ``tf.data`` stream over the replicas, each replica's loss is divided
  by the number of replicas, and the optimizer sums the replicas' gradients
  with an all-reduce (their mean).

On a CPU, jax shows N devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
(set by ``bench run`` before jax starts: ``BackendInfo.parallel_environment``) and
TensorFlow N logical CPU devices (``tf.config.set_logical_device_configuration``,
before its runtime starts). Keras on torch has no data-parallel path.
"""

from __future__ import annotations

import contextlib

import keras

from backends.base import BackendError
from common.config import TrainConfig
from common.parallel import device_problem, usable_cores

XLA_HOST_DEVICES = "--xla_force_host_platform_device_count"


def distribute(train: TrainConfig) -> tuple[contextlib.AbstractContextManager, dict]:
    """Spread this process's Keras over ``train.devices`` devices: the scope the model,
    optimizer and ``compile`` must be created in, and what ran (for result.json)."""
    n, backend = train.devices, keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        if all(d.lower().startswith("cpu") for d in devices):  # host devices share the cores
            _refuse_more_than_cores(n)
        if n > len(devices):
            raise BackendError(f"--devices {n}: jax sees {len(devices)} device(s) "
                               f"({', '.join(devices)}); use at most {len(devices)}")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[:n]))
        return contextlib.nullcontext(), {
            "devices_used": devices[:n],
            "gradients": "one XLA program over the device mesh: the gradient of the mean loss "
                         "of the global batch (XLA's all-reduce)",
            "batch_split": "keras.distribution.DataParallel shards each global batch on axis 0",
            "batchnorm": "batch statistics of the global batch (one program over the mesh)"}
    if backend == "tensorflow":
        import tensorflow as tf

        # physical devices only: listing logical ones starts the runtime, after which the
        # CPU can no longer be split into logical devices
        if tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        else:
            _refuse_more_than_cores(n)
            devices = _logical_cpus(tf, n)
        if n > len(devices):
            raise BackendError(f"--devices {n}: TensorFlow sees {len(devices)} device(s) "
                               f"({', '.join(devices)}); use at most {len(devices)}")
        strategy = tf.distribute.MirroredStrategy(devices=devices[:n])
        return strategy.scope(), {
            "devices_used": devices[:n],
            "gradients": "MirroredStrategy: each replica's loss divided by the replica count, "
                         "gradients summed by an all-reduce (their mean)",
            "batch_split": "fit distributes the tf.data stream: each global batch split over "
                           "the replicas",
            "batchnorm": "each replica's own batch (moving statistics averaged on update)"}
    raise BackendError(f"Keras 3 has no data-parallel path on the {backend} backend "
                       f"(keras.distribution runs on jax only); use --devices 1")


def _refuse_more_than_cores(n: int) -> None:
    """The rule the bench parent checked (``common.parallel.device_problem``): a CPU device
    per core at most."""
    problem = device_problem(n, False, cuda=False, cores=usable_cores())
    if problem:
        raise BackendError(problem)


def _logical_cpus(tf, n: int) -> list[str]:
    """``n`` logical CPU devices on the first physical CPU (when the runtime has not
    started yet: afterwards TensorFlow keeps the ones it has)."""
    cpus = tf.config.list_physical_devices("CPU")
    with contextlib.suppress(RuntimeError):  # the runtime already started: keep what it has
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def shard_multiple(train: TrainConfig) -> int:
    """Batches must hold a multiple of this many images: jax shards every batch evenly
    over its devices (MirroredStrategy copes with a short last batch)."""
    return train.devices if keras.backend.backend() == "jax" else 1


def undistribute() -> None:
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)
