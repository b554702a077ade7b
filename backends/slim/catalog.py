"""The TF-Slim backend's models: ``tf_slim.nets`` functions and variable scopes.

One entry per model (slim's ``nets_factory.networks_map`` + ``arg_scopes_map``
idea): the net function that builds the backbone with the suite's head (in
``model.py``), its ``arg_scope`` factory, each canonical block of
``common.models`` as variable scopes (``--trainable_scopes`` /
``--checkpoint_exclude_scopes`` values), the head scopes, the scope of the
linear classifier layer, and the official checkpoint inside the
tensorflow/models slim archive. Framework-free: read without importing TF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backends.base import ImagenetWeights, ModelEntry
from common.models import EFFICIENTNET_LITE0

_MODELS_URL = "http://download.tensorflow.org/models/"


@dataclass(frozen=True)
class SlimModel(ModelEntry):
    arg_scope: str = ""        # "module:function(weight_decay, batch_norm_decay)"
    logits_layer: str = ""     # the linear classifier whose rows --reuse-head-rows copies


def _inception(name: str) -> tuple[str, ...]:
    return (f"InceptionV3/{name}",)


# Weights conversion (common.canonical): canonical layer -> its scope under InceptionV3/
# (variables <scope>/weights and <scope>/BatchNorm/{beta,moving_mean,moving_variance}).
# Written out because slim's names are the original Google ones and not systematic
# (Mixed_5c/Branch_1/Conv_1_0c_5x5; Mixed_6a's 3x3 Conv2d_1a_1x1; Mixed_7b's
# Conv2d_0b_3x1 vs Mixed_7c's Conv2d_0c_3x1).
_INCEPTION_CANONICAL = {
    "Conv2d_1a_3x3": "Conv2d_1a_3x3",
    "Conv2d_2a_3x3": "Conv2d_2a_3x3",
    "Conv2d_2b_3x3": "Conv2d_2b_3x3",
    "Conv2d_3b_1x1": "Conv2d_3b_1x1",
    "Conv2d_4a_3x3": "Conv2d_4a_3x3",
    "Mixed_5b/branch1x1": "Mixed_5b/Branch_0/Conv2d_0a_1x1",
    "Mixed_5b/branch5x5_1": "Mixed_5b/Branch_1/Conv2d_0a_1x1",
    "Mixed_5b/branch5x5_2": "Mixed_5b/Branch_1/Conv2d_0b_5x5",
    "Mixed_5b/branch3x3dbl_1": "Mixed_5b/Branch_2/Conv2d_0a_1x1",
    "Mixed_5b/branch3x3dbl_2": "Mixed_5b/Branch_2/Conv2d_0b_3x3",
    "Mixed_5b/branch3x3dbl_3": "Mixed_5b/Branch_2/Conv2d_0c_3x3",
    "Mixed_5b/branch_pool": "Mixed_5b/Branch_3/Conv2d_0b_1x1",
    "Mixed_5c/branch1x1": "Mixed_5c/Branch_0/Conv2d_0a_1x1",
    "Mixed_5c/branch5x5_1": "Mixed_5c/Branch_1/Conv2d_0b_1x1",
    "Mixed_5c/branch5x5_2": "Mixed_5c/Branch_1/Conv_1_0c_5x5",
    "Mixed_5c/branch3x3dbl_1": "Mixed_5c/Branch_2/Conv2d_0a_1x1",
    "Mixed_5c/branch3x3dbl_2": "Mixed_5c/Branch_2/Conv2d_0b_3x3",
    "Mixed_5c/branch3x3dbl_3": "Mixed_5c/Branch_2/Conv2d_0c_3x3",
    "Mixed_5c/branch_pool": "Mixed_5c/Branch_3/Conv2d_0b_1x1",
    "Mixed_5d/branch1x1": "Mixed_5d/Branch_0/Conv2d_0a_1x1",
    "Mixed_5d/branch5x5_1": "Mixed_5d/Branch_1/Conv2d_0a_1x1",
    "Mixed_5d/branch5x5_2": "Mixed_5d/Branch_1/Conv2d_0b_5x5",
    "Mixed_5d/branch3x3dbl_1": "Mixed_5d/Branch_2/Conv2d_0a_1x1",
    "Mixed_5d/branch3x3dbl_2": "Mixed_5d/Branch_2/Conv2d_0b_3x3",
    "Mixed_5d/branch3x3dbl_3": "Mixed_5d/Branch_2/Conv2d_0c_3x3",
    "Mixed_5d/branch_pool": "Mixed_5d/Branch_3/Conv2d_0b_1x1",
    "Mixed_6a/branch3x3": "Mixed_6a/Branch_0/Conv2d_1a_1x1",
    "Mixed_6a/branch3x3dbl_1": "Mixed_6a/Branch_1/Conv2d_0a_1x1",
    "Mixed_6a/branch3x3dbl_2": "Mixed_6a/Branch_1/Conv2d_0b_3x3",
    "Mixed_6a/branch3x3dbl_3": "Mixed_6a/Branch_1/Conv2d_1a_1x1",
    "Mixed_6b/branch1x1": "Mixed_6b/Branch_0/Conv2d_0a_1x1",
    "Mixed_6b/branch7x7_1": "Mixed_6b/Branch_1/Conv2d_0a_1x1",
    "Mixed_6b/branch7x7_2": "Mixed_6b/Branch_1/Conv2d_0b_1x7",
    "Mixed_6b/branch7x7_3": "Mixed_6b/Branch_1/Conv2d_0c_7x1",
    "Mixed_6b/branch7x7dbl_1": "Mixed_6b/Branch_2/Conv2d_0a_1x1",
    "Mixed_6b/branch7x7dbl_2": "Mixed_6b/Branch_2/Conv2d_0b_7x1",
    "Mixed_6b/branch7x7dbl_3": "Mixed_6b/Branch_2/Conv2d_0c_1x7",
    "Mixed_6b/branch7x7dbl_4": "Mixed_6b/Branch_2/Conv2d_0d_7x1",
    "Mixed_6b/branch7x7dbl_5": "Mixed_6b/Branch_2/Conv2d_0e_1x7",
    "Mixed_6b/branch_pool": "Mixed_6b/Branch_3/Conv2d_0b_1x1",
    "Mixed_6c/branch1x1": "Mixed_6c/Branch_0/Conv2d_0a_1x1",
    "Mixed_6c/branch7x7_1": "Mixed_6c/Branch_1/Conv2d_0a_1x1",
    "Mixed_6c/branch7x7_2": "Mixed_6c/Branch_1/Conv2d_0b_1x7",
    "Mixed_6c/branch7x7_3": "Mixed_6c/Branch_1/Conv2d_0c_7x1",
    "Mixed_6c/branch7x7dbl_1": "Mixed_6c/Branch_2/Conv2d_0a_1x1",
    "Mixed_6c/branch7x7dbl_2": "Mixed_6c/Branch_2/Conv2d_0b_7x1",
    "Mixed_6c/branch7x7dbl_3": "Mixed_6c/Branch_2/Conv2d_0c_1x7",
    "Mixed_6c/branch7x7dbl_4": "Mixed_6c/Branch_2/Conv2d_0d_7x1",
    "Mixed_6c/branch7x7dbl_5": "Mixed_6c/Branch_2/Conv2d_0e_1x7",
    "Mixed_6c/branch_pool": "Mixed_6c/Branch_3/Conv2d_0b_1x1",
    "Mixed_6d/branch1x1": "Mixed_6d/Branch_0/Conv2d_0a_1x1",
    "Mixed_6d/branch7x7_1": "Mixed_6d/Branch_1/Conv2d_0a_1x1",
    "Mixed_6d/branch7x7_2": "Mixed_6d/Branch_1/Conv2d_0b_1x7",
    "Mixed_6d/branch7x7_3": "Mixed_6d/Branch_1/Conv2d_0c_7x1",
    "Mixed_6d/branch7x7dbl_1": "Mixed_6d/Branch_2/Conv2d_0a_1x1",
    "Mixed_6d/branch7x7dbl_2": "Mixed_6d/Branch_2/Conv2d_0b_7x1",
    "Mixed_6d/branch7x7dbl_3": "Mixed_6d/Branch_2/Conv2d_0c_1x7",
    "Mixed_6d/branch7x7dbl_4": "Mixed_6d/Branch_2/Conv2d_0d_7x1",
    "Mixed_6d/branch7x7dbl_5": "Mixed_6d/Branch_2/Conv2d_0e_1x7",
    "Mixed_6d/branch_pool": "Mixed_6d/Branch_3/Conv2d_0b_1x1",
    "Mixed_6e/branch1x1": "Mixed_6e/Branch_0/Conv2d_0a_1x1",
    "Mixed_6e/branch7x7_1": "Mixed_6e/Branch_1/Conv2d_0a_1x1",
    "Mixed_6e/branch7x7_2": "Mixed_6e/Branch_1/Conv2d_0b_1x7",
    "Mixed_6e/branch7x7_3": "Mixed_6e/Branch_1/Conv2d_0c_7x1",
    "Mixed_6e/branch7x7dbl_1": "Mixed_6e/Branch_2/Conv2d_0a_1x1",
    "Mixed_6e/branch7x7dbl_2": "Mixed_6e/Branch_2/Conv2d_0b_7x1",
    "Mixed_6e/branch7x7dbl_3": "Mixed_6e/Branch_2/Conv2d_0c_1x7",
    "Mixed_6e/branch7x7dbl_4": "Mixed_6e/Branch_2/Conv2d_0d_7x1",
    "Mixed_6e/branch7x7dbl_5": "Mixed_6e/Branch_2/Conv2d_0e_1x7",
    "Mixed_6e/branch_pool": "Mixed_6e/Branch_3/Conv2d_0b_1x1",
    "Mixed_7a/branch3x3_1": "Mixed_7a/Branch_0/Conv2d_0a_1x1",
    "Mixed_7a/branch3x3_2": "Mixed_7a/Branch_0/Conv2d_1a_3x3",
    "Mixed_7a/branch7x7x3_1": "Mixed_7a/Branch_1/Conv2d_0a_1x1",
    "Mixed_7a/branch7x7x3_2": "Mixed_7a/Branch_1/Conv2d_0b_1x7",
    "Mixed_7a/branch7x7x3_3": "Mixed_7a/Branch_1/Conv2d_0c_7x1",
    "Mixed_7a/branch7x7x3_4": "Mixed_7a/Branch_1/Conv2d_1a_3x3",
    "Mixed_7b/branch1x1": "Mixed_7b/Branch_0/Conv2d_0a_1x1",
    "Mixed_7b/branch3x3_1": "Mixed_7b/Branch_1/Conv2d_0a_1x1",
    "Mixed_7b/branch3x3_2a": "Mixed_7b/Branch_1/Conv2d_0b_1x3",
    "Mixed_7b/branch3x3_2b": "Mixed_7b/Branch_1/Conv2d_0b_3x1",
    "Mixed_7b/branch3x3dbl_1": "Mixed_7b/Branch_2/Conv2d_0a_1x1",
    "Mixed_7b/branch3x3dbl_2": "Mixed_7b/Branch_2/Conv2d_0b_3x3",
    "Mixed_7b/branch3x3dbl_3a": "Mixed_7b/Branch_2/Conv2d_0c_1x3",
    "Mixed_7b/branch3x3dbl_3b": "Mixed_7b/Branch_2/Conv2d_0d_3x1",
    "Mixed_7b/branch_pool": "Mixed_7b/Branch_3/Conv2d_0b_1x1",
    "Mixed_7c/branch1x1": "Mixed_7c/Branch_0/Conv2d_0a_1x1",
    "Mixed_7c/branch3x3_1": "Mixed_7c/Branch_1/Conv2d_0a_1x1",
    "Mixed_7c/branch3x3_2a": "Mixed_7c/Branch_1/Conv2d_0b_1x3",
    "Mixed_7c/branch3x3_2b": "Mixed_7c/Branch_1/Conv2d_0c_3x1",
    "Mixed_7c/branch3x3dbl_1": "Mixed_7c/Branch_2/Conv2d_0a_1x1",
    "Mixed_7c/branch3x3dbl_2": "Mixed_7c/Branch_2/Conv2d_0b_3x3",
    "Mixed_7c/branch3x3dbl_3a": "Mixed_7c/Branch_2/Conv2d_0c_1x3",
    "Mixed_7c/branch3x3dbl_3b": "Mixed_7c/Branch_2/Conv2d_0d_3x1",
    "Mixed_7c/branch_pool": "Mixed_7c/Branch_3/Conv2d_0b_1x1",
}


MODELS: dict[str, ModelEntry] = {
    "inception_v3": SlimModel(
        constructor="backends.slim.model:inception_v3",
        arg_scope="tf_slim.nets.inception_v3:inception_v3_arg_scope",
        blocks={"stem": tuple(f"InceptionV3/{s}" for s in (
                    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3",
                    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_5a_3x3")),
                **{b: _inception(b) for b in (
                    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                    "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")}},
        head=("InceptionV3/Logits",),
        aux_head=("InceptionV3/AuxLogits",),
        logits_layer="InceptionV3/Logits/Conv2d_1c_1x1",
        canonical={name: f"InceptionV3/{scope}" for name, scope in _INCEPTION_CANONICAL.items()},
        imagenet=ImagenetWeights(file="inception_v3.ckpt",
                                 url=_MODELS_URL + "inception_v3_2016_08_28.tar.gz",
                                 archive="inception_v3_2016_08_28.tar.gz",
                                 preprocessing="inception"),
    ),
    "resnet50": SlimModel(
        constructor="backends.slim.model:resnet_v1_50",
        arg_scope="tf_slim.nets.resnet_utils:resnet_arg_scope",
        blocks={"stem": ("resnet_v1_50/conv1",),
                **{f"layer{i}": (f"resnet_v1_50/block{i}",) for i in range(1, 5)}},
        head=("resnet_v1_50/logits",),
        logits_layer="resnet_v1_50/logits",
        imagenet=ImagenetWeights(file="resnet_v1_50.ckpt",
                                 url=_MODELS_URL + "resnet_v1_50_2016_08_28.tar.gz",
                                 archive="resnet_v1_50_2016_08_28.tar.gz",
                                 # slim's vgg_preprocessing: RGB, ImageNet mean subtracted
                                 preprocessing="vgg"),
    ),
    "vgg16": SlimModel(
        constructor="backends.slim.model:vgg_16",
        arg_scope="tf_slim.nets.vgg:vgg_arg_scope",
        # conv<b> holds block b's variables; pool<b> (no variables) ends it: its output is the
        # block's end point
        blocks={f"block{b}": (f"vgg_16/conv{b}", f"vgg_16/pool{b}") for b in range(1, 6)},
        head=("vgg_16/Logits",),
        logits_layer="vgg_16/Logits/Conv2d_1c_1x1",
        # slim.repeat names the convolutions of conv<b> conv<b>_1, conv<b>_2, ...
        canonical={f"block{b}/conv{k}": f"vgg_16/conv{b}/conv{b}_{k}"
                   for b, convs in enumerate((2, 2, 3, 3, 3), 1) for k in range(1, convs + 1)},
        imagenet=ImagenetWeights(file="vgg_16.ckpt",
                                 url=_MODELS_URL + "vgg_16_2016_08_28.tar.gz",
                                 archive="vgg_16_2016_08_28.tar.gz",
                                 # slim's vgg_preprocessing: RGB, ImageNet mean subtracted
                                 preprocessing="vgg"),
    ),
    "efficientnet_lite0": SlimModel(
        constructor="backends.slim.model:efficientnet_lite0",
        arg_scope="backends.slim.model:efficientnet_lite0_arg_scope",
        # a stage is the scopes of its MBConv blocks (EfficientNetLite0/block2a, block2b); its
        # output is the end point of the last one
        blocks={block: tuple(f"EfficientNetLite0/{layer.name.split('/')[0]}"
                             for layer in EFFICIENTNET_LITE0.layers
                             if layer.name.split("/")[0][:-1] == block
                             and layer.name.endswith("/project"))
                if block.startswith("block") else (f"EfficientNetLite0/{block}",)
                for block in EFFICIENTNET_LITE0.blocks},
        head=("EfficientNetLite0/Logits",),
        logits_layer="EfficientNetLite0/Logits/Conv2d_1c_1x1",
        # the scopes are the canonical names (EfficientNetLite0/block2a/expand)
        canonical={layer.name: f"EfficientNetLite0/{layer.name}"
                   for layer in EFFICIENTNET_LITE0.layers},
    ),
}


def imagenet_dir() -> Path:
    """TF-Slim has no download cache: ``$TRANSFER_BENCH_DATA/weights/imagenet/slim``."""
    from common.paths import cache_root

    return cache_root() / "weights" / "imagenet" / "slim"
