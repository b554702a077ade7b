"""Canonical weights: the one framework-free layout every backend converts to and from.

A canonical checkpoint is an ``.npz`` of float32 arrays keyed by canonical
tensor name (docs/design.md, "Weights and parity"). Each backend reads its
native checkpoint into this layout and writes it back out with one table per
model (``ModelEntry.canonical`` in ``backends/<name>/catalog.py``: canonical
layer -> native layer) and its own ``convert.py``; this module holds only the
framework-free part: the layout, the digest, and the ``.npz`` file itself. The
canonical layers of each model, in forward order, are part of its entry in
``common.models`` (``ModelSpec.layers``), so adding a model is one entry there.

Names. A canonical layer is named after the framework whose names are
systematic, with ``/``, rather than a fourth vocabulary: InceptionV3's after
torchvision's module paths (``Mixed_5b/branch5x5_2``: the paper's block names,
which slim and torchvision share, and torchvision's branch names). A tensor is
``<layer>/<name>`` with TensorFlow's tensor names, because the layout is
TensorFlow's:

=====================  =====================  ===========================================
tensor                 shape                  torch / Keras / slim
=====================  =====================  ===========================================
``L/kernel``           ``[kh, kw, in, out]``  conv ``weight`` OIHW, transposed (2, 3, 1, 0) /
                       (HWIO)                 ``Conv2D.kernel`` / ``L/weights``
``L/gamma``            ``[out]``              ``bn.weight`` / ``gamma`` / ``BatchNorm/gamma``
                                              (``*_bn_scale`` layers only)
``L/beta``             ``[out]``              ``bn.bias`` / ``beta`` / ``BatchNorm/beta``
``L/moving_mean``      ``[out]``              ``bn.running_mean`` / ``moving_mean`` / same
``L/moving_variance``  ``[out]``              ``bn.running_var`` / ``moving_variance`` / same
``L/bias``             ``[out]``              conv ``bias`` / ``Conv2D.bias`` / ``L/biases``
``head/kernel``        ``[in, classes]``      ``fc.weight`` ``[classes, in]`` transposed /
                                              Dense ``kernel`` / 1x1 conv ``[1, 1, in, classes]``
``head/bias``          ``[classes]``          ``fc.bias`` / Dense ``bias`` / ``biases``
=====================  =====================  ===========================================

A head with a hidden layer stores ``head_hidden/kernel`` ``[in, hidden]`` and
``head_hidden/bias`` first, then ``head/kernel`` ``[hidden, classes]``.

A layer is of one of four kinds (``common.models.LAYER_TENSORS``): ``conv_bn``,
a convolution without bias followed by BatchNorm *without scale* (gamma), as
Keras and slim build InceptionV3 (``scale=False``): ``kernel``, ``beta``,
``moving_mean``, ``moving_variance``; or ``conv``, a convolution with a bias
and no normalisation: ``kernel``, ``bias``; ``conv_bn_scale`` and ``dwconv_bn_scale``
(EfficientNet-Lite0), a convolution or a depthwise convolution followed by BatchNorm with
its scale: ``kernel``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``. A
depthwise kernel is TensorFlow's ``[kh, kw, channels, 1]`` (torch ``[channels, 1, kh, kw]``
permuted (2, 3, 0, 1); Keras ``DepthwiseConv2D.kernel``; slim ``S/depthwise_weights``).
torchvision's BatchNorm has a gamma; the suite's torch InceptionV3 keeps it
fixed at 1, so nothing is lost (a torch checkpoint whose gamma is not 1 has no
exact equivalent and is refused by ``backends/pytorch/convert.py``).

The digest is sha256 over the tensors in canonical order (the table order,
then ``head_hidden``, then ``head``): for each, its name, dtype and shape, then
its little-endian C-order bytes. It depends on the numbers only, never on the
framework that wrote them: a converted checkpoint has the digest of its source.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from common.models import LAYER_TENSORS, MODELS, SCALED_KINDS, Layer, get_model

FORMAT = "transfer-bench canonical weights v1"
META_KEY = "__meta__"
HEAD, HEAD_HIDDEN = "head", "head_hidden"
CONV_BN_TENSORS = LAYER_TENSORS["conv_bn"]
CONV_TENSORS = LAYER_TENSORS["conv"]
DENSE_TENSORS = ("kernel", "bias")


class ConversionError(ValueError):
    """Weights that cannot be converted exactly; ``str(err)`` is one line for the user."""


def conversion_refusal(model: str) -> str | None:
    """Why ``model``'s weights cannot be converted between frameworks, or None."""
    spec = MODELS.get(model)
    if spec is not None and spec.layers:
        return None
    if spec is not None and spec.not_one_architecture:
        return spec.not_one_architecture
    return (f"{model} has no canonical weights table (conversion is defined for: "
            f"{', '.join(name for name, m in MODELS.items() if m.layers)})")


