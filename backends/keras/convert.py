"""Keras ``.weights.h5`` <-> canonical weights (``common.canonical``), by the catalog's table.

Keras idiom: a ``.weights.h5`` file is keyed by the model's *structure*, so a
file is read by building the model it was saved from and calling
``load_weights``, and written by setting each layer's variables and calling
``save_weights`` (``weights.save``). Keras' layout already is the canonical one
(``Conv2D.kernel`` is HWIO, ``Dense.kernel`` is ``[in, out]``), so no tensor is
transposed here; InceptionV3's ``BatchNormalization(scale=False)`` has
``beta``, ``moving_mean`` and ``moving_variance`` and no gamma.

The catalog's table gives, per canonical layer, the native layer: for a
``conv_bn`` layer the index of its ``conv2d_bn`` call in
``keras.applications.inception_v3`` (``conv2d_bn_layers`` finds the ``Conv2D``
and ``BatchNormalization`` layers of each call in a built model, whose names are
generated), for a ``conv`` layer (a ``Conv2D`` with a bias) the layer's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np

from backends.base import BackendError
from common import canonical
from common.models import SCALED_KINDS, get_model

from .catalog import MODELS
from .model import HEAD_HIDDEN, HEAD_LOGITS, KerasModel, _parent_layers, build_model
from .weights import WEIGHTS_SUFFIX, checkpoint_head, save, weights_file

_AUTO_NAME = re.compile(r"^(?P<prefix>[a-z0-9_]+?)(?:_(?P<n>\d+))?$")


def _creation_number(layer) -> int:
    """Keras names an unnamed layer ``<class>`` then ``<class>_1``, ``<class>_2``... per
    process: within one model the number orders the layers by creation."""
    return int(_AUTO_NAME.match(layer.name).group("n") or 0)


def conv2d_bn_layers(km: KerasModel) -> list[tuple]:
    """``(Conv2D, BatchNormalization)`` of every ``conv2d_bn`` call, in call order."""
    base = km.layers[:km.num_base_layers]
    convs = sorted((l for l in base if isinstance(l, keras.layers.Conv2D)), key=_creation_number)
    bns = sorted((l for l in base if isinstance(l, keras.layers.BatchNormalization)),
                 key=_creation_number)
    pairs = list(zip(convs, bns))
    for conv, bn in pairs:
        if _parent_layers(bn) != [conv]:  # conv2d_bn: Conv2D -> BatchNormalization
            raise BackendError(f"keras {km.spec.name}: {bn.name} does not follow {conv.name}; "
                               f"not the keras.applications model the catalog's table describes")
    return pairs


def _layer_table(km: KerasModel, model: str) -> dict[str, tuple]:
    """Canonical layer -> ``(Conv2D, BatchNormalization)`` by the catalog's table; a ``conv``
    layer (a Conv2D with a bias) has no BatchNormalization: ``(Conv2D, None)``."""
    table = MODELS[model].canonical
    kinds = {layer.name: layer.kind for layer in canonical.layers(model)}
    out = {name: (km.model.get_layer(table[name]), None) for name, kind in kinds.items()
           if kind == "conv"}
    # a BatchNorm with scale (EfficientNet-Lite0): the table names both layers
    out.update({name: tuple(km.model.get_layer(n) for n in table[name])
                for name, kind in kinds.items() if kind in SCALED_KINDS})
    if len(out) < len(kinds):
        pairs = conv2d_bn_layers(km)
        if len(pairs) != len(kinds) - len(out):
            raise canonical.ConversionError(f"keras {model} has {len(pairs)} conv2d_bn layers, "
                                            f"the canonical table {len(kinds) - len(out)}")
        out.update({name: pairs[table[name]] for name, kind in kinds.items() if kind == "conv_bn"})
    return {name: out[name] for name in kinds}  # canonical order


def _load(model: str, path: Path | str) -> KerasModel:
    """The suite's Keras model shaped like the ``.weights.h5`` at ``path``, loaded from it."""
    spec, entry = get_model(model), MODELS[model]
    path = weights_file(Path(path))
    if not path.is_file():
        raise BackendError(f"keras checkpoint {str(path)!r} does not exist")
    written_for, num_classes, hidden = checkpoint_head(path)
    if written_for != model:
        raise canonical.ConversionError(f"keras checkpoint {str(path)!r} holds a {written_for} "
                                        f"(its .head.json says so), not {model}")
    km = build_model(spec, entry, num_classes, spec.min_size, hidden)
    try:
        km.weights_view.load_weights(str(path))
    except (ValueError, KeyError) as err:
        raise canonical.ConversionError(f"keras checkpoint {str(path)!r} does not fit "
                                        f"{model}: {str(err).splitlines()[0]}") from None
    return km


