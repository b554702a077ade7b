"""The common split as a tf.data pipeline inside the slim graph.

TF1 idiom: one reinitializable iterator (``Iterator.from_structure``) whose
``get_next()`` tensors feed every tower; each subset is a dataset with its own
initializer op (train with and without augmentation, val, test; throughput's batch
is held on the device instead, ``throughput.py``); training reads the shuffled ``fit`` datasets,
prediction the ``train``/``val``/``test`` ones in split order. Switching subset or starting an epoch is one
``session.run(initializer)``; the hot path has no ``feed_dict``.

Per element: ``(path, label)`` -> ``tf.numpy_function`` of the recipe preset's
decoder (``common.preprocess.Preset``: ``eval_image`` finishes an evaluation
image in ``common``, the same array in every backend; ``train_source`` is what a
training crop is taken from) -> when augmenting, the preset's training
augmentation as ``tf.image`` stateless ops seeded by (epoch seed, element
index) -> ``common.preprocess`` normalisation -> batch -> prefetch, with tf.data's autotuner
off (``backends.tf_data``: with it on, each re-initialisation could wait 0.45 s). Images
are NHWC float32.

``inception`` is slim's ``inception_preprocessing.preprocess_for_train`` (tf_slim
1.1 ships the nets but not ``preprocessing/``, which lives in tensorflow/models
research/slim), written with stateless ops so that an epoch's augmentation
depends on (seed, epoch) only: ``distorted_bounding_box_crop``
(``sample_distorted_bounding_box`` with the whole image as the box,
``min_object_covered`` 0.1, area [0.05, 1], aspect [0.75, 1.33], 100 attempts), a
bilinear resize, a left-right flip and ``distort_color`` (brightness, then
saturation), clipped to [0, 1]: its ``fast_mode=True``, which
``train_image_classifier.py`` runs.
``torchvision`` uses the same sampler with torchvision's bounds and 10 attempts
(TensorFlow has no RandomResizedCrop sampler). With ``fidelity.crop_sampler =
"aligned"`` the ``fit`` datasets take the epoch's order and each sample's box,
flip and colour amounts from ``common.sampler`` (fed the run's ``epoch``) and
apply them with ``tf_image.apply_params``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from backends import tf_image
from backends.tf_data import without_autotuner
from common.data import Sample, drops_last_batch
from common.preprocess import Normalisation, Preset, get_preset
from common.sampler import sample_order, train_example

SUBSETS = ("train", "val", "test")


def _decode(path: tf.Tensor, size: int, decode, shape) -> tf.Tensor:
    """``decode(path, size)`` (the preset's, in ``common``) as a graph op: uint8 RGB."""
    image = tf.numpy_function(lambda p: decode(os.fsdecode(p), size), [path], tf.uint8,
                              stateful=False)
    image.set_shape(shape)
    return image


def preprocess_for_train(image: tf.Tensor, size: int, preset: Preset, seed: tf.Tensor) -> tf.Tensor:
    """``preset``'s training augmentation of a uint8 image: ``[size, size, 3]``, uint8
    (``simple``) or float32 in [0, 255] (the resized crops: ``backends.tf_image``, the ops
    Keras' tf.data pipeline runs too); the normalisation follows."""
    if preset.crop == "random_crop":
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
        return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf_image.resized_crop_augment(image, size, preset, seed)


def normalise(image: tf.Tensor, norm: Normalisation) -> tf.Tensor:
    """``common.preprocess`` normalisation with tf ops (NHWC, RGB in)."""
    x = tf.cast(image, tf.float32) * norm.scale
    if norm.channel_order == "bgr":
        x = x[..., ::-1]
    return (x - tf.constant(norm.mean, tf.float32)) / tf.constant(norm.std, tf.float32)


def make_dataset(samples: list[Sample], image_size: int, norm: Normalisation, batch_size: int, *,
                 augment: bool = False, shuffle: bool = False,
                 epoch_seed: tf.Tensor | None = None, num_workers: int = 0,
                 preset: Preset | None = None, epoch: tf.Tensor | None = None,
                 common_sampler_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (normalised images ``[B, S, S, 3]``, int64 labels) over ``samples``; a
    shuffled (training) dataset never ends with a batch of one (``drops_last_batch``).
    ``common_sampler_seed`` (``fidelity.crop_sampler = "aligned"``): a shuffled dataset
    takes ``epoch``'s order and augmentation from ``common.sampler`` with that seed."""
    # file names as bytes: a name need not be UTF-8
    paths = tf.constant([os.fsencode(s.path) for s in samples], tf.string)
    labels = tf.constant([s.label for s in samples], tf.int64)
    preset = preset or get_preset("simple")
    if shuffle and common_sampler_seed is not None:
        return _common_sampler_dataset(paths, labels, image_size, norm, batch_size, augment,
                                       epoch, num_workers, preset, common_sampler_seed)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        # a new order every epoch, reproducible: the seed is fed to the initializer
        ds = ds.shuffle(max(len(samples), 1), seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate()

    def load(index, item):
        path, label = item
        if not augment:
            image = _decode(path, image_size, preset.eval_image, [image_size, image_size, 3])
            return normalise(image, norm), label
        image = _decode(path, image_size, preset.train_source, [None, None, 3])
        image = preprocess_for_train(image, image_size, preset, tf.stack([epoch_seed, index]))
        return normalise(image, norm), label

    # --workers: num_parallel_calls (0: AUTOTUNE)
    ds = ds.map(load, num_parallel_calls=num_workers or tf.data.AUTOTUNE, deterministic=True)
    drop = shuffle and drops_last_batch(len(samples), batch_size)
    return without_autotuner(ds.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE))


def _common_sampler_dataset(paths: tf.Tensor, labels: tf.Tensor, image_size: int,
                            norm: Normalisation, batch_size: int, augment: bool, epoch: tf.Tensor,
                            num_workers: int, preset: Preset, seed: int) -> tf.data.Dataset:
    """A training dataset in ``epoch``'s order drawn by ``common.sampler``, each image
    augmented by ``tf_image.apply_params`` with the parameters drawn there for
    ``(seed, epoch, index)``."""
    n = int(paths.shape[0])
    order = tf.numpy_function(lambda e: sample_order(n, seed, int(e)).astype(np.int64), [epoch],
                              tf.int64, stateful=False)
    order.set_shape([n])
    ds = tf.data.Dataset.from_tensor_slices((tf.gather(paths, order), tf.gather(labels, order),
                                             order))

    def load(path, label, index):
        if not augment:
            image = _decode(path, image_size, preset.eval_image, [image_size, image_size, 3])
            return normalise(image, norm), label
        image, params = tf.numpy_function(
            lambda p, e, i: train_example(preset, os.fsdecode(p), image_size, seed, int(e), int(i)),
            [path, epoch, index], (tf.uint8, tf.float64), stateful=False)
        image.set_shape([None, None, 3])
        return normalise(tf_image.apply_params(image, image_size, preset, params), norm), label

    ds = ds.map(load, num_parallel_calls=num_workers or tf.data.AUTOTUNE, deterministic=True)
    drop = drops_last_batch(n, batch_size)
    return without_autotuner(ds.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE))


@dataclass
class Pipelines:
    """The reinitializable iterator, its output tensors and one initializer per source."""

    images: tf.Tensor
    labels: tf.Tensor
    initializers: dict
    epoch_seed: tf.Tensor
    iterator: object
    epoch: tf.Tensor  # the run's epoch (the common sampler's; fed with epoch_seed)


def build_pipelines(split, image_size: int, norm: Normalisation, batch_size: int,
                    num_workers: int = 0, preset: Preset | None = None,
                    common_sampler_seed: int | None = None) -> Pipelines:
    """Datasets for every subset (split order) plus the shuffled ``fit`` and
    ``fit_augmented`` that training reads, in the current default graph;
    ``common_sampler_seed``: those two from ``common.sampler`` (``make_dataset``)."""
    epoch_seed = tf.compat.v1.placeholder_with_default(tf.constant(0, tf.int64), [], "epoch_seed")
    epoch = tf.compat.v1.placeholder_with_default(tf.constant(0, tf.int64), [], "epoch")
    kw = {"num_workers": num_workers, "preset": preset}
    fit = {"epoch": epoch, "common_sampler_seed": common_sampler_seed}
    datasets = {
        "fit_augmented": make_dataset(split.train, image_size, norm, batch_size, augment=True,
                                      shuffle=True, epoch_seed=epoch_seed, **fit, **kw),
        "fit": make_dataset(split.train, image_size, norm, batch_size, shuffle=True,
                            epoch_seed=epoch_seed, **fit, **kw),
        "train": make_dataset(split.train, image_size, norm, batch_size, **kw),
        "val": make_dataset(split.val, image_size, norm, batch_size, **kw),
        "test": make_dataset(split.test, image_size, norm, batch_size, **kw),
    }
    spec = datasets["val"].element_spec
    iterator = tf.compat.v1.data.Iterator.from_structure(  # NHWC (PyTorch batches are NCHW)
        (spec[0].dtype, spec[1].dtype), ([None, image_size, image_size, 3], [None]))
    images, labels = iterator.get_next()
    inits = {name: iterator.make_initializer(ds, name=f"init_{name}") for name, ds in datasets.items()}
    return Pipelines(images, labels, inits, epoch_seed, iterator, epoch)

