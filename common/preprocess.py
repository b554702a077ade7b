"""Preprocessing specs: what every backend's native pipeline must compute.

Decoding and resizing happen once, in ``common.data.load_image`` (PIL), so
every backend starts from the same uint8 pixels. What a backend does natively
(torchvision transforms, ``tf.image`` ops inside ``tf.data`` or the slim
graph) is only what is written here:

* train: resize to ``crop_source_size(size)``, random ``size`` x ``size``
  crop, random left-right flip (when the phase has ``augment = true``);
* eval: the image at ``size`` x ``size``;
* then ``normalise``: ``(x * scale - mean) / std`` per channel, in the channel
  order given (``bgr`` for Keras' "caffe" ResNet weights).

That is all any backend does, the slim one included: it runs these steps as
``tf.image`` ops in its ``tf.data`` pipeline and does *not* use slim's
``inception_preprocessing`` (distorted bounding-box crops, colour distortion,
an 87.5 % central crop for evaluation) or ``vgg_preprocessing`` (aspect-
preserving resize); the presets below only borrow their normalisations.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        import numpy as np

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
    """Side of the image that a training crop of ``size`` is taken from (+1/8)."""
    return size + max(1, size // 8)
