"""The transfer-learning recipe in PyTorch's own words, top to bottom.

As torchvision's ``references/classification/train.py`` and its fine-tuning
tutorial write it: build the torchvision model and assign it a new head
(``model.fc = nn.Linear(...)``); restore the pretrained ``state_dict`` less
the head's keys (``load_state_dict(strict=False)``); freeze with
``requires_grad_(False)`` and put frozen BatchNorm back in ``eval()`` after
``model.train()``; one ``torch.optim`` optimizer whose *param groups* give the
head its larger learning rate; ``train_one_epoch`` (forward, loss,
``backward()``, ``step()``); predict in ``eval()`` under ``inference_mode``.
Mixed precision is ``torch.autocast`` around the forward pass and the loss.

Plain functions; the backend (``backend.py``) calls them and keeps all else:
what a run records, statistics, clocks, devices, checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from backends.base import BackendError, ModelEntry
from common.config import Fidelity, Phase
from common.models import BN_DECAY, HEAD, ModelSpec
from common.preprocess import Normalisation
from common.progress import progress

from .data import normalise
from .model import (block_modules, head_in_features, head_name, head_prefixes, in_float32,
                    in_modules, submodule, torchvision_model)
from .optim import aligned_optimizer, kernels_only_decay

# slim's inception_v3 train_image_classifier weights the aux loss by 0.4
AUX_LOSS_WEIGHT = 0.4


# ------------------------------------------------------------ build with a new head

def build_model(spec: ModelSpec, entry: ModelEntry, num_classes: int, head_hidden_units: int = 0,
                aux_logits: bool = False, image_size: int | None = None,
                aligned: bool = True, init_weights: bool = True,
                dropout: float = 0.0, float32_head: bool = False) -> nn.Module:
    """The torchvision model of ``entry`` with random weights (``model.torchvision_model``
    says what ``aligned``, ``aux_logits`` and ``init_weights`` do) and a new head for ``num_classes``
    (fp32 under autocast if ``float32_head``); ``dropout`` > 0: ``nn.Dropout`` before it."""
    model = torchvision_model(spec, entry, num_classes, aux_logits=aux_logits,
                              image_size=image_size, aligned=aligned,
                              init_weights=init_weights, dropout=dropout)
    # --8<-- [start:new-head]
    head = head_name(entry)
    new_head = make_head(head_in_features(getattr(model, head)), num_classes, head_hidden_units)
    new_head = in_float32(new_head) if float32_head else new_head  # fidelity.head_dtype
    if dropout and not hasattr(model, "dropout"):  # torchvision's ResNet has no dropout slot
        new_head = nn.Sequential(nn.Dropout(dropout), new_head)
    setattr(model, head, new_head)
    # --8<-- [end:new-head]
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


# ------------------------------------------------------------ restore without the head

def backbone_state(model: nn.Module, entry: ModelEntry,
                   state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that ``model`` has, less the head's and the aux head's
    (``head_prefixes``: slim's ``--checkpoint_exclude_scopes``, as a filter on keys)."""
    # --8<-- [start:restore-without-head]
    excluded = head_prefixes(entry)
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(excluded) and k in own}
    # --8<-- [end:restore-without-head]
    return backbone


def restore_without_head(model: nn.Module, backbone: dict[str, torch.Tensor]) -> None:
    """Load ``backbone`` (``backbone_state``) into ``model``; the new head keeps its init."""
    # --8<-- [start:restore-without-head]
    model.load_state_dict(backbone, strict=False)
    # --8<-- [end:restore-without-head]


# ------------------------------------------------------------ freeze / unfreeze

def trainable_modules(model: nn.Module, spec: ModelSpec, entry: ModelEntry,
                      phase: Phase) -> dict[str, nn.Module]:
    """Modules ``phase`` trains, by path: its canonical blocks, then the head (and AuxLogits);
    or, for a phase that names ``modules`` (PyTorch's own names, dotted for a submodule), those."""
    if phase.modules:
        return {name: submodule(model, name) for name in phase.modules}
    modules = {}
    for block in (*phase.trainable_blocks(spec), HEAD):
        modules.update(block_modules(model, entry, block))
    return modules


# --8<-- [start:freeze]
def freeze_all_but(model: nn.Module, trainable: dict[str, nn.Module]) -> None:
    """``requires_grad`` True exactly for the parameters of ``trainable`` modules."""
    model.requires_grad_(False)
    for module in trainable.values():
        module.requires_grad_(True)
# --8<-- [end:freeze]


def set_train_modes(model: nn.Module, trainable: dict[str, nn.Module], bn: str) -> None:
    """``model.train()``, then BatchNorm back in ``eval()``: outside the ``trainable`` modules
    when ``bn="frozen"``, everywhere when ``bn="inference"``.

    ``model.train()`` resets every submodule, so this runs at the start of each epoch.
    """
    # --8<-- [start:batchnorm]
    model.train()
    if bn == "train":
        # PyTorch's default: requires_grad=False does not stop a BN layer in train() mode
        # from normalising with batch statistics and updating running_mean/var. Keras
        # (trainable=False) and the suite's default instead keep frozen BN in inference.
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                bn == "inference" or not in_modules(name, trainable)):
            # running statistics used, never updated; with bn = "inference" the BN of trained
            # modules too (Keras' base_model(x, training=False)), while their beta (bias) and
            # any gamma (weight) keep requires_grad and train
            module.eval()
    # --8<-- [end:batchnorm]


# ------------------------------------------------------------ the optimizer

