"""Preprocessing specs: what every backend's native pipeline must compute.

Two parts, both framework-free:

* the **normalisation** of a model family (``Normalisation``, ``PREPROCESSING``):
  ``(x * scale - mean) / std`` per channel, in the channel order given (``bgr``
  for Keras' "caffe" ResNet weights), on pixels in [0, 255];
* the **preset** (``Preset``, ``PRESETS``; the recipe key ``preprocessing``):
  how a training image is augmented and how an evaluation image is cropped and
  resized. ``simple`` is the default; ``inception`` follows slim's
  ``inception_preprocessing`` as ``train_image_classifier.py`` runs it
  (``fast_mode=True``); ``torchvision`` follows torchvision's ImageNet
  reference (``RandomResizedCrop`` + flip, resize then centre crop).

Decoding happens once, in ``common.data`` (PIL: EXIF, alpha on white, CMYK, 16
bit), so every backend starts from the same uint8 pixels. **Evaluation** is
then finished here too (``Preset.eval_image``: PIL bilinear resizes and integer
crops), so the eval arrays of every backend are the same array.
**Training** augmentation is written natively in each backend from the
preset's parameters (docs/differences.md says where the native ops
differ):

=============  ==========================================  =====================================
preset         train (``augment = true``)                  eval
=============  ==========================================  =====================================
simple         squash to ``crop_source_size(size)``, a     squash to ``size`` x ``size``
               random ``size`` crop, flip p=0.5
inception      slim's ``fast_mode=True``: distorted            central crop 0.875
               bounding-box crop (area [0.05, 1], aspect   (``tf.image.central_crop``'s
               [0.75, 1.33], covering at least 10 % of     integer box), then squash to
               the image, 100 attempts, else the whole     ``size`` x ``size``
               image), bilinear resize to ``size``, flip
               p=0.5, colour distortion in slim's one
               fast-mode ordering: brightness (+-32/255)
               then saturation [0.5, 1.5], clipped to
               [0, 1]. (``fast_mode=False``, four
               orderings with hue and contrast and one of
               four resize methods, is not offered.)
torchvision    random resized crop (area [0.08, 1],        short side to ``round(size/0.875)``,
               aspect [3/4, 4/3], 10 attempts, else a      then the centre ``size`` x ``size``
               centre crop), bilinear resize to ``size``,  crop (torchvision's rounding)
               flip p=0.5
=============  ==========================================  =====================================

The crops of ``inception`` and ``torchvision`` are taken from the image with its
aspect ratio kept, downscaled first by the common decoder when its short side
exceeds ``2 x size`` (``Preset.train_source``) so that a 12-megapixel photo is
not cropped at full resolution. Neither reference does this (both crop the full
decoded image): a small crop of a large photo is enlarged from fewer than ``size``
pixels where they would shrink it (measured in docs/differences.md, "Training crop
source"; the default 96 px synthetic images are never shrunk at 75 px). Where a framework has its own sampler for a
crop, the backend uses it with the preset's bounds (TensorFlow:
``tf.image.stateless_sample_distorted_bounding_box``; torchvision:
``RandomResizedCrop``'s parameters), so the bounds are shared and the
distributions inside them are each framework's own
(``tests/test_presets.py``). With ``fidelity.crop_sampler = "aligned"`` the
order, boxes, flips and colour amounts are drawn once in ``common.sampler`` and
every backend applies those (``tests/test_crop_sampler.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.data import load_image, load_image_fitting, open_image, to_rgb


@dataclass(frozen=True)
class Normalisation:
    name: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "rgb"  # "rgb" or "bgr"
    description: str = ""

    def apply(self, pixels):
        """Normalise a uint8/float array-like ``[..., H, W, 3]`` (RGB input) with numpy."""
        x = np.asarray(pixels, dtype=np.float32) * self.scale
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


PREPROCESSING: dict[str, Normalisation] = {
    n.name: n
    for n in (
        Normalisation(
            "inception", 1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0),
            description="[-1, 1]: x / 127.5 - 1 (Inception; Keras preprocess_input 'tf' mode, "
                        "the range slim's inception_preprocessing ends in)",
        ),
        Normalisation(
            "torch", 1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
            description="[0, 1] then ImageNet mean/std (torchvision weights)",
        ),
        Normalisation(
            "caffe", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "bgr",
            description="BGR, ImageNet mean subtracted, no scaling (keras.applications.resnet50)",
        ),
        Normalisation(
            "vgg", 1.0, (123.68, 116.78, 103.94), (1.0, 1.0, 1.0),
            description="RGB, ImageNet mean subtracted, no scaling (the means of slim's "
                        "vgg_preprocessing, which slim's ResNet checkpoints expect)",
        ),
    )
}


def get_normalisation(name: str) -> Normalisation:
    try:
        return PREPROCESSING[name]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing {name!r}; choose one of: {', '.join(PREPROCESSING)}"
        ) from None


def crop_source_size(size: int) -> int:
    """Side of the image that a ``simple`` training crop of ``size`` is taken from (+1/8)."""
    return size + max(1, size // 8)


# ------------------------------------------------------------------ presets

# slim's inception_preprocessing.distort_color: with fast_mode=True (train_image_classifier.py's
# default, the ``inception`` preset) one ordering of two ops; with fast_mode=False four of four
SLIM_FAST_MODE_ORDERINGS = (("brightness", "saturation"),)
SLIM_COLOR_ORDERINGS = (
    ("brightness", "saturation", "hue", "contrast"),
    ("saturation", "brightness", "contrast", "hue"),
    ("contrast", "hue", "brightness", "saturation"),
    ("hue", "saturation", "contrast", "brightness"),
)


@dataclass(frozen=True)
class ColorDistortion:
    """Random colour changes on an image in [0, 1], in one of ``orderings`` (chosen uniformly
    per image), then clipped to [0, 1] (slim's ``distort_color``; the default ordering is its
    ``fast_mode=True`` one)."""

    brightness: float = 32.0 / 255.0           # a delta in [-b, b] added to every channel
    saturation: tuple[float, float] = (0.5, 1.5)  # a factor on the saturation
    hue: float = 0.2                           # a delta in [-h, h] of the hue circle
    contrast: tuple[float, float] = (0.5, 1.5)  # a factor on the distance to the mean
    orderings: tuple[tuple[str, ...], ...] = SLIM_FAST_MODE_ORDERINGS


@dataclass(frozen=True)
class Preset:
    """A preprocessing preset: training augmentation and evaluation crop (module docstring)."""

    name: str
    description: str
    # training: how the crop box is drawn
    crop: str                                 # "random_crop" | "distorted_bounding_box" | "random_resized_crop"
    area: tuple[float, float] = (1.0, 1.0)    # crop area / image area
    aspect: tuple[float, float] = (1.0, 1.0)  # crop width / height
    min_object_covered: float = 0.0           # distorted_bounding_box: share of the image kept
    max_attempts: int = 1
    flip: float = 0.5                         # probability of a left-right flip
    color: ColorDistortion | None = None
    # evaluation
    eval_crop: str = "none"                   # "none" | "central_fraction" | "resize_short_side"
    eval_fraction: float = 1.0                # 0.875: the central crop's share of each side
    # training crops of distorted_bounding_box / random_resized_crop come from the image
    # with its aspect kept, downscaled by the decoder when its short side exceeds this x size
    source_factor: int = 2

    @property
    def effective_area(self) -> tuple[float, float]:
        """The crop-area bounds in force: a distorted bounding box must also cover
        ``min_object_covered`` of the (whole-image) box, which raises the lower bound."""
        if self.crop == "random_crop":
            return self.area
        return (max(self.area[0], self.min_object_covered), self.area[1])

    def train_source(self, path: str, size: int) -> np.ndarray:
        """The uint8 RGB image a training crop is taken from (``common.data``'s decoder)."""
        if self.crop == "random_crop":
            return load_image(path, crop_source_size(size))
        return load_image_fitting(path, self.source_factor * size)

    def eval_image(self, path: str, size: int) -> np.ndarray:
        """The evaluation image, uint8 RGB ``[size, size, 3]``: the same array for every
        backend (PIL bilinear resizes, integer crop boxes)."""
        if self.eval_crop == "none":
            return load_image(path, size)
        # decoded at full resolution, as the references do (torchvision's PIL loader, slim's
        # decode_jpeg): no JPEG draft, whose DCT downscale of a large JPEG moves pixels by up to
        # 16/255 (docs/differences.md, "Evaluation crop"); read through the bounded reader
        with open_image(path) as img:
            rgb = to_rgb(img)
        w, h = rgb.size
        if self.eval_crop == "central_fraction":
            # tf.image.central_crop: start = int((side - side * fraction) / 2), the rest symmetric
            top, left = int((h - h * self.eval_fraction) / 2), int((w - w * self.eval_fraction) / 2)
            rgb = rgb.crop((left, top, w - left, h - top))
        elif self.eval_crop == "resize_short_side":
            # torchvision Resize(int) then CenterCrop(size), with torchvision's rounding
            short = round(size / self.eval_fraction)
            if w <= h:
                new = (short, int(short * h / w))
            else:
                new = (int(short * w / h), short)
            if new != (w, h):
                rgb = rgb.resize(new, Image.Resampling.BILINEAR)
            w, h = rgb.size
            top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
            rgb = rgb.crop((left, top, left + size, top + size))
        else:
            raise ValueError(f"unknown eval_crop {self.eval_crop!r}")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)

    def describe(self) -> dict:
        """What the preset does, for ``result.json`` (``preprocessing``)."""
        out = {"preset": self.name, "description": self.description, "crop": self.crop,
               "area": list(self.area), "aspect": list(self.aspect), "flip": self.flip,
               "eval_crop": self.eval_crop, "eval_fraction": self.eval_fraction}
        if self.crop == "distorted_bounding_box":
            out.update(min_object_covered=self.min_object_covered, max_attempts=self.max_attempts)
        if self.crop == "random_resized_crop":
            out["max_attempts"] = self.max_attempts
        if self.color is not None:
            out["color"] = {"brightness": self.color.brightness,
                            "saturation": list(self.color.saturation), "hue": self.color.hue,
                            "contrast": list(self.color.contrast),
                            "orderings": [list(o) for o in self.color.orderings]}
        return out


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("simple", "squash to size + 1/8, random size crop, flip; eval: squash to size",
               crop="random_crop"),
        Preset("inception",
               "slim inception_preprocessing with fast_mode=True (train_image_classifier.py's "
               "default): distorted bounding-box crop, bilinear resize, flip, brightness then "
               "saturation; eval: central crop 0.875",
               crop="distorted_bounding_box", area=(0.05, 1.0), aspect=(0.75, 1.33),
               min_object_covered=0.1, max_attempts=100, color=ColorDistortion(),
               eval_crop="central_fraction", eval_fraction=0.875),
        Preset("torchvision",
               "torchvision reference: RandomResizedCrop + flip; eval: resize the short side, "
               "centre crop 0.875",
               crop="random_resized_crop", area=(0.08, 1.0), aspect=(3 / 4, 4 / 3),
               max_attempts=10, eval_crop="resize_short_side", eval_fraction=0.875),
    )
}
DEFAULT_PRESET = "simple"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing preset {name!r}; choose one of: "
                         f"{', '.join(PRESETS)}") from None
