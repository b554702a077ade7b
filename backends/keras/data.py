"""Input pipelines over the common split, the Keras way.

With ``KERAS_BACKEND=tensorflow`` (the default) this is a ``tf.data`` pipeline:
file paths and labels -> ``tf.numpy_function(common.data.load_image)`` ->
``tf.image`` stateless random crop and flip -> normalisation -> one-hot labels
-> ``batch`` -> ``prefetch``, with tf.data's autotuner off (``backends.tf_data``:
with it on, the end of each ``predict`` could wait 0.45 s). With the jax or torch Keras
backends, where ``tf.data`` is not the native choice (and TensorFlow may not be
installed), a ``keras.utils.PyDataset`` does the same operations with numpy (same
decoder, same order, the same crop/flip distribution but its own draws).

A phase is one ``model.fit``, and each epoch has its own order and
augmentation, drawn from ``(seed, epoch)`` so that a resumed run sees the
batches an uninterrupted one would have. ``train(epochs, augment)`` gives what
that fit reads: on TensorFlow one ``tf.data`` stream of every epoch of the fit,
back to back, each epoch batched on its own (``fit`` reads
``steps_per_epoch`` batches an epoch from one iterator); elsewhere a
``PyDataset`` of one epoch whose ``set_epoch`` a fit callback calls as each
epoch begins (``train.SetEpoch``), the way a ``DataLoader``'s sampler is told
its epoch, so its ``workers`` can prefetch within an epoch.

Both follow ``common.preprocess``: an evaluation image is ``Preset.eval_image``
(decoded and cropped in ``common``, the same array in every backend); a
training image is the preset's ``train_source``, augmented when the phase
augments. On ``tf.data`` with ``tf.image``'s stateless ops: ``simple`` is a
random crop and flip; ``inception`` and ``torchvision`` draw the crop with
``tf.image.stateless_sample_distorted_bounding_box`` (the preset's area and
aspect bounds, ``min_object_covered``, attempts; the whole image when every
attempt fails), resize it bilinearly and flip; ``inception`` then distorts the
colours with ``stateless_random_brightness/saturation/hue/contrast`` in one of
slim's orderings and clips to [0, 1]. The ``PyDataset`` does the same with
numpy: TensorFlow's sampling algorithm and ``tf.image``'s colour formulas
(HSV saturation and hue, contrast around each channel's mean), PIL's bilinear
resize; its own draws. With ``fidelity.crop_sampler = "aligned"`` the order and
each sample's box, flip and colour amounts come from ``common.sampler`` instead
(``common_sampler``), applied by ``tf_image.apply_params`` (``numpy_apply_params``).
"""

from __future__ import annotations

import math
import os
import time
from typing import Sequence

import keras
import numpy as np

from PIL import Image

from common.data import Sample, Split, drops_last_batch
from common.preprocess import ColorDistortion, Normalisation, Preset, get_preset
from common.sampler import (COLOR_OPS, CropParams, draw_params, sample_distorted_bounding_box,
                            sample_order, train_example)


