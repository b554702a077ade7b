"""TF checkpoints (slim) <-> canonical weights (``common.canonical``), by the catalog's table.

TF-Slim idiom: a checkpoint maps variable names to tensors, read with
``tf.train.load_checkpoint`` (no graph needed) and written by building the
net in a graph, loading values into its variables and ``Saver.save`` — a
prefix ``NAME.ckpt`` with ``.index`` and ``.data-*`` files. For each canonical
layer the catalog (``MODELS[model].canonical``) names the scope ``S``:

* ``L/kernel`` = ``S/weights`` (``[kh, kw, in, out]``: TF's layout is canonical);
* a ``conv_bn`` layer's ``L/beta``, ``L/moving_mean``, ``L/moving_variance`` =
  ``S/BatchNorm/...`` (``inception_v3_arg_scope``: ``batch_norm`` without ``scale``,
  so no gamma); a ``conv`` layer's ``L/bias`` = ``S/biases``;
* the head is a 1x1 convolution: ``<logits_layer>/weights [1, 1, in, classes]``
  (a class is the last axis) reshaped to ``head/kernel [in, classes]``, and
  ``biases``; a hidden head is ``InceptionV3/Logits/Conv2d_1b_1x1`` (``model.new_head``).

Variables outside the model scope (``global_step``, the optimizer slots under
``phaseN/``) are training state and are not weights; the auxiliary head
(``AuxLogits``) has no canonical form (Keras has none) and is dropped, listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from backends.base import BackendError
from common import canonical
from common.models import LAYER_TENSORS, get_model

from .catalog import MODELS
from .model import build_tower
from .weights import checkpoint_prefix, resolve_checkpoint

# model.new_head's hidden layer scope (the logits layer is the catalog's logits_layer)
HIDDEN_HEAD_SCOPE = "Logits/Conv2d_1b_1x1"


def _model_scope(model: str) -> str:
    """``InceptionV3``: the scope every model variable lives under."""
    return MODELS[model].logits_layer.split("/", 1)[0]


def _head_scopes(model: str) -> dict[str, str]:
    entry = MODELS[model]
    # resnet_v1_50 keeps slim's own classifier scope, logits/, and its hidden layer inside it
    # (model.resnet_v1_50); the other nets' new_head is under <net>/Logits
    hidden = f"{entry.logits_layer}/hidden" if entry.logits_layer.endswith("/logits") \
        else f"{_model_scope(model)}/{HIDDEN_HEAD_SCOPE}"
    return {canonical.HEAD_HIDDEN: hidden, canonical.HEAD: entry.logits_layer}


def _native_tensors(layer, scope: str) -> list[tuple[str, str]]:
    """``(canonical tensor, slim variable)`` of ``layer`` besides its kernel: BatchNorm's
    beta and moving statistics (``conv_bn``), or the convolution's biases (``conv``)."""
    if layer.kind == "conv":
        return [("bias", f"{scope}/biases")]
    return [(t, f"{scope}/BatchNorm/{t}") for t in LAYER_TENSORS[layer.kind][1:]]


def _kernel_variable(layer, scope: str) -> str:
    """``S/weights``; a depthwise layer's ``S/depthwise_weights`` (``slim.separable_conv2d``
    with ``num_outputs=None``: ``[kh, kw, channels, 1]``, the canonical layout)."""
    return f"{scope}/depthwise_weights" if layer.depthwise else f"{scope}/weights"