def layers(model: str) -> tuple[Layer, ...]:
    """The canonical layers of ``model`` (its ``ModelSpec.layers``), or a ``ConversionError``
    saying why it does not convert."""
    reason = conversion_refusal(model)
    if reason:
        raise ConversionError(reason)
    return get_model(model).layers


def backbone_parameter_count(model: str) -> int:
    """Trainable backbone parameters of the canonical model (kernels, and betas or biases):
    what every backend's backbone must have."""
    return sum(int(np.prod(l.kernel)) + l.out_channels * (2 if l.kind in SCALED_KINDS else 1)
               for l in layers(model))


def head_tensors(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the head tensors present, in canonical order."""
    return [f"{layer}/{t}" for layer in (HEAD_HIDDEN, HEAD) for t in DENSE_TENSORS
            if f"{layer}/{t}" in tensors]


def ordered_names(model: str, tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Every tensor name of ``tensors`` in canonical order (backbone, then head)."""
    return [n for layer in layers(model) for n, _ in layer.tensors()] + head_tensors(tensors)


def check(model: str, tensors: Mapping[str, np.ndarray], feature_dim: int) -> None:
    """Raise ``ConversionError`` naming the first tensor that is missing, extra or misshapen."""
    expected = [t for layer in layers(model) for t in layer.tensors()]
    width = feature_dim
    if f"{HEAD_HIDDEN}/kernel" in tensors:
        hidden = tensors[f"{HEAD_HIDDEN}/kernel"].shape[-1]
        expected += [(f"{HEAD_HIDDEN}/kernel", (width, hidden)), (f"{HEAD_HIDDEN}/bias", (hidden,))]
        width = hidden
    if f"{HEAD}/kernel" in tensors:
        classes = tensors[f"{HEAD}/kernel"].shape[-1]
        expected += [(f"{HEAD}/kernel", (width, classes)), (f"{HEAD}/bias", (classes,))]
    names = {n for n, _ in expected}
    for name, shape in expected:
        if name not in tensors:
            raise ConversionError(f"canonical {model} weights lack {name} {list(shape)}")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ConversionError(f"canonical tensor {name} has shape {list(tensors[name].shape)}, "
                                  f"{model} needs {list(shape)}")
    extra = [n for n in tensors if n not in names]
    if extra:
        raise ConversionError(f"canonical tensor {extra[0]} is not part of {model}")


def head_shape(model: str, tensors: Mapping[str, np.ndarray], feature_dim: int,
               backend: str) -> tuple[int, int]:
    """``(classes, hidden units)`` of checked canonical weights that must hold a head (a native
    checkpoint of ``backend`` is a whole model); hidden units are 0 without a hidden layer."""
    check(model, tensors, feature_dim)
    if f"{HEAD}/kernel" not in tensors:
        raise ConversionError(f"canonical {model} weights have no head; a {backend} checkpoint "
                              f"needs one")
    hidden = tensors.get(f"{HEAD_HIDDEN}/kernel")
    return tensors[f"{HEAD}/kernel"].shape[-1], 0 if hidden is None else hidden.shape[-1]


def digest(model: str, tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 hex over the tensors in canonical order (see the module docstring)."""
    h = hashlib.sha256()
    for name in ordered_names(model, tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: Path, model: str, tensors: Mapping[str, np.ndarray], meta: dict) -> dict:
    """Write a canonical ``.npz`` atomically; returns its metadata (with the digest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {n: np.ascontiguousarray(tensors[n], dtype=np.float32)
              for n in ordered_names(model, tensors)}
    meta = {**meta, "format": FORMAT, "model": model, "digest": digest(model, arrays)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **{META_KEY: np.asarray(json.dumps(meta, sort_keys=True))}, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return meta


def load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors, meta)`` of a canonical ``.npz`` written by ``save``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f[META_KEY])) if META_KEY in f.files else {}
            tensors = {k: f[k] for k in f.files if k != META_KEY}
    except (OSError, ValueError) as err:
        raise ConversionError(f"{path} is not a canonical weights file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ConversionError(f"{path} is not a canonical weights file (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    return tensors, meta


def random_weights(model: str, feature_dim: int, num_classes: int, seed: int = 0) -> dict:
    """Seeded canonical weights (He-normal kernels, varied BatchNorm statistics and betas),
    for ``bench parity``: every tensor differs from its neighbours, so a transposed or
    swapped tensor shows up."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in layers(model):
        kh, kw, cin, cout = layer.kernel
        fan_in = kh * kw * (1 if layer.depthwise else cin)
        cout = layer.out_channels
        tensors[f"{layer.name}/kernel"] = rng.normal(0, np.sqrt(2.0 / fan_in),
                                                     layer.kernel).astype(np.float32)
        if layer.kind == "conv":
            tensors[f"{layer.name}/bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
            continue
        if layer.kind in SCALED_KINDS:
            tensors[f"{layer.name}/gamma"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        tensors[f"{layer.name}/beta"] = rng.normal(0, 0.1, cout).astype(np.float32)
        tensors[f"{layer.name}/moving_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
        tensors[f"{layer.name}/moving_variance"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    tensors[f"{HEAD}/kernel"] = rng.normal(0, np.sqrt(1.0 / feature_dim),
                                           (feature_dim, num_classes)).astype(np.float32)
    tensors[f"{HEAD}/bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return tensors


# a stream of its own: the head's draw does not move with any other use of the run's seed
HEAD_INIT_STREAM = 0x4EAD


def aligned_head(seed: int, feature_dim: int, num_classes: int, hidden_units: int = 0
                 ) -> dict[str, np.ndarray]:
    """The new head of ``fidelity.head_init = "aligned"``, drawn once here with numpy from the
    run's ``seed``: canonical ``head_hidden/kernel`` ``[in, hidden]`` and ``head_hidden/bias``
    (when ``hidden_units`` > 0), then ``head/kernel`` ``[in, classes]`` and ``head/bias``.
    Kernels Glorot-uniform (limit sqrt(6 / (fan_in + fan_out))), biases 0: Keras' ``Dense``
    default (docs/design.md, "Fidelity switches", says why). Every backend writes these
    tensors into its head through its weight conversion's head mapping."""
    rng = np.random.default_rng([HEAD_INIT_STREAM, seed])
    tensors, width = {}, feature_dim
    for layer, units in ((HEAD_HIDDEN, hidden_units), (HEAD, num_classes)):
        if units <= 0:
            continue
        limit = np.sqrt(6.0 / (width + units))
        tensors[f"{layer}/kernel"] = rng.uniform(-limit, limit, (width, units)).astype(np.float32)
        tensors[f"{layer}/bias"] = np.zeros(units, np.float32)
        width = units
    return tensors