def epoch_order(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation of ``n`` samples and per-sample augmentation seeds ``[n, 2]``."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n), rng.integers(0, 2**31 - 1, size=(n, 2), dtype=np.int64)


class KerasData:
    """Pipelines for one split: ``train(epochs, augment)`` and ``eval(subset)``."""

    def __init__(self, split: Split, image_size: int, normalisation: Normalisation,
                 batch_size: int, seed: int, num_workers: int = 0, multiple: int = 1,
                 preset: Preset | None = None, common_sampler: bool = False):
        self.split = split
        # fidelity.crop_sampler = "aligned": order and augmentation drawn in common.sampler
        self.common_sampler = common_sampler
        # data parallel on jax: every batch a multiple of the device count (parallel.py)
        self.multiple = multiple
        self.preset = preset or get_preset("simple")
        self.num_workers = num_workers  # tf.data num_parallel_calls (0: AUTOTUNE), PyDataset workers
        self.size = image_size
        self.norm = normalisation
        self.batch_size = batch_size
        self.seed = seed
        self.use_tf_data = keras.backend.backend() == "tensorflow"

    @property
    def drop_last(self) -> bool:
        """Whether each training epoch drops its last batch (``common.data.drops_last_batch``:
        never a batch of one image)."""
        n, bs = len(self.split.train), self.batch_size
        return drops_last_batch(n, bs) or (n % bs) % self.multiple != 0

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.split.train)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        """Training images one epoch trains on (the dropped batch of one left out)."""
        n = len(self.split.train)
        return n - (n % self.batch_size if self.drop_last else 0)

    @property
    def pipeline(self) -> str:
        """What feeds ``fit`` (for the phase report)."""
        if self.use_tf_data:
            return ("tf.data.Dataset: tf.numpy_function decode, stateless crop/flip, "
                    f"map({self.num_workers or 'AUTOTUNE'}), batch, prefetch(AUTOTUNE), "
                    "autotuner off; one stream of the fit's epochs")
        return (f"keras.utils.PyDataset: numpy decode, crop/flip and batch in __getitem__, "
                f"{max(1, self.num_workers)} worker(s); set_epoch as each epoch begins")

    def train(self, epochs: Sequence[int], augment: bool):
        """What one ``fit`` over the run's (1-based) ``epochs`` reads: a ``tf.data`` stream
        of those epochs back to back, ``steps_per_epoch`` batches each, or a ``PyDataset``
        of one epoch that the fit moves from epoch to epoch (``NumpyBatches.set_epoch``)."""
        samples = self.split.train
        if not self.use_tf_data:
            return NumpyBatches(self, samples, augment, epochs, self.drop_last)
        per_epoch = []
        for epoch in epochs:
            order, seeds = self.epoch_order(epoch)
            per_epoch.append(([samples[i] for i in order], seeds))
        return self._tf_dataset(per_epoch, augment, self.drop_last)

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``epoch``'s permutation and per-sample ``[n, 2]`` augmentation seeds; with the
        common sampler ``common.sampler``'s order and, as the seeds, ``(epoch, index)``."""
        n = len(self.split.train)
        if not self.common_sampler:
            return epoch_order(n, self.seed, epoch)
        order = sample_order(n, self.seed, epoch)
        return order, np.stack([np.full(n, epoch), order], 1).astype(np.int64)

    def eval(self, subset: str):
        """Batches of ``subset`` in split order; under jax data parallel the last image is
        repeated up to a multiple of the device count (the caller keeps the first rows)."""
        samples = self.split.subset(subset)
        samples = samples + samples[-1:] * (-len(samples) % self.multiple)
        if self.use_tf_data:
            return self._tf_dataset([(samples, None)], False)
        return NumpyBatches(self, samples, False)

    def time_epoch(self, augment: bool) -> dict:
        """Decode-only speed of the training pipeline: epoch 2 of ``train`` read without a
        model after epoch 1 (``Backend.time_input_pipeline``). A ``PyDataset`` is read as
        ``fit`` reads it with ``use_multiprocessing=False``: ``workers`` threads calling
        ``__getitem__``, batches taken in order."""
        from concurrent.futures import ThreadPoolExecutor

        samples = self.split.train
        images = seconds = 0
        for epoch in (1, 2):
            t0 = time.perf_counter()
            if self.use_tf_data:
                images = sum(int(x.shape[0]) for x, _ in self.train([epoch], augment))
            else:
                batches = NumpyBatches(self, samples, augment, [epoch], self.drop_last)
                with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
                    images = sum(len(x) for x, _ in pool.map(batches.__getitem__,
                                                             range(len(batches))))
            seconds = time.perf_counter() - t0
        return {"images": images, "seconds": seconds,
                "images_per_second": images / seconds if seconds > 0 else None,
                "pipeline": self.pipeline}

    # ------------------------------------------------------------ tf.data
    def _tf_dataset(self, per_epoch: list[tuple[list[Sample], np.ndarray | None]], augment: bool,
                    drop_last: bool = False):
        import tensorflow as tf

        from backends import tf_image
        from backends.tf_data import without_autotuner

        size, preset = self.size, self.preset
        num_classes = self.split.num_classes
        scale = tf.constant(self.norm.scale, tf.float32)
        mean = tf.constant(self.norm.mean, tf.float32)
        std = tf.constant(self.norm.std, tf.float32)
        bgr = self.norm.channel_order == "bgr"

        def load(path):
            decode = preset.train_source if augment else preset.eval_image
            image = tf.numpy_function(lambda p: decode(os.fsdecode(p), size), [path], tf.uint8)
            image.set_shape((None, None, 3))  # NHWC, as Keras image models expect
            return image

        def load_with_params(path, seed):
            # common.sampler: the source and its drawn parameters, seed = (epoch, index)
            image, params = tf.numpy_function(
                lambda p, s: train_example(preset, os.fsdecode(p), size, self.seed, int(s[0]),
                                           int(s[1])), [path, seed], (tf.uint8, tf.float64))
            image.set_shape((None, None, 3))
            return image, params

        def preprocess(path, label, seed):
            if augment and self.common_sampler:
                image, params = load_with_params(path, seed)
                image = tf_image.apply_params(image, size, preset, params)
            elif augment:
                image = tf_augment(load(path), size, preset, seed)
            else:
                image = load(path)
                image.set_shape((size, size, 3))
            x = tf.cast(image, tf.float32) * scale
            if bgr:
                x = x[..., ::-1]
            x = (x - mean) / std
            return x, tf.one_hot(label, num_classes)

        def one_epoch(paths, labels, seeds):
            ds = tf.data.Dataset.from_tensor_slices((paths, labels, seeds))
            ds = ds.map(preprocess, num_parallel_calls=self.num_workers or tf.data.AUTOTUNE,
                        deterministic=True)
            # batched per epoch: each epoch ends with its own partial batch (or drops a batch of 1)
            return ds.batch(self.batch_size, drop_remainder=drop_last)

        # bytes: a file name need not be UTF-8
        paths = [[os.fsencode(s.path) for s in samples] for samples, _ in per_epoch]
        labels = np.asarray([[s.label for s in samples] for samples, _ in per_epoch], np.int32)
        seeds = np.stack([np.zeros((len(samples), 2), np.int64) if seeds is None else seeds
                          for samples, seeds in per_epoch])
        if len(per_epoch) == 1:
            ds = one_epoch(paths[0], labels[0], seeds[0])
        else:  # [epochs, samples] tensors: one epoch after another
            ds = tf.data.Dataset.from_tensor_slices((paths, labels, seeds)).flat_map(one_epoch)
        return without_autotuner(ds.prefetch(tf.data.AUTOTUNE))

    # -------------------------------------------------------------- numpy
    def numpy_example(self, sample: Sample, seed, augment: bool) -> np.ndarray:
        """One preprocessed image with numpy (the jax/torch Keras backends)."""
        if not augment:
            return self.norm.apply(self.preset.eval_image(sample.path, self.size))
        image = self.preset.train_source(sample.path, self.size)
        if self.common_sampler:  # seed: (epoch, index)
            params = draw_params(self.preset, image.shape[0], image.shape[1], self.size,
                                 self.seed, int(seed[0]), int(seed[1]))
            return self.norm.apply(numpy_apply_params(image, self.size, self.preset, params))
        return self.norm.apply(numpy_augment(image, self.size, self.preset,
                                             np.random.default_rng(seed)))


