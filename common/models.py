"""The model table: one framework-free entry per model.

Each entry says what every backend needs to agree on (input sizes, the
preprocessing family, the canonical blocks in forward order) and how each
framework names those blocks natively. Adding a model is one entry here plus
one constructor line per backend (timm's ``pretrained_cfg`` / slim's
``nets_factory`` idea).

Native block names:

* ``pytorch``: top-level module names of the torchvision model.
* ``keras``: the name of the *last* layer of the block in the
  ``keras.applications`` model built with ``include_top=False``; a block is
  every layer after the previous block's last layer up to and including its
  own. An empty tuple (the InceptionV3 stem, whose layers have generated
  names) means every layer before the first layer of the next block. (So Keras' famous "freeze the first 249 layers" is the boundary after
  ``mixed8``.)
* ``slim``: variable scopes of the ``tf_slim.nets`` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAMEWORKS = ("pytorch", "keras", "slim")

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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    default_size: int
    min_size: int
    # canonical blocks of the backbone in forward order (head excluded)
    blocks: tuple[str, ...]
    # framework -> canonical block -> native names (see module docstring)
    native_blocks: dict[str, dict[str, tuple[str, ...]]]
    # framework -> native names of the classifier head (and aux head)
    native_head: dict[str, tuple[str, ...]]
    # framework -> preprocessing name (see common.preprocess.PREPROCESSING)
    preprocessing: dict[str, str]
    # framework -> native constructor, for reports and errors
    constructors: dict[str, str]
    feature_dim: int
    has_aux_head: dict[str, bool] = field(default_factory=dict)
    # ImageNet weights file a user must supply offline, per framework
    imagenet_files: dict[str, str] = field(default_factory=dict)

    def frameworks(self) -> tuple[str, ...]:
        return tuple(fw for fw in FRAMEWORKS if fw in self.native_blocks)

    def supports(self, framework: str) -> bool:
        """Whether ``framework`` has this model. The table describes the three built-in
        frameworks; a plug-in backend (``TRANSFER_BENCH_BACKENDS``) checks models itself."""
        return framework in self.native_blocks or framework not in FRAMEWORKS

    def top_blocks(self, n: int) -> tuple[str, ...]:
        """The last ``n`` canonical backbone blocks (``partial(top=n)``)."""
        if not 0 <= n <= len(self.blocks):
            raise ValueError(
                f"top_blocks={n} is out of range for {self.name}: "
                f"0..{len(self.blocks)} blocks ({', '.join(self.blocks)})"
            )
        return self.blocks[len(self.blocks) - n :] if n else ()

    def native(self, framework: str, canonical: str) -> tuple[str, ...]:
        if canonical == HEAD:
            return self.native_head[framework]
        return self.native_blocks[framework][canonical]


_INCEPTION_BLOCKS = (
    "stem",
    "Mixed_5b", "Mixed_5c", "Mixed_5d",
    "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)

INCEPTION_V3 = ModelSpec(
    name="inception_v3",
    default_size=299,
    min_size=75,
    blocks=_INCEPTION_BLOCKS,
    native_blocks={
        "pytorch": {
            "stem": ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"),
            **{b: (b,) for b in _INCEPTION_BLOCKS[1:]},
        },
        "keras": {
            # keras.applications.InceptionV3 names its concatenations mixed0..mixed10;
            # Mixed_6a..6e are mixed3..mixed7, Mixed_7a..7c are mixed8..mixed10.
            # The stem's layers have auto-generated names: () = every layer before
            # the first block (index 0..17 of 311; mixed8 is 248, so Mixed_7b starts at 249).
            "stem": (),
            **{b: (f"mixed{i}",) for i, b in enumerate(_INCEPTION_BLOCKS[1:])},
        },
        "slim": {
            "stem": tuple(f"InceptionV3/{s}" for s in (
                "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3",
                "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_5a_3x3")),
            **{b: (f"InceptionV3/{b}",) for b in _INCEPTION_BLOCKS[1:]},
        },
    },
    native_head={
        "pytorch": ("fc", "AuxLogits"),
        "keras": ("head_hidden", "head_logits"),
        "slim": ("InceptionV3/Logits", "InceptionV3/AuxLogits"),
    },
    preprocessing={"pytorch": "inception", "keras": "inception", "slim": "inception"},
    constructors={
        "pytorch": "torchvision.models.inception_v3",
        "keras": "keras.applications.InceptionV3",
        "slim": "tf_slim.nets.inception.inception_v3",
    },
    feature_dim=2048,
    has_aux_head={"pytorch": True, "keras": False, "slim": True},
    imagenet_files={
        "pytorch": "inception_v3_google-0cc3c7bd.pth",
        "keras": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "slim": "inception_v3_2016_08_28.tar.gz (inception_v3.ckpt)",
    },
)

_RESNET_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")
# torchvision ResNets (18 and 50) share their top-level module names
_TORCH_RESNET = {"stem": ("conv1", "bn1", "relu", "maxpool"), **{b: (b,) for b in _RESNET_BLOCKS[1:]}}

RESNET50 = ModelSpec(
    name="resnet50",
    default_size=224,
    min_size=32,
    blocks=_RESNET_BLOCKS,
    native_blocks={
        "pytorch": _TORCH_RESNET,
        "keras": {
            "stem": ("pool1_pool",),
            "layer1": ("conv2_block3_out",),
            "layer2": ("conv3_block4_out",),
            "layer3": ("conv4_block6_out",),
            "layer4": ("conv5_block3_out",),
        },
        "slim": {
            "stem": ("resnet_v1_50/conv1",),
            "layer1": ("resnet_v1_50/block1",),
            "layer2": ("resnet_v1_50/block2",),
            "layer3": ("resnet_v1_50/block3",),
            "layer4": ("resnet_v1_50/block4",),
        },
    },
    native_head={
        "pytorch": ("fc",),
        "keras": ("head_hidden", "head_logits"),
        "slim": ("resnet_v1_50/logits",),
    },
    # The ImageNet weights of each framework expect a different input:
    # torchvision mean/std, Keras "caffe" (BGR, mean-subtracted), slim VGG
    # (RGB, mean-subtracted). Kept per framework so imagenet weights work.
    preprocessing={"pytorch": "torch", "keras": "caffe", "slim": "vgg"},
    constructors={
        "pytorch": "torchvision.models.resnet50",
        "keras": "keras.applications.ResNet50",
        "slim": "tf_slim.nets.resnet_v1.resnet_v1_50",
    },
    feature_dim=2048,
    has_aux_head={"pytorch": False, "keras": False, "slim": False},
    imagenet_files={
        "pytorch": "resnet50-11ad3fa6.pth",
        "keras": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "slim": "resnet_v1_50_2016_08_28.tar.gz (resnet_v1_50.ckpt)",
    },
)

RESNET18 = ModelSpec(
    name="resnet18",
    default_size=224,
    min_size=32,
    blocks=_RESNET_BLOCKS,
    native_blocks={
        "pytorch": _TORCH_RESNET,
    },
    native_head={"pytorch": ("fc",)},
    preprocessing={"pytorch": "torch"},
    constructors={"pytorch": "torchvision.models.resnet18"},
    feature_dim=512,
    has_aux_head={"pytorch": False},
    imagenet_files={"pytorch": "resnet18-f37072fd.pth"},
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (INCEPTION_V3, RESNET50, RESNET18)}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        ) from None
