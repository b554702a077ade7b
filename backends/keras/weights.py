"""Weights the Keras way: ``.weights.h5`` files, ImageNet via ``keras.applications``.

* ``save``/``load``: ``model.save_weights`` / ``model.load_weights`` (Keras 3
  insists the file name ends in ``.weights.h5``), written atomically. A
  compiled model's file would also hold its optimizer and ``load_weights``
  would load it whenever the variable *count* matches, even into another
  phase's optimizer; so the weights go through an uncompiled view of the same
  layers and the optimizer's variables into a sidecar ``.optimizer.npz``,
  restored only when class and shapes match (a resumed run then continues
  with the same momentum/Adam moments). The head's shape goes into a third
  file, ``<path>.head.json`` (model, classes, hidden units).
* backbone from a checkpoint, head excluded: Keras 3 ``.weights.h5`` files are
  keyed by the model's structure, not by layer name, so a file is loaded into
  a temporary model shaped like the checkpoint (its head shape read from the
  ``.head.json`` beside it) and the backbone layers are copied across with
  ``set_weights``; the new head keeps its fresh initialisation
  (``skip_mismatch=True`` would instead *load* a head whose shape happens to
  match, e.g. same class count).
* ImageNet: ``keras.applications``' own ``weights=`` with the cached
  ``*_notop.h5``; offline, one line names the file and the cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

from backends.base import BackendError, ModelEntry

from . import recipe
from .catalog import imagenet_dir
from .model import HEAD_LOGITS, KerasModel

WEIGHTS_SUFFIX = ".weights.h5"
OPTIMIZER_SUFFIX = ".optimizer.npz"
HEAD_SUFFIX = ".head.json"

# ------------------------------------------------------------------ imagenet

def imagenet_file(model: str, entry: ModelEntry) -> str:
    """Path of the cached Keras ImageNet no-top file, downloading it if possible."""
    cached = imagenet_dir() / entry.imagenet.file
    if cached.is_file():
        return str(cached)
    try:
        return fetch_imagenet(model, entry)
    except Exception as err:  # offline, proxy, bad hash: the user places the file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BackendError(
            f"Keras ImageNet weights for {model} are not cached and could not be downloaded "
            f"({reason}); place {entry.imagenet.file} in {cached.parent} (set KERAS_HOME to use "
            f"another folder), run 'bench weights fetch --backend keras --model {model}' where "
            f"there is a network, or pass --weights source"
        ) from None


def fetch_imagenet(model: str, entry: ModelEntry) -> str:
    """``keras.utils.get_file`` into ``$KERAS_HOME/models``, as keras.applications does."""
    cache = imagenet_dir()
    return keras.utils.get_file(entry.imagenet.file, entry.imagenet.url, cache_subdir="models",
                                cache_dir=str(cache.parent), file_hash=entry.imagenet.file_hash)


# ------------------------------------------------------------ save / restore

def weights_file(path: Path) -> Path:
    path = Path(path)
    return path if path.name.endswith(WEIGHTS_SUFFIX) else Path(str(path) + WEIGHTS_SUFFIX)


def optimizer_file(path: Path) -> Path:
    return Path(str(path) + OPTIMIZER_SUFFIX)


def head_file(weights: Path) -> Path:
    """``NAME.head.json`` beside ``NAME.weights.h5``."""
    weights = Path(weights)
    return weights.with_name(weights.name[:-len(WEIGHTS_SUFFIX)] + HEAD_SUFFIX)


def optimizer_signature(optimizer) -> str:
    """Which optimizer state fits: class and variable shapes."""
    shapes = [tuple(v.shape) for v in optimizer.variables]
    return hashlib.sha256(repr((type(optimizer).__name__, shapes)).encode()).hexdigest()[:16]


def save(km: KerasModel, optimizer, path: Path) -> Path:
    """``<path>.weights.h5`` (and ``<path>.optimizer.npz``), each replaced atomically."""
    target = weights_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # save_weights rejects names not ending in .weights.h5, so the temporary file keeps it.
    tmp = target.with_name(f".{target.name[:-len(WEIGHTS_SUFFIX)]}.tmp{os.getpid()}{WEIGHTS_SUFFIX}")
    km.weights_view.save_weights(str(tmp))
    os.replace(tmp, target)
    head = {"model": km.spec.name, "num_classes": int(km.model.output_shape[-1]),
            "head_hidden_units": int(km.head_hidden_units)}
    head_tmp = head_file(target).with_name(f".{head_file(target).name}.tmp{os.getpid()}")
    head_tmp.write_text(json.dumps(head, indent=1) + "\n")
    os.replace(head_tmp, head_file(target))
    if optimizer is not None and optimizer.built:
        opt_target = optimizer_file(target.with_name(target.name[:-len(WEIGHTS_SUFFIX)]))
        opt_tmp = opt_target.with_name(f".{opt_target.name}.tmp{os.getpid()}.npz")
        arrays = {f"v{i:04d}": np.asarray(keras.ops.convert_to_numpy(v))
                  for i, v in enumerate(optimizer.variables)}
        np.savez(opt_tmp, signature=np.asarray(optimizer_signature(optimizer)), **arrays)
        os.replace(opt_tmp, opt_target)
    return target


def restore(km: KerasModel, optimizer, path: Path) -> bool:
    """Load what ``save`` wrote; the optimizer state too when it fits the current phase.

    Returns whether optimizer state was restored (best-on-val from an earlier
    phase restores the model only: its optimizer belonged to that phase).
    """
    target = weights_file(path)
    if not target.is_file():
        raise BackendError(f"checkpoint {target} does not exist")
    km.weights_view.load_weights(str(target))
    opt_path = optimizer_file(target.with_name(target.name[:-len(WEIGHTS_SUFFIX)]))
    if optimizer is None or not opt_path.is_file():
        return False
    if not optimizer.built:
        optimizer.build(km.model.trainable_variables)
    with np.load(opt_path) as saved:
        if str(saved["signature"]) != optimizer_signature(optimizer):
            return False
        for i, v in enumerate(optimizer.variables):
            v.assign(saved[f"v{i:04d}"])
    return True


# ------------------------------------------------------- backbone from a file

def checkpoint_head(path: Path) -> tuple[str, int, int]:
    """``(model, num_classes, head_hidden_units)`` of a ``.weights.h5`` written by ``save``,
    from the ``.head.json`` written beside it."""
    meta = head_file(path)
    if not meta.is_file():
        raise BackendError(f"{path} has no {meta.name} beside it (the keras backend writes one "
                           f"with every checkpoint to record the head's shape): pass a checkpoint "
                           f"saved by this version, or delete a cached source checkpoint so that "
                           f"it is pretrained again")
    head = json.loads(meta.read_text())
    return str(head["model"]), int(head["num_classes"]), int(head["head_hidden_units"])


def restore_backbone(km: KerasModel, path: str, image_size: int,
                     reuse_head_rows: dict[int, int]) -> None:
    """Copy the backbone (never the head) of a ``.weights.h5`` into ``km``
    (``recipe.restore_without_head``), after checking the ``.head.json`` beside it."""
    path = Path(path)
    model, num_classes, hidden = checkpoint_head(path)
    if model != km.spec.name:
        raise BackendError(f"{path} holds a keras {model} (its {head_file(path).name} says so) and "
                           f"this run builds {km.spec.name}: pass a checkpoint of the run's --model")
    if reuse_head_rows and (km.head_hidden_units or hidden):
        raise BackendError("reuse_head_rows needs a linear head (head_hidden_units = 0) in the "
                           "checkpoint and in this run")
    try:
        source = recipe.restore_without_head(km, str(path), num_classes, hidden, image_size)
    except (ValueError, KeyError) as err:  # the file's structure is not the model's
        raise BackendError(f"{path} does not fit keras {km.spec.name}: "
                           f"{str(err).splitlines()[0]}") from None
    if reuse_head_rows:
        copy_head_rows(source.model.get_layer(HEAD_LOGITS), km.model.get_layer(HEAD_LOGITS),
                       reuse_head_rows)


def copy_head_rows(src_layer, dst_layer, rows: dict[int, int]) -> None:
    """Copy the classifier of source class ``s`` to target class ``t`` for each ``t: s``."""
    src_kernel, src_bias = src_layer.get_weights()
    kernel, bias = dst_layer.get_weights()
    for t, s in rows.items():
        # Keras Dense kernels are [in, out]: a class is a COLUMN (a row of torch's [out, in] weight).
        kernel[:, t] = src_kernel[:, s]
        bias[t] = src_bias[s]
    dst_layer.set_weights([kernel, bias])