# ------------------------------------------------------------ tf.image

def tf_augment(image, size: int, preset: Preset, seed):
    """``preset``'s training augmentation with ``tf.image`` stateless ops; uint8 HWC in,
    ``[size, size, 3]`` out (``simple``: uint8; the resized crops: float32 in [0, 255],
    ``backends.tf_image``, the ops slim's graph runs too)."""
    import tensorflow as tf

    from backends import tf_image

    if preset.crop == "random_crop":
        image = tf.image.stateless_random_crop(image, (size, size, 3), seed=seed)
        return tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
    return tf_image.resized_crop_augment(image, size, preset, seed)


def numpy_augment(image: np.ndarray, size: int, preset: Preset,
                  rng: np.random.Generator) -> np.ndarray:
    """``tf_augment`` with numpy draws, PIL's bilinear resize and ``tf.image``'s formulas."""
    if preset.crop == "random_crop":
        top, left = rng.integers(0, image.shape[0] - size + 1, size=2)
        image = image[top:top + size, left:left + size]
        return image[:, ::-1] if rng.random() < 0.5 else image
    top, left, h, w = sample_distorted_bounding_box(*image.shape[:2], preset, rng)
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    x = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0
    if rng.random() < preset.flip:
        x = x[:, ::-1]
    if preset.color is not None:
        x = numpy_distort_color(x, preset.color, rng)
    return np.clip(x, 0.0, 1.0) * 255.0


def numpy_distort_color(x: np.ndarray, color: ColorDistortion, rng: np.random.Generator) -> np.ndarray:
    """``backends.tf_image.distort_color`` in numpy: ``tf.image``'s adjust_brightness (add), adjust_saturation
    and adjust_hue (in HSV), adjust_contrast (around each channel's mean)."""
    ordering = color.orderings[int(rng.integers(len(color.orderings)))]
    ranges = {"brightness": (-color.brightness, color.brightness), "saturation": color.saturation,
              "hue": (-color.hue, color.hue), "contrast": color.contrast}
    for op in ordering:
        x = numpy_color_op(x, op, rng.uniform(*ranges[op]))
    return np.clip(x, 0.0, 1.0)


