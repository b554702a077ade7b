"""The model table: framework-free facts about each model.

What every backend must agree on — input sizes, the canonical blocks in
forward order, the width of the pooled features, the input normalisation of
suite-made weights, whether the architecture has an auxiliary classifier, the
canonical layers its weights convert through (``common.canonical``) — and
nothing about how a framework names things. Each backend keeps its own
table of native names, constructors and ImageNet files in
``backends/<name>/catalog.py`` (slim's ``nets_factory`` / timm's
``pretrained_cfg`` idea): adding a model is one entry here plus one entry per
backend catalog (see docs/design.md, "Adding a model").
"""

from __future__ import annotations

from dataclasses import dataclass

# Canonical name of the classifier head in every model.
HEAD = "head"

# BatchNorm moving-average decay used by every backend:
# moving = BN_DECAY * moving + (1 - BN_DECAY) * batch statistic.
# The frameworks' defaults differ widely: torch.nn.BatchNorm2d momentum=0.1
# (= decay 0.9), Keras BatchNormalization momentum=0.99, slim's
# inception_v3_arg_scope batch_norm_decay=0.9997. With the few hundred steps
# of a CPU run, 0.99 and 0.9997 leave the moving statistics near their
# initial values, so a model trained in train mode evaluates badly in
# inference mode; one explicit value keeps the comparison about the recipe.
BN_DECAY = 0.9


# The tensors of each kind of canonical layer, in canonical order (common.canonical):
# ``conv_bn``, a convolution without bias + BatchNorm without scale (InceptionV3);
# ``conv``, a convolution with a bias (and no normalisation).
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "conv_bn": ("kernel", "beta", "moving_mean", "moving_variance"),
    "conv": ("kernel", "bias"),
}


