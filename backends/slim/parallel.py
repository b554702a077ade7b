"""Data parallel, the TF-Slim way: clones, as ``train_image_classifier.py --num_clones``.

slim's ``deployment/model_deploy.py`` (which that script uses) builds one tower
("clone") of the network per device in the one graph, each on its slice of the
batch and sharing the variables; each clone's loss is divided by the number of
clones, the gradients of their sum are computed next to each clone's ops
(``colocate_gradients_with_ops``) and applied once, and the BatchNorm update
ops are taken from the first clone only. This is that, on TF 2.21 graph mode:
the devices are the GPUs, or on a CPU ``N`` logical devices split off before the
session starts (``tf.config.set_logical_device_configuration``).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from backends.base import BackendError
from common.parallel import device_problem, usable_cores


def clone_devices(num_clones: int) -> list[str]:
    """The device of each clone: ``/device:GPU:i``, or ``/device:CPU:i`` of logical CPUs."""
    if tf.config.list_physical_devices("GPU"):
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    else:
        # the rule the bench parent checked: a logical CPU per core at most
        problem = device_problem(num_clones, False, cuda=False, cores=usable_cores())
        if problem:
            raise BackendError(problem)
        cpus = tf.config.list_physical_devices("CPU")
        with contextlib.suppress(RuntimeError):  # the runtime already started: keep its devices
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_clones)])
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if num_clones > len(devices):
        raise BackendError(f"--devices {num_clones} (slim's --num_clones): TensorFlow sees "
                           f"{len(devices)} device(s) ({', '.join(devices)}); use at most "
                           f"{len(devices)}")
    return devices[:num_clones]


def split_batch(images: tf.Tensor, labels: tf.Tensor, num_clones: int) -> list[tuple]:
    """The batch in ``num_clones`` consecutive slices (the first ``B % N`` one image longer),
    as model_deploy's clones each dequeued their own share."""
    size = tf.shape(labels)[0]
    sizes = [size // num_clones + tf.cast(i < size % num_clones, tf.int32)
             for i in range(num_clones)]
    return list(zip(tf.split(images, sizes, num=num_clones), tf.split(labels, sizes, num=num_clones)))
