"""Checkpoints the slim way: TF checkpoints, restored by scope with exclusions.

``restore_excluding`` runs slim's ``_get_init_fn`` from
``train_image_classifier.py`` (``recipe.restore_without_head``): every model
variable except those under ``--checkpoint_exclude_scopes``, loaded with
``slim.assign_from_checkpoint_fn``. As there, a variable the checkpoint lacks
(or holds in another shape) is an error unless ``ignore_missing_vars``
(``--ignore_missing_vars``), which keeps its initial value and lists it.
``save`` / ``restore`` use a ``tf.compat.v1.train.Saver`` over every global variable
(model, optimizer slots, global step): a TF checkpoint is a prefix
``NAME.ckpt`` with ``.index`` and ``.data-*`` files, not a single file like
PyTorch's ``.pt`` or Keras' ``.weights.h5``.
"""

from __future__ import annotations

import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow as tf

from backends.base import BackendError, ModelEntry
from backends.slim import recipe
from backends.slim.catalog import imagenet_dir

SUFFIX = ".ckpt"


def _strip_file_suffix(path) -> str:
    """``NAME.index`` / ``NAME.data-00000-of-00001`` / ``NAME.meta`` -> ``NAME``."""
    p = str(path)
    for tail in (".index", ".meta"):
        if p.endswith(tail):
            return p[: -len(tail)]
    if ".data-" in Path(p).name:
        return p[: p.rindex(".data-")]
    return p


def checkpoint_prefix(path) -> str:
    """Where ``save(path)`` writes: ``NAME`` -> the prefix ``NAME.ckpt``."""
    p = _strip_file_suffix(path)
    return p if p.endswith(SUFFIX) else p + SUFFIX


def resolve_checkpoint(path: str) -> str:
    """A user's ``--weights PATH``: a prefix, one of its files, a V1 file, or a directory."""
    p = Path(path)
    if p.is_dir():
        # slim's train_image_classifier.py: a directory means its latest checkpoint
        latest = tf.train.latest_checkpoint(str(p))
        if latest is None:
            raise BackendError(f"no TF checkpoint in directory {path!r}; pass a checkpoint prefix "
                               f"such as {p / 'model.ckpt'}")
        return latest
    stripped = _strip_file_suffix(path)
    for prefix in (stripped, stripped + SUFFIX):
        if Path(prefix + ".index").is_file():
            return prefix
    if p.is_file():
        return str(p)  # a V1 checkpoint, such as the official inception_v3.ckpt
    raise BackendError(f"{path!r} is not a TF checkpoint (no {stripped}.index); pass the prefix "
                       f"that tf.train.Saver wrote, e.g. model.ckpt")


def checkpoint_shapes(ckpt: str) -> dict[str, list[int]]:
    try:
        return tf.train.load_checkpoint(ckpt).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as err:
        raise BackendError(f"cannot read TF checkpoint {ckpt!r}: {str(err).splitlines()[0]}") from None


def restore_excluding(session, ckpt: str, variables, exclude_scopes,
                      ignore_missing_vars: bool = False) -> dict:
    """``recipe.restore_without_head`` from ``ckpt``: counts and the names left out."""
    restored, excluded, missing, mismatched = recipe.restore_without_head(
        session, ckpt, variables, exclude_scopes, checkpoint_shapes(ckpt), ignore_missing_vars)
    return {"checkpoint": ckpt, "restored": len(restored), "excluded": len(excluded),
            "missing": missing, "shape_mismatch": mismatched,
            "ignore_missing_vars": ignore_missing_vars}


def copy_head_rows(session, ckpt: str, weights: tf.Variable, biases: tf.Variable,
                   rows: dict[int, int]) -> int:
    """Copy classifier rows of shared labels: target class ``t`` <- source class ``s``.

    A slim classifier is a 1x1 conv: weights ``[1, 1, features, classes]``, so a class
    is a *column* on the last axis (a row of PyTorch's ``fc.weight [classes, features]``).
    """
    reader = tf.train.load_checkpoint(ckpt)
    name_w, name_b = weights.op.name, biases.op.name
    if not (reader.has_tensor(name_w) and reader.has_tensor(name_b)):
        raise BackendError(f"checkpoint {ckpt!r} has no linear head {name_w}; cannot reuse head rows")
    src_w, src_b = reader.get_tensor(name_w), reader.get_tensor(name_b)
    w, b = session.run([weights, biases])
    if src_w.shape[:-1] != w.shape[:-1]:
        raise BackendError(f"source head {name_w} has shape {list(src_w.shape)}, the new head "
                           f"{list(w.shape)}: head rows can only be reused between linear heads")
    for t, s in rows.items():
        w[..., t] = src_w[..., s]
        b[t] = src_b[s]
    weights.load(w, session)
    biases.load(b, session)
    return len(rows)