def read_canonical(model: str, path: Path | str) -> tuple[dict[str, np.ndarray], dict]:
    """The canonical tensors of the TF checkpoint at ``path`` (a prefix, one of its files
    or a directory, as ``--weights PATH``)."""
    entry = MODELS[model]
    ckpt = resolve_checkpoint(str(path))
    source = f"slim checkpoint {ckpt!r}"
    try:
        reader = tf.train.load_checkpoint(ckpt)
    except (tf.errors.OpError, ValueError) as err:
        raise BackendError(f"cannot read TF checkpoint {ckpt!r}: {str(err).splitlines()[0]}") from None
    shapes = reader.get_variable_to_shape_map()
    tensors, used = {}, set()

    def take(name: str, canonical_name: str, shape) -> np.ndarray:
        if name not in shapes:
            raise canonical.ConversionError(f"{source} has no {name} (canonical {canonical_name})")
        if tuple(shapes[name]) != tuple(shape):
            raise canonical.ConversionError(f"{source}: {name} has shape {list(shapes[name])}, "
                                            f"canonical {canonical_name} needs {list(shape)}")
        used.add(name)
        return np.asarray(reader.get_tensor(name), dtype=np.float32)

    for layer in canonical.layers(model):
        scope = entry.canonical[layer.name]
        cout = layer.out_channels
        tensors[f"{layer.name}/kernel"] = take(_kernel_variable(layer, scope), f"{layer.name}/kernel",
                                               layer.kernel)
        for t, name in _native_tensors(layer, scope):
            tensors[f"{layer.name}/{t}"] = take(name, f"{layer.name}/{t}", (cout,))
    for layer, scope in _head_scopes(model).items():
        if f"{scope}/weights" in shapes:
            kernel = take(f"{scope}/weights", f"{layer}/kernel", shapes[f"{scope}/weights"])
            if kernel.shape[:2] != (1, 1):
                raise canonical.ConversionError(f"{source}: {scope}/weights {list(kernel.shape)} "
                                                f"is not a 1x1 classifier")
            tensors[f"{layer}/kernel"] = kernel.reshape(kernel.shape[2:])  # [1, 1, in, out] -> [in, out]
            tensors[f"{layer}/bias"] = take(f"{scope}/biases", f"{layer}/bias", (kernel.shape[-1],))
    prefix = _model_scope(model) + "/"
    aux = tuple(f"{a}/" for a in entry.aux_head)
    dropped = sorted(n for n in shapes if n.startswith(aux))
    extra = sorted(n for n in shapes if n.startswith(prefix) and n not in used and n not in dropped)
    if extra:
        raise canonical.ConversionError(f"{source}: {extra[0]} does not map to any canonical "
                                        f"{model} tensor")
    canonical.check(model, tensors, get_model(model).feature_dim)
    return tensors, {"classes": [], "dropped": dropped}


def _graph_with_model(model: str, num_classes: int, hidden: int, image_size: int):
    """A graph holding the slim net (eval tower) on an image placeholder."""
    spec, entry = get_model(model), MODELS[model]
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, image_size, image_size, 3], "images")
        tower = build_tower(spec, entry, images, num_classes, hidden_units=hidden, aux_logits=False,
                            weight_decay=tf.constant(0.0), training_blocks=())
    return graph, images, tower


def session_from_canonical(model: str, tensors: dict[str, np.ndarray],
                           image_size: int | None = None):
    """``(session, images placeholder, eval tower)``: the slim net (input ``image_size``,
    default the model's minimum) in its own graph, every variable holding ``tensors``."""
    spec, entry = get_model(model), MODELS[model]
    classes, hidden = canonical.head_shape(model, tensors, spec.feature_dim, "slim")
    graph, images, tower = _graph_with_model(model, classes, hidden,
                                             image_size or spec.min_size)
    values = {}
    for layer in canonical.layers(model):
        scope = entry.canonical[layer.name]
        values[_kernel_variable(layer, scope)] = tensors[f"{layer.name}/kernel"]
        for t, name in _native_tensors(layer, scope):
            values[name] = tensors[f"{layer.name}/{t}"]
    for layer, scope in _head_scopes(model).items():
        if f"{layer}/kernel" in tensors:
            values[f"{scope}/weights"] = tensors[f"{layer}/kernel"][None, None]  # -> [1, 1, in, out]
            values[f"{scope}/biases"] = tensors[f"{layer}/bias"]
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        variables = tf.compat.v1.global_variables()
    missing = [v.op.name for v in variables if v.op.name not in values]
    if missing:
        session.close()
        raise canonical.ConversionError(f"slim {model} variable {missing[0]} has no canonical tensor")
    # one run of every variable's initializer, fed with its canonical value
    session.run([v.initializer for v in variables],
                {v.initializer.inputs[1]: values[v.op.name] for v in variables})
    return session, images, tower


