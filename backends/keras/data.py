"""Input pipelines over the common split, the Keras way.

With ``KERAS_BACKEND=tensorflow`` (the default) this is a ``tf.data`` pipeline:
file paths and labels -> ``tf.numpy_function(common.data.load_image)`` ->
``tf.image`` stateless random crop and flip -> normalisation -> one-hot labels
-> ``batch`` -> ``prefetch``. With the jax or torch Keras backends, where
``tf.data`` is not the native choice, a ``keras.utils.PyDataset`` does the same
operations with numpy (same decoder, same crop/flip distribution, same order).

Both follow ``common.preprocess``: train images are loaded at
``crop_source_size(size)`` and randomly cropped to ``size`` and flipped when
the phase augments; eval images are loaded at ``size``. Each epoch's order and
every sample's crop/flip come from ``(seed, epoch)``, so a resumed run sees the
same batches an uninterrupted one would have.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from common.data import Sample, Split, drops_last_batch, load_image
from common.preprocess import Normalisation, crop_source_size


def epoch_order(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation of ``n`` samples and per-sample augmentation seeds ``[n, 2]``."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n), rng.integers(0, 2**31 - 1, size=(n, 2), dtype=np.int64)


class KerasData:
    """Pipelines for one split: ``train(epoch, augment)`` and ``eval(subset)``."""

    def __init__(self, split: Split, image_size: int, normalisation: Normalisation,
                 batch_size: int, seed: int, num_workers: int = 0):
        self.split = split
        self.num_workers = num_workers  # tf.data num_parallel_calls (0: AUTOTUNE), PyDataset workers
        self.size = image_size
        self.norm = normalisation
        self.batch_size = batch_size
        self.seed = seed
        self.use_tf_data = keras.backend.backend() == "tensorflow"

    def train(self, epoch: int, augment: bool):
        samples = self.split.train
        order, seeds = epoch_order(len(samples), self.seed, epoch)
        samples = [samples[i] for i in order]
        drop = drops_last_batch(len(samples), self.batch_size)  # never a batch of 1
        if self.use_tf_data:
            return self._tf_dataset(samples, seeds, augment, drop)
        return NumpyBatches(samples, seeds, self, augment, drop)

    def eval(self, subset: str):
        samples = self.split.subset(subset)
        if self.use_tf_data:
            return self._tf_dataset(samples, None, False)
        return NumpyBatches(samples, None, self, False)

    # ------------------------------------------------------------ tf.data
    def _tf_dataset(self, samples: list[Sample], seeds, augment: bool, drop_last: bool = False):
        import tensorflow as tf

        size, load_size = self.size, crop_source_size(self.size) if augment else self.size
        num_classes = self.split.num_classes
        scale = tf.constant(self.norm.scale, tf.float32)
        mean = tf.constant(self.norm.mean, tf.float32)
        std = tf.constant(self.norm.std, tf.float32)
        bgr = self.norm.channel_order == "bgr"

        def load(path):
            image = tf.numpy_function(lambda p: load_image(os.fsdecode(p), load_size), [path], tf.uint8)
            image.set_shape((load_size, load_size, 3))  # NHWC, as Keras image models expect
            return image

        def preprocess(path, label, seed):
            image = load(path)
            if augment:
                image = tf.image.stateless_random_crop(image, (size, size, 3), seed=seed)
                image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
            x = tf.cast(image, tf.float32) * scale
            if bgr:
                x = x[..., ::-1]
            x = (x - mean) / std
            return x, tf.one_hot(label, num_classes)

        paths = [os.fsencode(s.path) for s in samples]  # bytes: a name need not be UTF-8
        labels = np.asarray([s.label for s in samples], np.int32)
        if seeds is None:
            seeds = np.zeros((len(samples), 2), np.int64)
        ds = tf.data.Dataset.from_tensor_slices((paths, labels, seeds))
        ds = ds.map(preprocess, num_parallel_calls=self.num_workers or tf.data.AUTOTUNE,
                    deterministic=True)
        return ds.batch(self.batch_size, drop_remainder=drop_last).prefetch(tf.data.AUTOTUNE)

    # -------------------------------------------------------------- numpy
    def numpy_example(self, sample: Sample, seed, augment: bool) -> np.ndarray:
        """One preprocessed image with numpy (the jax/torch Keras backends)."""
        if not augment:
            return self.norm.apply(load_image(sample.path, self.size))
        image = load_image(sample.path, crop_source_size(self.size))
        rng = np.random.default_rng(seed)
        top, left = rng.integers(0, image.shape[0] - self.size + 1, size=2)
        image = image[top:top + self.size, left:left + self.size]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return self.norm.apply(image)


class NumpyBatches(keras.utils.PyDataset):
    """Batches ``(x [B, H, W, 3] float32, one-hot y)`` for any Keras backend."""

    def __init__(self, samples: list[Sample], seeds, data: KerasData, augment: bool,
                 drop_last: bool = False):
        super().__init__(workers=max(1, data.num_workers), use_multiprocessing=False)
        self.samples, self.seeds, self.data, self.augment = samples, seeds, data, augment
        self.drop_last = drop_last

    def __len__(self) -> int:
        n, bs = len(self.samples), self.data.batch_size
        return n // bs if self.drop_last else math.ceil(n / bs)

    def __getitem__(self, index: int):
        lo = index * self.data.batch_size
        batch = self.samples[lo:lo + self.data.batch_size]
        x = np.stack([self.data.numpy_example(s, None if self.seeds is None else self.seeds[lo + i],
                                              self.augment) for i, s in enumerate(batch)])
        y = np.eye(self.data.split.num_classes, dtype=np.float32)[[s.label for s in batch]]
        return x.astype(np.float32), y