def param_groups(model: nn.Module, entry: ModelEntry, phase: Phase) -> list[dict]:
    """Trainable parameters as two groups: ``backbone`` (x1) and ``head`` (x head_lr_multiplier)."""
    # --8<-- [start:optimizer]
    head_ids = {id(p) for m in block_modules(model, entry, HEAD).values() for p in m.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    # Extra keys in a param group ("name", "lr_multiplier") are kept by torch.optim and saved
    # in optimizer.state_dict(); Keras has one learning rate per optimizer instead.
    return [
        {"params": backbone, "name": "backbone", "lr_multiplier": 1.0,
         "lr": phase.learning_rate},
        {"params": head, "name": "head", "lr_multiplier": phase.head_lr_multiplier,
         "lr": phase.learning_rate * phase.head_lr_multiplier},
    ]
    # --8<-- [end:optimizer]


def torch_optimizer(phase: Phase, groups: list[dict],
                    fidelity: Fidelity = Fidelity()) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer of ``phase`` over ``groups`` (``param_groups``);
    ``fidelity`` (the recipe's switches) says where the suite aligns torch's step."""
    m, wd, eps, rho = phase.effective_momentum, phase.weight_decay, phase.epsilon, phase.rmsprop_rho
    if wd and fidelity.aligned("weight_decay"):
        groups = kernels_only_decay(groups, wd)  # slim's l2_regularizer: kernels only
    groups = [g for g in groups if g["params"]]  # torch.optim refuses an empty group
    lr = phase.learning_rate  # PyTorch spells it lr=, Keras learning_rate=
    if phase.optimizer in ("sgd", "momentum"):
        # PyTorch: v = m*v + g; p -= lr*v. Keras/TF: v = m*v - lr*g; p += v (equal at fixed lr).
        # weight_decay here is an L2 term added to the gradient (coupled).
        # --8<-- [start:optimizer]
        return torch.optim.SGD(groups, lr=lr, momentum=m, weight_decay=wd)
        # --8<-- [end:optimizer]
    if aligned := aligned_optimizer(phase, groups, fidelity):  # Keras' formulas (optim.py)
        return aligned
    if phase.optimizer == "rmsprop":
        # PyTorch adds eps outside the square root: g / (sqrt(avg) + eps); Keras and
        # tf.compat.v1 (slim) add it inside: g / sqrt(avg + eps). alpha= is Keras' rho=.
        return torch.optim.RMSprop(groups, lr=lr, alpha=rho, eps=eps, momentum=m, weight_decay=wd)
    if phase.optimizer in ("adam", "adamw"):
        # Adam's weight_decay is L2 in the gradient, AdamW's decoupled; eps joins torch's
        # bias-corrected sqrt(v) / sqrt(1 - b2^t), Keras' and TF1's sqrt(v) (lr carries it)
        adam = torch.optim.Adam if phase.optimizer == "adam" else torch.optim.AdamW
        return adam(groups, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=wd)
    raise BackendError(f"unknown optimizer {phase.optimizer!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Base LR for every group, times the group's ``lr_multiplier``."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("lr_multiplier", 1.0)


# ------------------------------------------------------------ fit one phase

def autocast(device: torch.device, precision: str):
    """``torch.autocast(device, bfloat16)`` for ``precision == "bf16"``, a no-op for fp32:
    convolutions and matmuls in bfloat16, weights, optimizer state, BatchNorm statistics and
    the loss in fp32 (bf16 needs no ``GradScaler``: it has fp32's exponent range)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compute_loss(outputs, labels: torch.Tensor, criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits); Inception's train-mode ``InceptionOutputs`` adds 0.4 x aux loss."""
    if isinstance(outputs, tuple):  # torchvision InceptionOutputs(logits, aux_logits)
        logits, aux = outputs
        loss = criterion(logits, labels)
        if aux is not None:
            loss = loss + AUX_LOSS_WEIGHT * criterion(aux, labels)
        return loss, logits
    return criterion(outputs, labels), outputs


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    device: torch.device, norm: Normalisation, precision: str = "fp32",
                    on_step=None, desc: str = "") -> None:
    """One pass over ``loader``, the modes already set (``set_train_modes``); ``on_step(loss,
    logits, labels)`` sees each step's tensors, still on the device. ``desc`` names the
    pass in its progress bar (``common.progress``)."""
    # --8<-- [start:fit]
    for images, labels in progress(loader, len(loader), desc):
        images = normalise(images.to(device, non_blocking=True), norm)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)  # before the forward pass: lower peak memory
        with autocast(device, precision):
            outputs = model(images)
            loss, logits = compute_loss(outputs, labels, criterion)
        loss.backward()  # outside autocast, as torch.autocast's documentation prescribes
        optimizer.step()
    # --8<-- [end:fit]
        if on_step is not None:
            on_step(loss.detach(), logits, labels)


# ------------------------------------------------------------ predict

# --8<-- [start:predict]
@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, norm: Normalisation, fn=None,
            precision: str = "fp32", desc: str = "") -> list[torch.Tensor]:
    """``fn(model, images)`` (default: ``model(images)``) over ``loader`` in ``eval()``
    (BatchNorm on its running statistics, no dropout): one output per batch, on the device."""
    model.eval()
    outputs = []
    for images, _ in progress(loader, len(loader), desc):
        images = normalise(images.to(device, non_blocking=True), norm)
        with autocast(device, precision):
            outputs.append(fn(model, images) if fn else model(images))
    return outputs
# --8<-- [end:predict]
