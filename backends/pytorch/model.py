"""Build torchvision models with a new head; map canonical blocks to modules.

PyTorch idiom: a model is a tree of ``nn.Module`` objects and the canonical
blocks of ``common.models`` are *top-level child modules* of the torchvision
model (``model.layer4``, ``model.Mixed_7c``). Replacing the head is plain
attribute assignment (``model.fc = nn.Linear(...)``), as in the torchvision
fine-tuning tutorial.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from backends.base import BackendError
from common.models import BN_DECAY, HEAD, ModelSpec

# Each model of the table that this backend supports: one constructor line.
CONSTRUCTORS = {
    "inception_v3": torchvision.models.inception_v3,
    "resnet50": torchvision.models.resnet50,
    "resnet18": torchvision.models.resnet18,
}

# torchvision's Inception3 aux head (avg_pool 5/3, then a 5x5 VALID conv) needs Mixed_6e
# at 17x17, i.e. the full 299 px input; slim's aux head shrinks its kernel for small inputs
# (_reduced_kernel_size_for_small_input) and runs at any size.
AUX_MIN_SIZE = 299


def build_model(spec: ModelSpec, num_classes: int, head_hidden_units: int = 0,
                aux_logits: bool = False, image_size: int | None = None) -> nn.Module:
    """The torchvision ``spec.name`` with randomly initialised weights and a new head."""
    if spec.name not in CONSTRUCTORS:
        raise BackendError(f"the pytorch backend has no constructor for model {spec.name!r}; "
                           f"choose one of: {', '.join(CONSTRUCTORS)}")
    if spec.name == "inception_v3":
        if aux_logits and image_size is not None and image_size < AUX_MIN_SIZE:
            raise BackendError(f"torchvision inception_v3 with aux_logits needs image_size >= "
                               f"{AUX_MIN_SIZE} px (got {image_size}); use a larger --image-size "
                               f"or turn aux_logits off")
        # transform_input=False: we feed [-1, 1] ('inception' normalisation, as Keras and
        # slim do); torchvision's transform_input=True maps ImageNet mean/std input to that
        # same [-1, 1] range inside forward(), so the two are the same computation.
        model = CONSTRUCTORS[spec.name](weights=None, aux_logits=aux_logits,
                                        transform_input=False, init_weights=True)
        # No dropout in the head path, in any backend: torchvision puts Dropout(0.5)
        # before fc, Keras' recipe head and slim's Logits would need their own; the suite
        # keeps the head identical everywhere (Linear or Linear-ReLU-Linear).
        model.dropout = nn.Identity()
        if aux_logits:
            model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
    else:
        model = CONSTRUCTORS[spec.name](weights=None)
    model.fc = make_head(model.fc.in_features, num_classes, head_hidden_units)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # PyTorch's momentum is the weight of the *new* batch statistic:
            # momentum=0.1 is Keras' momentum=0.9 / slim's decay=0.9 (common.models.BN_DECAY).
            m.momentum = 1.0 - BN_DECAY
    return model


def make_head(in_features: int, num_classes: int, hidden_units: int = 0) -> nn.Module:
    """``Linear`` or ``Linear -> ReLU -> Linear`` (the Keras recipe's Dense(1024, relu) top)."""
    if hidden_units > 0:
        return nn.Sequential(nn.Linear(in_features, hidden_units), nn.ReLU(inplace=True),
                             nn.Linear(hidden_units, num_classes))
    return nn.Linear(in_features, num_classes)


def block_modules(model: nn.Module, spec: ModelSpec, block: str) -> dict[str, nn.Module]:
    """Top-level modules of canonical ``block`` (``"head"`` included) that exist in ``model``.

    ``AuxLogits`` is ``None`` when the aux head is off, so it is left out.
    """
    names = spec.native("pytorch", block)
    return {n: getattr(model, n) for n in names if getattr(model, n, None) is not None}


def module_block(spec: ModelSpec) -> dict[str, str]:
    """Top-level module name -> canonical block (head included)."""
    out = {}
    for block in (*spec.blocks, HEAD):
        for name in spec.native("pytorch", block):
            out[name] = block
    return out


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the classifier layers a checkpoint never restores."""
    prefixes = ["fc."]
    if getattr(model, "AuxLogits", None) is not None:
        prefixes.append("AuxLogits.fc.")
    return tuple(prefixes)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def summary(model: nn.Module) -> str:
    """The module tree followed by a parameter count per top-level module."""
    lines = [repr(model), "", f"{'module':<20} {'params':>12} {'trainable':>12}"]
    for name, child in model.named_children():
        lines.append(f"{name:<20} {count_params(child):>12,} {count_params(child, True):>12,}")
    lines.append(f"{'total':<20} {count_params(model):>12,} {count_params(model, True):>12,}")
    return "\n".join(lines) + "\n"


def forward_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pooled pre-head features: the input of ``model.fc``, captured by a forward pre-hook."""
    captured = []
    handle = model.fc.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0]