def numpy_color_op(x: np.ndarray, op: str, amount: float, clip: bool = True) -> np.ndarray:
    """One ``tf.image.adjust_*`` op in numpy by ``amount`` (a delta for brightness and hue,
    a factor for saturation and contrast); ``clip``: the pixels clipped to [0, 1] before
    the HSV ops (the native numpy pipeline; ``tf.image`` does not clip, nor does
    ``numpy_apply_params``)."""
    if op == "brightness":
        return x + amount
    if op == "contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        return (x - mean) * amount + mean
    hsv = rgb_to_hsv(np.clip(x, 0.0, 1.0) if clip else x)
    if op == "saturation":
        hsv[..., 1] = np.clip(hsv[..., 1] * amount, 0.0, 1.0)
    else:
        hsv[..., 0] = np.mod(hsv[..., 0] + amount, 1.0)
    return hsv_to_rgb(hsv)


def bilinear_resize(x: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resize(x, (size, size), "bilinear")`` in numpy: half-pixel centres, no
    antialiasing."""
    def axis(n_in):
        c = np.clip((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (c - lo).astype(np.float32)

    (y0, y1, ty), (x0, x1, tx) = axis(x.shape[0]), axis(x.shape[1])
    rows = x[y0] * (1 - ty)[:, None, None] + x[y1] * ty[:, None, None]
    return rows[:, x0] * (1 - tx)[None, :, None] + rows[:, x1] * tx[None, :, None]


def numpy_apply_params(image: np.ndarray, size: int, preset: Preset,
                       params: CropParams) -> np.ndarray:
    """``backends.tf_image.apply_params`` in numpy (``fidelity.crop_sampler = "aligned"`` on
    the jax and torch Keras backends): ``common.sampler``'s draws, ``tf.image``'s formulas."""
    image = image[params.top:params.top + params.height, params.left:params.left + params.width]
    if preset.crop == "random_crop":
        return image[:, ::-1] if params.flip else image
    x = bilinear_resize(image.astype(np.float32) / 255.0, size)
    if params.flip:
        x = x[:, ::-1]
    if preset.color is not None:
        for op in preset.color.orderings[params.ordering]:
            x = numpy_color_op(x, op, params.amounts[COLOR_OPS.index(op)], clip=False)
    return np.clip(x, 0.0, 1.0) * 255.0


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_hsv`` in numpy (all in [0, 1])."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0.0)
    safe = np.where(c > 0, c, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(c > 0, np.mod(h / 6.0, 1.0), 0.0)
    return np.stack([h, s, v], -1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``tf.image.hsv_to_rgb`` in numpy."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = np.mod(np.stack([5.0 + h * 6, 3.0 + h * 6, 1.0 + h * 6], -1), 6.0)
    return (v[..., None] - v[..., None] * s[..., None] *
            np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


class NumpyBatches(keras.utils.PyDataset):
    """Batches ``(x [B, H, W, 3] float32, one-hot y)`` of one epoch, for any Keras backend.

    For training, ``epochs`` are the run's epochs the fit runs and ``set_epoch`` picks
    the one served (``train.SetEpoch`` calls it as each begins: a ``PyDataset``'s own
    ``on_epoch_begin``/``on_epoch_end`` hooks also run while ``fit`` prepares, so they
    cannot count epochs); evaluation serves ``samples`` in split order.
    """

    def __init__(self, data: KerasData, samples: list[Sample], augment: bool,
                 epochs: Sequence[int] = (), drop_last: bool = False):
        super().__init__(workers=max(1, data.num_workers), use_multiprocessing=False)
        self.data, self.samples, self.augment, self.drop_last = data, samples, augment, drop_last
        self.epochs = list(epochs)  # the epochs of the fit that reads it; none for evaluation
        self.epoch: int | None = None
        self.order, self.seeds = samples, None
        if self.epochs:
            self.set_epoch(self.epochs[0])

    def set_epoch(self, epoch: int) -> None:
        """Serve the run's (1-based) ``epoch``: its order and per-sample augmentation seeds."""
        order, self.seeds = self.data.epoch_order(epoch)
        self.order, self.epoch = [self.samples[i] for i in order], epoch

    def __len__(self) -> int:
        n, bs = len(self.samples), self.data.batch_size
        return n // bs if self.drop_last else math.ceil(n / bs)

    def __getitem__(self, index: int):
        lo = index * self.data.batch_size
        batch = self.order[lo:lo + self.data.batch_size]
        x = np.stack([self.data.numpy_example(s, None if self.seeds is None else self.seeds[lo + i],
                                              self.augment) for i, s in enumerate(batch)])
        y = np.eye(self.data.split.num_classes, dtype=np.float32)[[s.label for s in batch]]
        return x.astype(np.float32), y
