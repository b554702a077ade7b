"""Weights in PyTorch's own format: ``state_dict`` files, torchvision weight enums.

PyTorch idiom: a checkpoint is a dict of tensors keyed by module path
(``layer4.1.bn2.running_mean``); restoring "everything but the head" is
filtering the keys and ``load_state_dict(strict=False)``. ImageNet weights
come from torchvision's weight enums through the ``torch.hub`` cache
(``$TORCH_HOME/hub/checkpoints``). The source-pretrained checkpoint, a
user's file and ImageNet weights all go through ``restore_excluding_head``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from backends.base import BackendError
from common.models import ModelSpec

from .model import head_prefixes

IMAGENET_WEIGHTS = {
    "inception_v3": lambda: torchvision.models.Inception_V3_Weights.IMAGENET1K_V1,
    "resnet50": lambda: torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet18": lambda: torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
}


def checkpoint_file(path: Path | str, suffix: str = ".pt") -> Path:
    """``path`` + ``suffix`` (paths are given without the suffix, as in ``Backend.save``)."""
    return Path(str(path) + suffix)


def save_checkpoint(file: Path, payload: dict) -> Path:
    """``torch.save`` to a temporary file then ``os.replace``: never a half-written checkpoint."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


def load_checkpoint(file: Path | str) -> dict:
    """The dict saved by ``save_checkpoint`` (tensors on the CPU)."""
    file = Path(file)
    if not file.is_file():
        raise BackendError(f"checkpoint {str(file)!r} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or format errors from a user's file
        raise BackendError(f"{str(file)!r} is not a PyTorch checkpoint torch.load can read "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model ``state_dict`` in a file: ours (``{"model": ...}``), a training script's
    (``{"state_dict": ...}``) or a bare ``state_dict``."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def restore_excluding_head(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict:
    """Load every backbone tensor of ``state`` into ``model``; never the classifier (head).

    Keys of modules the model does not have (e.g. ``AuxLogits.*`` of an ImageNet
    Inception file when the aux head is off) are skipped; a backbone tensor that is
    missing or has another shape is an error naming ``source``.
    """
    excluded = head_prefixes(model) + ("fc.",)
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(excluded) and k in own}
    bad_shapes = [k for k, v in backbone.items() if tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if not k.startswith(excluded) and k not in backbone]
    if bad_shapes or missing:
        what = (f"{len(bad_shapes)} tensor(s) of another shape, e.g. {bad_shapes[0]}" if bad_shapes
                else f"{len(missing)} backbone tensor(s) missing, e.g. {missing[0]}")
        raise BackendError(f"{source} does not fit this model: {what}; was it saved from the same "
                           f"torchvision architecture?")
    model.load_state_dict(backbone, strict=False)
    return {"restored": len(backbone), "skipped": sorted(k for k in state if k not in backbone)}


def copy_head_rows(model: nn.Module, state: dict[str, torch.Tensor], rows: dict[int, int]) -> None:
    """Copy source classifier rows into the new linear head: ``fc[target] = source_fc[source]``."""
    if not isinstance(model.fc, nn.Linear):
        raise BackendError("reuse_head_rows needs a linear head (head_hidden_units = 0); this "
                           "recipe's head has a hidden layer")
    if "fc.weight" not in state or "fc.bias" not in state:
        raise BackendError("reuse_head_rows needs a checkpoint whose head is one linear layer "
                           "(fc.weight, fc.bias)")
    src_w, src_b = state["fc.weight"], state["fc.bias"]
    if src_w.shape[1] != model.fc.in_features:
        raise BackendError(f"checkpoint head has {src_w.shape[1]} input features, the model "
                           f"{model.fc.in_features}; cannot reuse its rows")
    with torch.no_grad():
        for target, source in rows.items():
            if not (0 <= target < model.fc.out_features and 0 <= source < src_w.shape[0]):
                raise BackendError(f"reuse_head_rows {target} -> {source} is out of range "
                                   f"({model.fc.out_features} target, {src_w.shape[0]} source classes)")
            model.fc.weight[target].copy_(src_w[source])
            model.fc.bias[target].copy_(src_b[source])


def imagenet_cache_path(spec: ModelSpec) -> Path:
    """Where ``torch.hub`` keeps the ImageNet file (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.imagenet_files["pytorch"]


def imagenet_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ``state_dict`` for ``spec``: the cached file, else a download.

    Offline, the error names the file to place and where.
    """
    if spec.name not in IMAGENET_WEIGHTS:
        raise BackendError(f"no torchvision ImageNet weights for {spec.name!r}")
    cached = imagenet_cache_path(spec)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    weights = IMAGENET_WEIGHTS[spec.name]()
    try:
        # the weights enum's own mechanism: torch.hub.load_state_dict_from_url into the cache
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "offline"
        raise BackendError(
            f"ImageNet weights for {spec.name} are not cached and could not be downloaded "
            f"({type(err).__name__}); place {spec.imagenet_files['pytorch']} at {cached} "
            f"(the cache is under $TORCH_HOME, now {os.environ.get('TORCH_HOME', '~/.cache/torch')})"
        ) from None
