"""The model table: framework-free facts about each model.

What every backend must agree on — input sizes, the canonical blocks in
forward order, the width of the pooled features, the input normalisation of
suite-made weights, whether the architecture has an auxiliary classifier —
and nothing about how a framework names things. Each backend keeps its own
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
)

RESNET50 = ModelSpec(
    name="resnet50",
    default_size=224,
    min_size=32,
    blocks=("stem", "layer1", "layer2", "layer3", "layer4"),
    feature_dim=2048,
    preprocessing="torch",
    paper="He et al. 2015, Deep Residual Learning",
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

MODELS: dict[str, ModelSpec] = {m.name: m for m in (INCEPTION_V3, RESNET50, RESNET18)}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        ) from None
