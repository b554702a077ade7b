"""The common training sampler: ``fidelity.crop_sampler = "aligned"`` (docs/design.md,
"Fidelity switches").

Natively every framework draws an epoch's order and each sample's crop, flip and
colour amounts with its own generator (``torch.randperm`` and ``RandomResizedCrop``'s
sampler, ``tf.data``'s shuffle and ``tf.image``'s stateless samplers, numpy), so two
backends given the same seed train on different batches. Aligned, the draws are made
here, once, with numpy, as a function of ``(seed, epoch, index)`` and the size of the
decoded training source, and every backend applies exactly these parameters with its
own ops (``torchvision.transforms.v2.functional``, ``tf.image``, numpy): the same seed
gives every backend the same batches and the same crops, up to resize arithmetic.

* ``sample_order``: the epoch's permutation (numpy's ``default_rng([seed, epoch])``,
  the order Keras' pipeline already drew natively);
* ``draw_params``: one sample's ``CropParams``: the box by the preset's named algorithm
  (``random_crop``: uniform offsets; ``distorted_bounding_box``: TensorFlow's
  ``sample_distorted_bounding_box``; ``random_resized_crop``: torchvision's
  ``RandomResizedCrop.get_params``), the flip, the colour ordering and each colour op's
  amount. An aligned resized crop is resized bilinearly without antialiasing
  (``tf.image.resize``'s bilinear, slim's reference), in every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.preprocess import Preset

# the colour ops, in the order of ``CropParams.amounts``
COLOR_OPS = ("brightness", "saturation", "hue", "contrast")
# amounts that change nothing: a brightness delta, saturation factor, hue delta, contrast factor
NO_COLOR = (0.0, 1.0, 0.0, 1.0)
# ``CropParams.vector()``'s length: top, left, height, width, flip, ordering, 4 amounts
PARAMS_LENGTH = 6 + len(COLOR_OPS)


@dataclass(frozen=True)
class CropParams:
    """One training sample's augmentation: the crop box ``(top, left, height, width)`` in
    the training source, a left-right flip, and (a colour preset) the index of the colour
    ordering and each ``COLOR_OPS`` amount."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    ordering: int = 0
    amounts: tuple[float, float, float, float] = NO_COLOR

    def vector(self) -> np.ndarray:
        """The parameters as one float64 vector (``PARAMS_LENGTH``), for a graph op."""
        return np.asarray([self.top, self.left, self.height, self.width, float(self.flip),
                           self.ordering, *self.amounts], np.float64)


def sample_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` training samples in ``epoch`` (1-based, the run's)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def draw_params(preset: Preset, height: int, width: int, size: int, seed: int, epoch: int,
                index: int) -> CropParams:
    """Sample ``index``'s augmentation in ``epoch``, for a training source of
    ``height`` x ``width`` (``preset.train_source``): a function of its arguments only."""
    rng = np.random.default_rng([seed, epoch, index, 1])
    if preset.crop == "random_crop":
        top = int(rng.integers(0, height - size + 1))
        left = int(rng.integers(0, width - size + 1))
        box = (top, left, size, size)
    elif preset.crop == "distorted_bounding_box":
        box = sample_distorted_bounding_box(height, width, preset, rng)
    elif preset.crop == "random_resized_crop":
        box = random_resized_crop_box(height, width, preset, rng)
    else:
        raise ValueError(f"unknown crop {preset.crop!r}")
    flip = bool(rng.random() < preset.flip)
    if preset.color is None:
        return CropParams(*box, flip)
    color = preset.color
    ordering = int(rng.integers(len(color.orderings)))
    amounts = dict(zip(COLOR_OPS, NO_COLOR))
    ranges = {"brightness": (-color.brightness, color.brightness), "saturation": color.saturation,
              "hue": (-color.hue, color.hue), "contrast": color.contrast}
    for op in color.orderings[ordering]:
        amounts[op] = float(rng.uniform(*ranges[op]))
    return CropParams(*box, flip, ordering, tuple(amounts[op] for op in COLOR_OPS))


def sample_distorted_bounding_box(height: int, width: int, preset: Preset,
                                  rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: TensorFlow's ``sample_distorted_bounding_box`` algorithm
    (``GenerateRandomCrop``) for a whole-image box, with numpy draws: per attempt an aspect
    ratio uniform in the bounds, then a height uniform between those of the smallest and
    largest allowed areas; the whole image when every attempt fails."""
    lo, hi = preset.area[0] * height * width, preset.area[1] * height * width
    covered = preset.min_object_covered * height * width
    for _ in range(preset.max_attempts):
        aspect = rng.uniform(*preset.aspect)
        h = int(np.rint(np.sqrt(lo / aspect)))
        max_h = int(np.rint(np.sqrt(hi / aspect)))
        if np.rint(max_h * aspect) > width:
            max_h = int((width + 0.5 - 1e-7) / aspect)
            if np.rint(max_h * aspect) > width:
                max_h -= 1
        max_h = min(max_h, height)
        h = min(h, max_h)
        if h < max_h:
            h += int(rng.integers(0, max_h - h + 1))
        w = int(np.rint(h * aspect))
        area = w * h
        if area < lo:
            h += 1
            w = int(np.rint(h * aspect))
            area = w * h
        if area > hi:
            h -= 1
            w = int(np.rint(h * aspect))
            area = w * h
        if not (lo <= area <= hi and 0 < w <= width and 0 < h <= height) or area < covered:
            continue
        top = int(rng.integers(0, height - h)) if h < height else 0
        left = int(rng.integers(0, width - w)) if w < width else 0
        return top, left, h, w
    return 0, 0, height, width


def random_resized_crop_box(height: int, width: int, preset: Preset,
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: torchvision's ``RandomResizedCrop.get_params`` with numpy
    draws: per attempt the area uniform in ``preset.effective_area``, the log-aspect
    uniform; after ``max_attempts`` failures a centre crop of the image's aspect clamped
    to the bounds."""
    area = height * width
    log_lo, log_hi = math.log(preset.aspect[0]), math.log(preset.aspect[1])
    for _ in range(preset.max_attempts):
        target = area * rng.uniform(*preset.effective_area)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    ratio = width / height
    if ratio < min(preset.aspect):
        w, h = width, int(round(width / min(preset.aspect)))
    elif ratio > max(preset.aspect):
        h, w = height, int(round(height * max(preset.aspect)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_example(preset: Preset, path: str, size: int, seed: int, epoch: int,
                  index: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index``'s training source (``preset.train_source``, uint8 RGB) and its
    ``CropParams.vector()`` in ``epoch``: what a TensorFlow pipeline's ``numpy_function``
    returns."""
    image = preset.train_source(path, size)
    params = draw_params(preset, image.shape[0], image.shape[1], size, seed, epoch, index)
    return image, params.vector()