def imagenet_checkpoint(model: str, entry: ModelEntry) -> str:
    """The official slim checkpoint, extracted under ``catalog.imagenet_dir()``."""
    if entry.imagenet is None:
        raise BackendError(f"the slim backend has no ImageNet checkpoint for {model!r}")
    ckpt = imagenet_dir() / entry.imagenet.file
    if ckpt.is_file() or Path(str(ckpt) + ".index").is_file():
        return str(ckpt)
    raise BackendError(f"ImageNet weights for slim {model} are not available offline: extract "
                       f"{entry.imagenet.file} from {entry.imagenet.archive} into {ckpt.parent}/, "
                       f"run 'bench weights fetch --backend slim --model {model}' where there is "
                       f"a network, or pass --weights PATH to a slim checkpoint or --weights source")


def fetch_imagenet(model: str, entry: ModelEntry) -> Path:
    """Download the official archive and extract its checkpoint (slim's README does it by hand)."""
    target = imagenet_dir() / entry.imagenet.file
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = target.parent / entry.imagenet.archive
    urllib.request.urlretrieve(entry.imagenet.url, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(target.parent, filter="data")
    if not any(target.parent.glob(entry.imagenet.file + "*")):
        raise OSError(f"{archive.name} did not contain {entry.imagenet.file}")
    return target


class CheckpointSaver:
    """``tf.compat.v1.train.Saver`` objects cached per variable list (each adds graph ops)."""

    def __init__(self):
        self._savers: dict[tuple, tf.compat.v1.train.Saver] = {}

    def _saver(self, variables) -> tf.compat.v1.train.Saver:
        key = tuple(sorted(v.op.name for v in variables))
        if key not in self._savers:
            self._savers[key] = tf.compat.v1.train.Saver(
                var_list=sorted(variables, key=lambda v: v.op.name), max_to_keep=None,
                save_relative_paths=True)
        return self._savers[key]

    def save(self, session, variables, path) -> Path:
        prefix = checkpoint_prefix(path)
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        # write_state: the folder's "checkpoint" file names the newest save, so
        # tf.train.latest_checkpoint(folder) (slim's --checkpoint_path=DIR) finds it
        self._saver(variables).save(session, prefix, write_meta_graph=False)
        return Path(prefix)

    def save_arrays(self, names: list[str], arrays: list[np.ndarray], path) -> Path:
        """``save`` of values held in memory (``names``: the variables' op names): the same
        V2 checkpoint, written by ``SaveV2`` in a graph and session of its own, and the
        folder's ``checkpoint`` file naming it as ``save`` does (a relative path)."""
        prefix = checkpoint_prefix(path)
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        names, arrays = zip(*sorted(zip(names, arrays), key=lambda pair: pair[0]))  # as Saver
        graph = tf.Graph()
        with graph.as_default():
            feeds = [tf.compat.v1.placeholder(tf.as_dtype(a.dtype), a.shape) for a in arrays]
            write = tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(names),
                                      shape_and_slices=[""] * len(feeds), tensors=feeds)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(write, dict(zip(feeds, arrays)))
        tf.compat.v1.train.update_checkpoint_state(str(Path(prefix).parent), Path(prefix).name)
        return Path(prefix)

    def restore(self, session, variables, required, path) -> None:
        """Restore every variable the checkpoint holds; all of ``required`` must be there.

        Optimizer slots of a later phase are absent from an earlier phase's checkpoint
        (best-on-val) and keep their values.
        """
        prefix = checkpoint_prefix(path)
        if not Path(prefix + ".index").is_file():
            raise BackendError(f"no TF checkpoint at {prefix} (expected {prefix}.index)")
        shapes = checkpoint_shapes(prefix)
        missing = [v.op.name for v in required if v.op.name not in shapes]
        if missing:
            raise BackendError(f"checkpoint {prefix} lacks {len(missing)} model variable(s), "
                               f"e.g. {missing[0]}: it was saved from a different model")
        present = [v for v in variables if v.op.name in shapes]
        self._saver(present).restore(session, prefix)


def snapshot(session, variables) -> dict[str, np.ndarray]:
    values = session.run(list(variables))
    return {v.op.name: np.array(a, copy=True) for v, a in zip(variables, values)}