def native_names(model: str, tensors) -> dict[str, str]:
    """Canonical tensor name -> the slim variable (op name) that holds it."""
    entry = MODELS[model]
    names = {}
    for layer in canonical.layers(model):
        scope = entry.canonical[layer.name]
        names[f"{layer.name}/kernel"] = f"{scope}/weights"
        for t, name in _native_tensors(layer, scope):
            names[f"{layer.name}/{t}"] = name
    for layer, scope in _head_scopes(model).items():
        if f"{layer}/kernel" in tensors:
            names[f"{layer}/kernel"] = f"{scope}/weights"
            names[f"{layer}/bias"] = f"{scope}/biases"
    return names


def head_variables(model: str, variables) -> dict[str, object]:
    """Canonical head tensor -> the slim variable of ``variables`` that holds it (the head's
    scopes of ``native_names``; a hidden layer's only when the net has one)."""
    by_name = {v.op.name: v for v in variables}
    found = {}
    for layer, scope in _head_scopes(model).items():
        if f"{scope}/weights" in by_name:
            found[f"{layer}/kernel"] = by_name[f"{scope}/weights"]
            found[f"{layer}/bias"] = by_name[f"{scope}/biases"]
    return found


def head_from_session(model: str, session, variables) -> dict[str, np.ndarray]:
    """The canonical head tensors ``session`` holds now: a 1x1 conv's ``[1, 1, in, out]``
    weights reshaped to ``[in, out]``."""
    values = session.run(head_variables(model, variables))
    return {k: np.asarray(v, np.float32).reshape(v.shape[-2:] if k.endswith("/kernel") else v.shape)
            for k, v in values.items()}


def write_head(model: str, session, variables, tensors: dict[str, np.ndarray]) -> None:
    """Load the canonical head tensors of ``tensors`` into the head's variables
    (``fidelity.head_init = "aligned"``: ``Backend.aligned_head``), as
    ``session_from_canonical`` feeds them: a kernel ``[in, out]`` -> ``[1, 1, in, out]``."""
    targets = head_variables(model, variables)
    if set(targets) != set(tensors):
        raise canonical.ConversionError(f"slim {model}: head tensors {sorted(tensors)} do not "
                                        f"match the net's head {sorted(targets)}")
    for name, variable in targets.items():
        value = tensors[name][None, None] if name.endswith("/kernel") else tensors[name]
        variable.load(value, session)


def canonical_from_session(model: str, session, like: dict[str, np.ndarray]
                           ) -> dict[str, np.ndarray]:
    """The canonical tensors (the names of ``like``) that ``session``'s variables hold now
    (``bench parity --train`` reads a trained net)."""
    names = native_names(model, like)
    with session.graph.as_default():
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    values = session.run({k: variables[n] for k, n in names.items()})
    return {k: np.asarray(v, np.float32).reshape(like[k].shape) for k, v in values.items()}


def write_canonical(model: str, tensors: dict[str, np.ndarray], path: Path | str,
                    meta: dict | None = None) -> Path:
    """A TF checkpoint (prefix ``NAME.ckpt``) of ``tensors`` with the slim net's variable
    names, loadable with ``--weights PATH``; returns the prefix."""
    session, _, _ = session_from_canonical(model, tensors)
    try:
        return write_session(session, path)
    finally:
        session.close()


def write_session(session, path: Path | str) -> Path:
    """Every variable of ``session``'s graph as a TF checkpoint, prefix ``NAME.ckpt``."""
    prefix = checkpoint_prefix(path)
    with session.graph.as_default():
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        tf.compat.v1.train.Saver(var_list=tf.compat.v1.global_variables(),
                                 save_relative_paths=True).save(
            session, prefix, write_meta_graph=False, write_state=False)
    return Path(prefix)