def _value(variable) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def read_canonical(model: str, path: Path | str) -> tuple[dict[str, np.ndarray], dict]:
    """The canonical tensors of the ``.weights.h5`` checkpoint at ``path``."""
    return canonical_from_model(_load(model, path), model), {"classes": [], "dropped": []}


def canonical_from_model(km: KerasModel, model: str) -> dict[str, np.ndarray]:
    """The canonical tensors ``km`` holds now (``bench parity --train`` reads a trained one)."""
    kinds = {layer.name: layer.kind for layer in canonical.layers(model)}
    tensors = {}
    for name, (conv, bn) in _layer_table(km, model).items():
        tensors[f"{name}/kernel"] = _value(conv.kernel)  # HWIO already
        if bn is None:  # a conv layer: Conv2D with a bias
            tensors[f"{name}/bias"] = _value(conv.bias)
            continue
        scaled = kinds[name] in SCALED_KINDS
        if (bn.gamma is not None) != scaled or conv.use_bias:
            raise canonical.ConversionError(f"keras {conv.name}/{bn.name}: a bias or a BatchNorm "
                                            f"scale does not map to canonical {name}")
        if scaled:
            tensors[f"{name}/gamma"] = _value(bn.gamma)
        tensors[f"{name}/beta"] = _value(bn.beta)
        tensors[f"{name}/moving_mean"] = _value(bn.moving_mean)
        tensors[f"{name}/moving_variance"] = _value(bn.moving_variance)
    tensors.update(head_from_model(km))
    canonical.check(model, tensors, km.spec.feature_dim)
    return tensors


def model_from_canonical(model: str, tensors: dict[str, np.ndarray],
                         image_size: int | None = None, unbiased_bn: bool = False) -> KerasModel:
    """The suite's Keras model (input ``image_size``, default the model's minimum) holding
    ``tensors``, head included (``unbiased_bn``: ``build_model``'s)."""
    spec, entry = get_model(model), MODELS[model]
    classes, hidden = canonical.head_shape(model, tensors, spec.feature_dim, "keras")
    km = build_model(spec, entry, classes, image_size or spec.min_size,
                     hidden, unbiased_bn=unbiased_bn)
    for name, (conv, bn) in _layer_table(km, model).items():
        conv.kernel.assign(tensors[f"{name}/kernel"])
        if bn is None:
            conv.bias.assign(tensors[f"{name}/bias"])
            continue
        if bn.gamma is not None:
            bn.gamma.assign(tensors[f"{name}/gamma"])
        bn.beta.assign(tensors[f"{name}/beta"])
        bn.moving_mean.assign(tensors[f"{name}/moving_mean"])
        bn.moving_variance.assign(tensors[f"{name}/moving_variance"])
    write_head(km, tensors)
    return km


# canonical head layer -> the Dense layer of recipe.new_head
HEAD_LAYERS = ((canonical.HEAD_HIDDEN, HEAD_HIDDEN), (canonical.HEAD, HEAD_LOGITS))


def head_from_model(km: KerasModel) -> dict[str, np.ndarray]:
    """The canonical head tensors ``km`` holds now (a Dense kernel is ``[in, out]`` already)."""
    tensors = {}
    for layer, keras_name in HEAD_LAYERS:
        if any(l.name == keras_name for l in km.layers):
            dense = km.model.get_layer(keras_name)
            tensors[f"{layer}/kernel"] = _value(dense.kernel)
            tensors[f"{layer}/bias"] = _value(dense.bias)
    return tensors


def write_head(km: KerasModel, tensors: dict[str, np.ndarray]) -> None:
    """Assign the canonical head tensors of ``tensors`` to ``km``'s head (``model_from_canonical``;
    ``fidelity.head_init = "aligned"``: ``Backend.aligned_head``)."""
    for layer, keras_name in HEAD_LAYERS:
        if f"{layer}/kernel" in tensors:
            dense = km.model.get_layer(keras_name)
            dense.kernel.assign(tensors[f"{layer}/kernel"])
            dense.bias.assign(tensors[f"{layer}/bias"])


def write_canonical(model: str, tensors: dict[str, np.ndarray], path: Path | str,
                    meta: dict | None = None) -> Path:
    """A ``.weights.h5`` of ``tensors`` as the keras backend saves it (loadable with
    ``--weights PATH``); returns the file."""
    return write_model(model_from_canonical(model, tensors), path)


def write_model(km: KerasModel, path: Path | str) -> Path:
    """``km``'s weights as the keras backend saves them, at ``path`` (``.weights.h5`` added)."""
    target = Path(path)
    if target.name.endswith(WEIGHTS_SUFFIX):
        target = target.with_name(target.name[:-len(WEIGHTS_SUFFIX)])
    return save(km, None, target)
