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

_MODELS_URL = "http://download.tensorflow.org/models/"


@dataclass(frozen=True)
class SlimModel(ModelEntry):
    arg_scope: str = ""        # "module:function(weight_decay, batch_norm_decay)"
    logits_layer: str = ""     # the linear classifier whose rows --reuse-head-rows copies


def _inception(name: str) -> tuple[str, ...]:
    return (f"InceptionV3/{name}",)


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
}


def imagenet_dir() -> Path:
    """TF-Slim has no download cache: ``$TRANSFER_BENCH_DATA/weights/imagenet/slim``."""
    from common.paths import cache_root

    return cache_root() / "weights" / "imagenet" / "slim"