@dataclass(frozen=True)
class Layer:
    """One canonical layer of a model's weights (``common.canonical``): its name, its kernel
    shape (HWIO) and its kind (``LAYER_TENSORS``)."""

    name: str                    # "Mixed_5b/branch5x5_2"
    kernel: tuple[int, ...]      # HWIO
    kind: str = "conv_bn"

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(canonical tensor name, shape)`` of this layer, in canonical order."""
        out = self.kernel[-1]
        return [(f"{self.name}/kernel", self.kernel)] + [
            (f"{self.name}/{t}", (out,)) for t in LAYER_TENSORS[self.kind][1:]]


@dataclass(frozen=True)
class ModelSpec:
    """One model as every backend sees it (native names live in each backend's catalog)."""

    name: str
    default_size: int
    min_size: int
    # canonical blocks of the backbone in forward order (head excluded)
    blocks: tuple[str, ...]
    # width of the pooled backbone features that the head reads
    feature_dim: int
    # input normalisation of weights the suite makes itself (common.preprocess);
    # ImageNet weights bring their own (each backend catalog's ImageNet entry)
    preprocessing: str
    # the architecture defines an auxiliary classifier (InceptionV3's AuxLogits)
    aux_head: bool = False
    paper: str = ""
    # the canonical layers of the backbone in forward order (common.canonical); each
    # backend catalog's ``canonical`` table maps them to native layers. Empty: the
    # model's weights do not convert, for the reason ``not_one_architecture`` gives
    layers: tuple[Layer, ...] = ()
    not_one_architecture: str = ""
    # the Adam learning rate of ``--weights source`` pretraining on ``shapes`` (from random
    # init, every layer; benchmarks.driver.pretrain_settings): 1e-3 suits the BatchNorm
    # models; a deep stack of plain convolutions (VGG16) stays at chance with it
    pretrain_learning_rate: float = 1e-3

    def top_blocks(self, n: int) -> tuple[str, ...]:
        """The last ``n`` canonical backbone blocks (``partial(top=n)``)."""
        if not 0 <= n <= len(self.blocks):
            raise ValueError(
                f"top_blocks={n} is out of range for {self.name}: "
                f"0..{len(self.blocks)} blocks ({', '.join(self.blocks)})"
            )
        return self.blocks[len(self.blocks) - n :] if n else ()


INCEPTION_V3 = ModelSpec(
    name="inception_v3",
    default_size=299,
    min_size=75,
    blocks=(
        "stem",
        "Mixed_5b", "Mixed_5c", "Mixed_5d",
        "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
        "Mixed_7a", "Mixed_7b", "Mixed_7c",
    ),
    feature_dim=2048,
    preprocessing="inception",
    aux_head=True,
    paper="Szegedy et al. 2015, Rethinking the Inception Architecture",
    # its 94 convolutions in forward order (= torchvision's module order = slim's variable
    # order = the order keras.applications calls conv2d_bn); named after torchvision's
    # module paths with "/" (docs/design.md, "Canonical weights")
    layers=tuple(Layer(name, kernel) for name, kernel in [
        ("Conv2d_1a_3x3", (3, 3, 3, 32)),
        ("Conv2d_2a_3x3", (3, 3, 32, 32)),
        ("Conv2d_2b_3x3", (3, 3, 32, 64)),
        ("Conv2d_3b_1x1", (1, 1, 64, 80)),
        ("Conv2d_4a_3x3", (3, 3, 80, 192)),
        ("Mixed_5b/branch1x1", (1, 1, 192, 64)),
        ("Mixed_5b/branch5x5_1", (1, 1, 192, 48)),
        ("Mixed_5b/branch5x5_2", (5, 5, 48, 64)),
        ("Mixed_5b/branch3x3dbl_1", (1, 1, 192, 64)),
        ("Mixed_5b/branch3x3dbl_2", (3, 3, 64, 96)),
        ("Mixed_5b/branch3x3dbl_3", (3, 3, 96, 96)),
        ("Mixed_5b/branch_pool", (1, 1, 192, 32)),
        ("Mixed_5c/branch1x1", (1, 1, 256, 64)),
        ("Mixed_5c/branch5x5_1", (1, 1, 256, 48)),
        ("Mixed_5c/branch5x5_2", (5, 5, 48, 64)),
        ("Mixed_5c/branch3x3dbl_1", (1, 1, 256, 64)),
        ("Mixed_5c/branch3x3dbl_2", (3, 3, 64, 96)),
        ("Mixed_5c/branch3x3dbl_3", (3, 3, 96, 96)),
        ("Mixed_5c/branch_pool", (1, 1, 256, 64)),
        ("Mixed_5d/branch1x1", (1, 1, 288, 64)),
        ("Mixed_5d/branch5x5_1", (1, 1, 288, 48)),
        ("Mixed_5d/branch5x5_2", (5, 5, 48, 64)),
        ("Mixed_5d/branch3x3dbl_1", (1, 1, 288, 64)),
        ("Mixed_5d/branch3x3dbl_2", (3, 3, 64, 96)),
        ("Mixed_5d/branch3x3dbl_3", (3, 3, 96, 96)),
        ("Mixed_5d/branch_pool", (1, 1, 288, 64)),
        ("Mixed_6a/branch3x3", (3, 3, 288, 384)),
        ("Mixed_6a/branch3x3dbl_1", (1, 1, 288, 64)),
        ("Mixed_6a/branch3x3dbl_2", (3, 3, 64, 96)),
        ("Mixed_6a/branch3x3dbl_3", (3, 3, 96, 96)),
        ("Mixed_6b/branch1x1", (1, 1, 768, 192)),
        ("Mixed_6b/branch7x7_1", (1, 1, 768, 128)),
        ("Mixed_6b/branch7x7_2", (1, 7, 128, 128)),
        ("Mixed_6b/branch7x7_3", (7, 1, 128, 192)),
        ("Mixed_6b/branch7x7dbl_1", (1, 1, 768, 128)),
        ("Mixed_6b/branch7x7dbl_2", (7, 1, 128, 128)),
        ("Mixed_6b/branch7x7dbl_3", (1, 7, 128, 128)),
        ("Mixed_6b/branch7x7dbl_4", (7, 1, 128, 128)),
        ("Mixed_6b/branch7x7dbl_5", (1, 7, 128, 192)),
        ("Mixed_6b/branch_pool", (1, 1, 768, 192)),
        ("Mixed_6c/branch1x1", (1, 1, 768, 192)),
        ("Mixed_6c/branch7x7_1", (1, 1, 768, 160)),
        ("Mixed_6c/branch7x7_2", (1, 7, 160, 160)),
        ("Mixed_6c/branch7x7_3", (7, 1, 160, 192)),
        ("Mixed_6c/branch7x7dbl_1", (1, 1, 768, 160)),
        ("Mixed_6c/branch7x7dbl_2", (7, 1, 160, 160)),
        ("Mixed_6c/branch7x7dbl_3", (1, 7, 160, 160)),
        ("Mixed_6c/branch7x7dbl_4", (7, 1, 160, 160)),
        ("Mixed_6c/branch7x7dbl_5", (1, 7, 160, 192)),
        ("Mixed_6c/branch_pool", (1, 1, 768, 192)),
        ("Mixed_6d/branch1x1", (1, 1, 768, 192)),
        ("Mixed_6d/branch7x7_1", (1, 1, 768, 160)),
        ("Mixed_6d/branch7x7_2", (1, 7, 160, 160)),
        ("Mixed_6d/branch7x7_3", (7, 1, 160, 192)),
        ("Mixed_6d/branch7x7dbl_1", (1, 1, 768, 160)),
        ("Mixed_6d/branch7x7dbl_2", (7, 1, 160, 160)),
        ("Mixed_6d/branch7x7dbl_3", (1, 7, 160, 160)),
        ("Mixed_6d/branch7x7dbl_4", (7, 1, 160, 160)),
        ("Mixed_6d/branch7x7dbl_5", (1, 7, 160, 192)),
        ("Mixed_6d/branch_pool", (1, 1, 768, 192)),
        ("Mixed_6e/branch1x1", (1, 1, 768, 192)),
        ("Mixed_6e/branch7x7_1", (1, 1, 768, 192)),
        ("Mixed_6e/branch7x7_2", (1, 7, 192, 192)),
        ("Mixed_6e/branch7x7_3", (7, 1, 192, 192)),
        ("Mixed_6e/branch7x7dbl_1", (1, 1, 768, 192)),
        ("Mixed_6e/branch7x7dbl_2", (7, 1, 192, 192)),
        ("Mixed_6e/branch7x7dbl_3", (1, 7, 192, 192)),
        ("Mixed_6e/branch7x7dbl_4", (7, 1, 192, 192)),
        ("Mixed_6e/branch7x7dbl_5", (1, 7, 192, 192)),
        ("Mixed_6e/branch_pool", (1, 1, 768, 192)),
        ("Mixed_7a/branch3x3_1", (1, 1, 768, 192)),
        ("Mixed_7a/branch3x3_2", (3, 3, 192, 320)),
        ("Mixed_7a/branch7x7x3_1", (1, 1, 768, 192)),
        ("Mixed_7a/branch7x7x3_2", (1, 7, 192, 192)),
        ("Mixed_7a/branch7x7x3_3", (7, 1, 192, 192)),
        ("Mixed_7a/branch7x7x3_4", (3, 3, 192, 192)),
        ("Mixed_7b/branch1x1", (1, 1, 1280, 320)),
        ("Mixed_7b/branch3x3_1", (1, 1, 1280, 384)),
        ("Mixed_7b/branch3x3_2a", (1, 3, 384, 384)),
        ("Mixed_7b/branch3x3_2b", (3, 1, 384, 384)),
        ("Mixed_7b/branch3x3dbl_1", (1, 1, 1280, 448)),
        ("Mixed_7b/branch3x3dbl_2", (3, 3, 448, 384)),
        ("Mixed_7b/branch3x3dbl_3a", (1, 3, 384, 384)),
        ("Mixed_7b/branch3x3dbl_3b", (3, 1, 384, 384)),
        ("Mixed_7b/branch_pool", (1, 1, 1280, 192)),
        ("Mixed_7c/branch1x1", (1, 1, 2048, 320)),
        ("Mixed_7c/branch3x3_1", (1, 1, 2048, 384)),
        ("Mixed_7c/branch3x3_2a", (1, 3, 384, 384)),
        ("Mixed_7c/branch3x3_2b", (3, 1, 384, 384)),
        ("Mixed_7c/branch3x3dbl_1", (1, 1, 2048, 448)),
        ("Mixed_7c/branch3x3dbl_2", (3, 3, 448, 384)),
        ("Mixed_7c/branch3x3dbl_3a", (1, 3, 384, 384)),
        ("Mixed_7c/branch3x3dbl_3b", (3, 1, 384, 384)),
        ("Mixed_7c/branch_pool", (1, 1, 2048, 192)),
    ]),
)

RESNET50 = ModelSpec(
    name="resnet50",
    default_size=224,
    min_size=32,
    blocks=("stem", "layer1", "layer2", "layer3", "layer4"),
    feature_dim=2048,
    preprocessing="torch",
    paper="He et al. 2015, Deep Residual Learning",
    not_one_architecture=(
        "resnet50 is not one architecture across the frameworks: torchvision's is ResNet v1.5 "
        "(stride 2 in the 3x3 convolution of a block's first bottleneck), Keras' is v1 (stride "
        "in the first 1x1 convolution, convolutions with biases), slim's resnet_v1_50 strides "
        "in the last unit of each block; its weights cannot be converted exactly"),
)

RESNET18 = ModelSpec(
    name="resnet18",
    default_size=224,
    min_size=32,
    blocks=("stem", "layer1", "layer2", "layer3", "layer4"),
    feature_dim=512,
    preprocessing="torch",
    paper="He et al. 2015, Deep Residual Learning",
)

# The feature-extractor model of the flowers seed. The suite's VGG16 is its five
# convolution blocks; the features are the global average pool of block5 (512-d, as
# keras.applications.VGG16(include_top=False, pooling="avg")), and the original
# classifier (fc6, fc7, fc8) is not part of the model: the suite's head replaces it.
VGG16 = ModelSpec(
    name="vgg16",
    default_size=224,
    min_size=32,
    blocks=("block1", "block2", "block3", "block4", "block5"),
    feature_dim=512,
    preprocessing="torch",
    paper="Simonyan and Zisserman 2014, Very Deep Convolutional Networks for Large-Scale "
          "Image Recognition",
    # its 13 convolutions (3x3, with biases, no BatchNorm) in forward order, named after
    # Keras' layers with "/" (block1_conv1: torchvision's are indices into one Sequential)
    layers=tuple(Layer(name, (3, 3, cin, cout), "conv") for name, cin, cout in [
        ("block1/conv1", 3, 64), ("block1/conv2", 64, 64),
        ("block2/conv1", 64, 128), ("block2/conv2", 128, 128),
        ("block3/conv1", 128, 256), ("block3/conv2", 256, 256), ("block3/conv3", 256, 256),
        ("block4/conv1", 256, 512), ("block4/conv2", 512, 512), ("block4/conv3", 512, 512),
        ("block5/conv1", 512, 512), ("block5/conv2", 512, 512), ("block5/conv3", 512, 512),
    ]),
    # without BatchNorm, Adam 1e-3 from random init keeps the loss at ln 10 = 2.303 (chance)
    # on shapes; 1e-4 learns (2.306 -> 2.057 in 3 epochs at 32 px in PyTorch)
    pretrain_learning_rate=1e-4,
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (INCEPTION_V3, RESNET50, RESNET18, VGG16)}
#: the model of ``bench throughput --sweep --smoke``: every backend has it and it has the fewest
#: layers to compile (13 convolutions, no BatchNorm)
SMOKE_MODEL = VGG16.name


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        ) from None
