"""The resized-crop presets (``inception``, ``torchvision``) as ``tf.image`` stateless ops:
one implementation for the two pipelines that run on TensorFlow, Keras' ``tf.data``
(``backends.keras.data``, Keras on TensorFlow) and slim's graph (``backends.slim.data``).

slim's ``inception_preprocessing.preprocess_for_train``: ``distorted_bounding_box_crop``
(``sample_distorted_bounding_box`` with the whole image as the box), the crop as float32
in [0, 1], a bilinear resize, a left-right flip and, where the preset has one,
``distort_color`` in the preset's orderings (``inception``: slim's ``fast_mode=True``, one),
clipped to [0, 1] and returned in [0, 255] for the backend's normalisation. Stateless ops
seeded by the caller: an epoch's augmentation depends on (seed, epoch, index) only.
TensorFlow has no ``RandomResizedCrop`` sampler, so ``torchvision`` uses the same one with
its own bounds (docs/design.md, "Semantics that are equal across backends").
"""

from __future__ import annotations

import tensorflow as tf

from common.preprocess import ColorDistortion, Preset
from common.sampler import COLOR_OPS, PARAMS_LENGTH


def distorted_bounding_box_crop(image: tf.Tensor, preset: Preset, seed: tf.Tensor) -> tf.Tensor:
    """slim's ``distorted_bounding_box_crop`` for a whole-image box, stateless."""
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), whole_image, seed=seed, min_object_covered=preset.min_object_covered,
        aspect_ratio_range=preset.aspect, area_range=preset.area,
        max_attempts=preset.max_attempts, use_image_if_no_bounding_boxes=True)
    return tf.slice(image, begin, size)


def distort_color(image: tf.Tensor, color: ColorDistortion, seed: tf.Tensor) -> tf.Tensor:
    """slim's ``distort_color``: one of ``color.orderings`` chosen per image
    (its ``apply_with_random_selector``, here ``tf.switch_case``), clipped to [0, 1]."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    ops = {
        "brightness": lambda x: tf.image.stateless_random_brightness(x, color.brightness, seeds[1]),
        "saturation": lambda x: tf.image.stateless_random_saturation(x, *color.saturation, seeds[2]),
        "hue": lambda x: tf.image.stateless_random_hue(x, color.hue, seeds[3]),
        "contrast": lambda x: tf.image.stateless_random_contrast(x, *color.contrast, seeds[4]),
    }

    def branch(ordering):
        def apply():
            x = image
            for op in ordering:
                x = ops[op](x)
            return x
        return apply

    which = tf.random.stateless_uniform([], seeds[0], maxval=len(color.orderings), dtype=tf.int32)
    return tf.clip_by_value(tf.switch_case(which, [branch(o) for o in color.orderings]), 0.0, 1.0)


def resized_crop_augment(image: tf.Tensor, size: int, preset: Preset, seed: tf.Tensor) -> tf.Tensor:
    """``preset``'s training augmentation of a uint8 HWC image (a resized-crop preset):
    ``[size, size, 3]`` float32 in [0, 255]."""
    crop_seed, flip_seed, color_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3))
    image = tf.image.convert_image_dtype(distorted_bounding_box_crop(image, preset, crop_seed),
                                         tf.float32)  # [0, 1], as slim's
    image = tf.image.resize(image, (size, size), method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)  # p = 0.5
    if preset.color is not None:
        image = distort_color(image, preset.color, color_seed)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def adjust_color(x: tf.Tensor, op: str, amount: tf.Tensor) -> tf.Tensor:
    """One colour op of ``distort_color`` by a given ``amount`` (``tf.image.adjust_*``)."""
    if op == "brightness":
        return tf.image.adjust_brightness(x, amount)
    if op == "saturation":
        return tf.image.adjust_saturation(x, amount)
    if op == "hue":
        return tf.image.adjust_hue(x, amount)
    return tf.image.adjust_contrast(x, amount)


def apply_params(image: tf.Tensor, size: int, preset: Preset, params: tf.Tensor) -> tf.Tensor:
    """``fidelity.crop_sampler = "aligned"``: the augmentation drawn in ``common.sampler``
    (``params``: ``CropParams.vector()``) applied with ``tf.image`` ops to a uint8 HWC
    training source. ``simple``: the uint8 crop, flipped; a resized crop: float32 in [0, 1],
    bilinear resize, flipped, the colour ops in the drawn ordering with the drawn amounts,
    clipped, in [0, 255] (what ``resized_crop_augment`` computes, with these draws)."""
    params = tf.ensure_shape(params, (PARAMS_LENGTH,))
    box = tf.cast(params[:4], tf.int32)
    flip = params[4] > 0.5
    image = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], 3]))
    image.set_shape((None, None, 3))
    if preset.crop == "random_crop":
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
        return tf.ensure_shape(image, (size, size, 3))
    x = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), (size, size),
                        method="bilinear")
    x = tf.cond(flip, lambda: tf.image.flip_left_right(x), lambda: x)
    if preset.color is not None:
        amounts = tf.cast(params[6:], tf.float32)

        def branch(ordering):
            def apply():
                y = x
                for op in ordering:
                    y = adjust_color(y, op, amounts[COLOR_OPS.index(op)])
                return y
            return apply

        branches = [branch(o) for o in preset.color.orderings]
        x = tf.switch_case(tf.cast(params[5], tf.int32), branches)
    return tf.ensure_shape(tf.clip_by_value(x, 0.0, 1.0) * 255.0, (size, size, 3))
