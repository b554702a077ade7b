"""The Keras backend's models: ``keras.applications`` constructors and layer names.

One entry per model: the ``keras.applications`` constructor (built with
``include_top=False``), each canonical block of ``common.models`` as the name
of the *last* layer of the block (a block is every layer after the previous
block's last layer up to and including its own; an empty tuple — the
InceptionV3 stem, whose layers have generated names — means every layer
before the first layer of the next block, so Keras' famous "freeze the first
249 layers" is the boundary after ``mixed8``), the suite's head layers and
the ``*_notop.h5`` ImageNet file that ``keras.utils.get_file`` caches in
``$KERAS_HOME/models``. Framework-free: read without importing Keras.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from backends.base import ImagenetWeights, ModelEntry
from common.models import EFFICIENTNET_LITE0, INCEPTION_V3

# Weights conversion (common.canonical): canonical layer -> the index of its conv2d_bn()
# call in keras.applications.inception_v3 (a Conv2D, then a BatchNormalization with
# scale=False). The layers have generated names (conv2d_7, batch_normalization_7), and
# model.layers is in graph order, not call order; the calls follow the paper's branch
# order, which is also torchvision's module order and slim's variable order, so the
# table is the canonical order (convert.py checks every kernel shape against it).
_INCEPTION_CANONICAL = {layer.name: index for index, layer in enumerate(INCEPTION_V3.layers)}

def _lite0_layers(layer: str) -> tuple[str, str]:
    """Canonical EfficientNet-Lite0 layer -> its (convolution, BatchNormalization) layer
    names in ``model.efficientnet_lite0`` (keras.applications' EfficientNet names)."""
    if "/" not in layer:
        return f"{layer}_conv", f"{layer}_bn"
    block, part = layer.split("/")
    return {"expand": (f"{block}_expand_conv", f"{block}_expand_bn"),
            "dwconv": (f"{block}_dwconv", f"{block}_bn"),
            "project": (f"{block}_project_conv", f"{block}_project_bn")}[part]


def _lite0_block_end(block: str) -> str:
    """The last layer of a canonical EfficientNet-Lite0 block: its last MBConv's ``_add``
    (the residual) or ``_project_bn``; ``stem_activation``, ``top_activation``."""
    if block in ("stem", "top"):
        return f"{block}_activation"
    s = int(block[len("block"):])
    stage = EFFICIENTNET_LITE0.stages[s - 1]
    last = f"block{s}{chr(ord('a') + stage.repeats - 1)}"
    # a stage's later blocks have stride 1 and its own width in and out: residual
    residual = stage.repeats > 1
    return f"{last}_add" if residual else f"{last}_project_bn"


# the suite's new head: Dense(hidden, relu) (optional) then Dense(num_classes)
HEAD_LAYERS = ("head_hidden", "head_logits")

_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class KerasModelEntry(ModelEntry):
    # model.layers index of each canonical block's first layer, and the backbone's layer
    # count (the head's layers follow): what a recipe's unfreeze_from = N is checked and
    # mapped against without building the model (model.block_ranges asserts the same)
    first_layers: Mapping[str, int] = field(default_factory=dict)
    base_layers: int = 0


MODELS: dict[str, ModelEntry] = {
    "inception_v3": KerasModelEntry(
        constructor="keras.applications:InceptionV3",
        # mixed0..mixed10 are the concatenations: Mixed_6a..6e = mixed3..mixed7,
        # Mixed_7a..7c = mixed8..mixed10 (layer 248 is mixed8, so Mixed_7b starts at 249)
        blocks={"stem": (), **{b: (f"mixed{i}",) for i, b in enumerate(
            ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"))}},
        head=HEAD_LAYERS,
        imagenet=ImagenetWeights(
            file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_KERAS_APPLICATIONS + "inception_v3/"
                "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            preprocessing="inception", file_hash="bcbd6486424b2319ff4ef7d526e38f63"),
        canonical=_INCEPTION_CANONICAL,
        first_layers={"stem": 0, "Mixed_5b": 18, "Mixed_5c": 41, "Mixed_5d": 64, "Mixed_6a": 87,
                      "Mixed_6b": 101, "Mixed_6c": 133, "Mixed_6d": 165, "Mixed_6e": 197,
                      "Mixed_7a": 229, "Mixed_7b": 249, "Mixed_7c": 280},
        base_layers=311,
    ),
    "resnet50": KerasModelEntry(
        constructor="keras.applications:ResNet50",
        blocks={"stem": ("pool1_pool",), "layer1": ("conv2_block3_out",),
                "layer2": ("conv3_block4_out",), "layer3": ("conv4_block6_out",),
                "layer4": ("conv5_block3_out",)},
        head=HEAD_LAYERS,
        imagenet=ImagenetWeights(
            file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_KERAS_APPLICATIONS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            # keras.applications.resnet50.preprocess_input: "caffe" (BGR, mean-subtracted)
            preprocessing="caffe", file_hash="4d473c1dd8becc155b73f8504c6f6626"),
        first_layers={"stem": 0, "layer1": 7, "layer2": 39, "layer3": 81, "layer4": 143},
        base_layers=175,
    ),
    "vgg16": KerasModelEntry(
        constructor="keras.applications:VGG16",
        blocks={f"block{b}": (f"block{b}_pool",) for b in range(1, 6)},
        head=HEAD_LAYERS,
        imagenet=ImagenetWeights(
            file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url=_KERAS_APPLICATIONS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            # keras.applications.vgg16.preprocess_input: "caffe" (BGR, mean-subtracted)
            preprocessing="caffe", file_hash="6d6bbae143d832006294945121d1f1fc"),
        # the canonical names are Keras' layer names with "/" (block1/conv1: block1_conv1)
        canonical={f"block{b}/conv{k}": f"block{b}_conv{k}"
                   for b, convs in enumerate((2, 2, 3, 3, 3), 1) for k in range(1, convs + 1)},
        first_layers={"block1": 0, "block2": 4, "block3": 7, "block4": 11, "block5": 15},
        base_layers=19,
    ),
    "efficientnet_lite0": KerasModelEntry(
        # Keras has no Lite variant: model.efficientnet_lite0 builds it from Keras layers; its
        # ImageNet weights are common.models' shared_imagenet, converted (no *_notop.h5)
        constructor="backends.keras.model:efficientnet_lite0",
        blocks={block: (_lite0_block_end(block),) for block in EFFICIENTNET_LITE0.blocks},
        head=HEAD_LAYERS,
        canonical={layer.name: _lite0_layers(layer.name) for layer in EFFICIENTNET_LITE0.layers},
        first_layers={"stem": 0, "block1": 4, "block2": 9, "block3": 26, "block4": 43,
                      "block5": 69, "block6": 95, "block7": 130, "top": 138},
        base_layers=141,
    ),
}

def imagenet_dir() -> Path:
    """Keras' cache of downloaded weights: ``$KERAS_HOME/models`` (``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras")) / "models"
