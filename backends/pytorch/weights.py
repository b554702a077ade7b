"""Weights in PyTorch's own format: ``state_dict`` files, torchvision weight enums.

PyTorch idiom: a checkpoint is a dict of tensors keyed by module path
(``layer4.1.bn2.running_mean``); restoring "everything but the head" is
filtering the keys and ``load_state_dict(strict=False)`` (``recipe.py``; here
the checks around it and the counts a run records). ImageNet weights
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

from backends.base import BackendError, ModelEntry

from . import recipe
from .catalog import imagenet_dir
from .model import fixed_gamma_keys, head_name, head_prefixes

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


def restore_excluding_head(model: nn.Module, entry: ModelEntry, state: dict[str, torch.Tensor],
                           source: str, ignore_missing_vars: bool = False) -> dict:
    """Load every backbone tensor of ``state`` into ``model``; never the head or aux head
    (``recipe.backbone_state`` and ``recipe.restore_without_head``).

    Keys the model does not have are not needed and skipped; a backbone tensor that is
    missing or has another shape is a one-line error naming ``source``, unless
    ``ignore_missing_vars`` (slim's flag of that name), which keeps those tensors at their
    initial values and lists them. Returns the counts and those lists.
    """
    excluded = head_prefixes(entry)
    own = model.state_dict()
    backbone = recipe.backbone_state(model, entry, state)
    bad_shapes = [k for k, v in backbone.items() if tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if not k.startswith(excluded) and k not in backbone]
    if (bad_shapes or missing) and not ignore_missing_vars:
        what = (f"{len(bad_shapes)} tensor(s) of another shape, e.g. {bad_shapes[0]}" if bad_shapes
                else f"{len(missing)} backbone tensor(s) missing, e.g. {missing[0]}")
        raise BackendError(f"{source} does not fit this model: {what}; was it saved from the same "
                           f"torchvision architecture? (--ignore-missing-vars keeps such tensors "
                           f"at their initial values)")
    for k in bad_shapes:
        del backbone[k]
    check_fixed_gammas(model, backbone, source)
    recipe.restore_without_head(model, backbone)
    return {"restored": len(backbone), "excluded": sum(k.startswith(excluded) for k in state),
            "missing": missing, "shape_mismatch": bad_shapes,
            "ignore_missing_vars": ignore_missing_vars}


def check_fixed_gammas(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A model whose BatchNorm gamma is fixed at 1 (``model.remove_batchnorm_scale``) takes
    only checkpoints whose gammas are 1: anything else would be loaded into the constant."""
    for key in fixed_gamma_keys(model):
        if key in state and not bool(torch.all(state[key] == 1)):
            raise BackendError(gamma_refusal(source, key))


def gamma_refusal(source: str, key: str) -> str:
    return (f"{source}: {key} (a BatchNorm gamma) is not 1, but the suite's InceptionV3 has no "
            f"BatchNorm scale (Keras and slim build it with scale=False; torch keeps gamma at 1): "
            f"there is no exact equivalent; fine-tune torchvision's own ImageNet weights with "
            f"--weights imagenet (folding gamma into the convolution would be exact for inference "
            f"only, not for BatchNorm in training mode)")


def copy_head_rows(model: nn.Module, entry: ModelEntry, state: dict[str, torch.Tensor],
                   rows: dict[int, int]) -> None:
    """Copy source classifier rows into the new linear head: ``fc[target] = source_fc[source]``."""
    name = head_name(entry)
    head = getattr(model, name)
    if isinstance(head, nn.Sequential) and isinstance(head[0], nn.Dropout) and len(head) == 2:
        head = head[1]  # a recipe's dropout before a linear head
    if not isinstance(head, nn.Linear):
        raise BackendError("reuse_head_rows needs a linear head (head_hidden_units = 0); this "
                           "recipe's head has a hidden layer")
    if f"{name}.weight" not in state or f"{name}.bias" not in state:
        raise BackendError(f"reuse_head_rows needs a checkpoint whose head is one linear layer "
                           f"({name}.weight, {name}.bias)")
    src_w, src_b = state[f"{name}.weight"], state[f"{name}.bias"]
    if src_w.shape[1] != head.in_features:
        raise BackendError(f"checkpoint head has {src_w.shape[1]} input features, the model "
                           f"{head.in_features}; cannot reuse its rows")
    with torch.no_grad():
        for target, source in rows.items():
            if not (0 <= target < head.out_features and 0 <= source < src_w.shape[0]):
                raise BackendError(f"reuse_head_rows {target} -> {source} is out of range "
                                   f"({head.out_features} target, {src_w.shape[0]} source classes)")
            head.weight[target].copy_(src_w[source])
            head.bias[target].copy_(src_b[source])


def imagenet_weights_enum(model: str, entry: ModelEntry):
    """The torchvision weights enum member whose URL is the catalog's ImageNet file, among
    the enums of torchvision's classification builders (a catalog constructor may be the
    backend's own function around torchvision's modules, which has no enum of its own)."""
    for name in torchvision.models.list_models(module=torchvision.models):
        for member in torchvision.models.get_model_weights(name):
            if member.url == entry.imagenet.url:
                return member
    raise BackendError(f"torchvision {torchvision.__version__} has no {model} weights at "
                       f"{entry.imagenet.url}")


def imagenet_state(model: str, entry: ModelEntry) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ``state_dict`` for ``model``: the cached file, else a download.

    ``torch.hub.get_dir()`` is where the weights enum caches; it is the
    catalog's ``imagenet_dir()`` unless a program changed it with ``set_dir``.
    Offline, the error names the file to place, where, and ``bench weights fetch``.
    """
    if entry.imagenet is None:
        raise BackendError(f"no torchvision ImageNet weights for {model!r}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / entry.imagenet.file
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        # the weights enum's own mechanism: torch.hub.load_state_dict_from_url into the cache
        return imagenet_weights_enum(model, entry).get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "offline"
        raise BackendError(
            f"ImageNet weights for pytorch {model} are not cached and could not be downloaded "
            f"({type(err).__name__}); place {entry.imagenet.file} at {cached} (the cache is under "
            f"$TORCH_HOME, now {os.environ.get('TORCH_HOME', '~/.cache/torch')}), run "
            f"'bench weights fetch --backend pytorch --model {model}' where there is a network, "
            f"or pass --weights source"
        ) from None


def fetch_imagenet(model: str, entry: ModelEntry) -> Path:
    """``bench weights fetch``: the weights enum downloads into the torch.hub cache."""
    imagenet_weights_enum(model, entry).get_state_dict(progress=True, check_hash=True)
    return imagenet_dir() / entry.imagenet.file
