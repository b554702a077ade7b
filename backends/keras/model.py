"""The Keras model: a ``keras.applications`` backbone, a new head, canonical blocks.

Keras idiom shown here: the functional API on top of the application's own
graph, exactly as the keras.io "Fine-tune InceptionV3" example does::

    base = InceptionV3(include_top=False)
    x = GlobalAveragePooling2D()(base.output)
    model = Model(base.input, Dense(n)(x))

so ``model.layers[i]`` *is* base layer ``i`` and Keras' famous "freeze the first
249 layers" is literally ``model.layers[:249]``. A canonical block is a range
of layer indices computed from the backend's ``catalog.py`` (the name of each
block's last layer), never from auto-generated names such as ``max_pooling2d_1``,
which change when a process builds several models.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from backends.base import ModelEntry
from common.models import BN_DECAY, HEAD, ModelSpec

from .catalog import HEAD_LAYERS

FEATURES_LAYER = "avg_pool"
DROPOUT_LAYER = "head_dropout"
HEAD_HIDDEN, HEAD_LOGITS = HEAD_LAYERS


@dataclass
class KerasModel:
    """The built model and the index bookkeeping the phases need."""

    spec: ModelSpec
    entry: ModelEntry            # the catalog entry (constructor, block names)
    model: keras.Model           # image -> logits
    features: keras.Model        # image -> pooled features (shares the layers)
    num_base_layers: int         # model.layers[:num_base_layers] is the backbone
    blocks: dict[str, range]     # canonical block -> indices into model.layers
    head_hidden_units: int
    # ids of the variables PyTorch would call parameters (kernels, biases, BN
    # gamma/beta); BN moving statistics are Keras variables but not parameters
    parameter_ids: frozenset
    # the same layers as ``model``, never compiled: its .weights.h5 holds the
    # weights only (a compiled model's file also holds its optimizer), and its predict
    # function is traced once (compile() discards a compiled model's)
    weights_view: keras.Model
    base: keras.Model | None = None          # the keras.applications backbone
    dropout: float = 0.0                     # rate of the Dropout layer before the head
    # the model the current phase compiled and fits: ``model``, or for bn = "inference"
    # ``inference_bn_model()`` (the same layers)
    train_model: keras.Model | None = None
    _inference_bn: keras.Model | None = None

    @property
    def layers(self) -> list:
        return self.model.layers

    def head_layers(self) -> list:
        return [self.model.get_layer(n) for n in (HEAD_HIDDEN, HEAD_LOGITS)
                if any(l.name == n for l in self.model.layers)]

    def block_layers(self, block: str) -> list:
        if block == HEAD:
            return self.head_layers()
        return [self.model.layers[i] for i in self.blocks[block]]

    def parameters(self) -> list:
        return [v for v in self.model.weights if id(v) in self.parameter_ids]

    def inference_bn_model(self) -> keras.Model:
        """The same layers with the backbone called as ``base(x, training=False)`` (the Keras
        transfer-learning guide), from a layer: in a functional graph Keras 3 passes ``fit``'s
        ``training=True`` to every node, the base's too (keras-team/keras#20285), so a layer
        whose ``call`` fixes ``training=False`` keeps every BatchNormalization on its moving
        statistics while trainable layers still train (their betas); the head's dropout still
        sees ``fit``'s ``training``."""
        if self._inference_bn is None:
            inputs = keras.Input(self.model.input_shape[1:])
            x = BackboneInInferenceMode(self.base)(inputs)
            for layer in self.model.layers[self.num_base_layers:]:
                x = layer(x)
            self._inference_bn = keras.Model(inputs, x, name=f"{self.spec.name}_bn_inference")
        return self._inference_bn


class BackboneInInferenceMode(keras.layers.Layer):
    """``base(x, training=False)`` whatever ``training`` the model is called with."""

    def __init__(self, base: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.base = base

    def call(self, inputs):
        return self.base(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.base.compute_output_shape(input_shape)


@keras.saving.register_keras_serializable(package="transfer_bench")
class UnbiasedMovingVarianceBN(keras.layers.BatchNormalization):
    """Keras' ``BatchNormalization`` whose training step feeds the moving variance the
    *unbiased* batch variance, ``n/(n-1)`` x the biased one it normalises with (n values per
    channel), as ``torch.nn.BatchNorm2d`` and TF's fused batch norm (slim) do; Keras 3 feeds
    it the biased one. ``fidelity.bn_moving_variance = "aligned"`` (docs/differences.md).
    The normalisation itself, and everything in inference, is Keras' own."""

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        if training and self.trainable and not self.renorm:
            # Keras just set moving_var = m * old + (1 - m) * var; add (1 - m) * var * (c - 1)
            x = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
            _, variance = self._moments(x, mask)
            n = keras.ops.cast(keras.ops.size(x) // x.shape[self.axis], variance.dtype)
            extra = variance * (1.0 - self.momentum) / keras.ops.maximum(n - 1.0, 1.0)
            self.moving_variance.assign(self.moving_variance + keras.ops.cast(
                extra, self.moving_variance.dtype))
        return outputs


def with_unbiased_moving_variance(base: keras.Model) -> keras.Model:
    """``base`` rebuilt with every ``BatchNormalization`` an ``UnbiasedMovingVarianceBN``
    (Keras' own way to swap layers in a functional model: ``clone_model`` with a
    ``clone_function``; names and weights kept)."""
    def clone(layer):
        cls = UnbiasedMovingVarianceBN if type(layer) is keras.layers.BatchNormalization \
            else layer.__class__
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(base, clone_function=clone)
    copy.set_weights(base.get_weights())
    return copy


def _parent_layers(layer) -> list:
    """Layers feeding ``layer`` in the functional graph."""
    return [parent.operation for node in layer._inbound_nodes for parent in node.parent_nodes]


def _ancestors(layer) -> set:
    seen, todo = set(), [layer]
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            todo.extend(_parent_layers(current))
    return seen


def _stem_end(layers: list, first_block_last: int) -> int:
    """Index of the stem's last layer: the latest layer that every branch of
    the first block starts from (the latest common ancestor of the inputs of
    the block's final concatenation; for InceptionV3 ``max_pooling2d_1``, 17)."""
    branches = _parent_layers(layers[first_block_last])
    common = set.intersection(*(_ancestors(b) for b in branches))
    return max(i for i, layer in enumerate(layers) if id(layer) in common)


def block_ranges(layers: list, spec: ModelSpec, entry: ModelEntry) -> dict[str, range]:
    """Canonical block -> ``range`` of layer indices (see ``catalog.py``)."""
    native = entry.blocks
    index = {layer.name: i for i, layer in enumerate(layers)}
    ends = {}
    for pos, block in enumerate(spec.blocks):
        names = native[block]
        if names:
            ends[block] = index[names[-1]]
        else:  # a block of auto-named layers (the Inception stem): found from the graph
            if pos != 0:
                raise ValueError(f"{spec.name}: only the first block may be unnamed")
            ends[block] = _stem_end(layers, index[native[spec.blocks[1]][-1]])
    ranges, start = {}, 0  # the stem includes the InputLayer, like model.layers[:249]
    for block in spec.blocks:
        if ends[block] < start:
            raise ValueError(f"{spec.name}: block {block} ends before it starts")
        ranges[block] = range(start, ends[block] + 1)
        start = ends[block] + 1
    if start != len(layers):
        raise ValueError(f"{spec.name}: the blocks cover {start} of {len(layers)} layers")
    return ranges


def build_model(spec: ModelSpec, entry: ModelEntry, num_classes: int, image_size: int,
                head_hidden_units: int = 0, base_weights: str | None = None,
                dropout: float = 0.0, unbiased_bn: bool = False,
                float32_head: bool = False) -> KerasModel:
    """``spec``'s application without its top, pooled, with a new head.

    ``base_weights`` is passed to the application as ``weights=``: None, or the
    path of a Keras ImageNet ``*_notop.h5`` file (see ``weights.py``). ``dropout`` > 0:
    a ``Dropout`` layer on the pooled features (the guide's ``Dropout(0.2)``), active in
    ``fit`` only. ``unbiased_bn``: every BatchNormalization an ``UnbiasedMovingVarianceBN``
    (``fidelity.bn_moving_variance = "aligned"``). ``float32_head``: the hidden ``Dense``
    float32 like the logits (``fidelity.head_dtype = "aligned"``, ``recipe.new_head``).
    """
    # NHWC: Keras image models take channels last; torchvision takes NCHW.
    base = entry.resolve_constructor()(include_top=False, weights=base_weights,
                                   input_shape=(image_size, image_size, 3))
    if unbiased_bn:
        base = with_unbiased_moving_variance(base)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras' default momentum is 0.99; the suite uses one decay everywhere
            # (common.models.BN_DECAY; torch expresses the same as momentum=0.1).
            layer.momentum = BN_DECAY
    from .recipe import new_head  # recipe.py imports this module

    # fidelity.head_dtype = "aligned": the hidden Dense float32 like the logits; natively it
    # follows the policy (bf16 compute under mixed_bfloat16)
    model, pooled = new_head(base, spec, num_classes, head_hidden_units, dropout,
                             "float32" if float32_head else None)
    features = keras.Model(base.input, pooled, name=f"{spec.name}_features")
    num_base = len(base.layers)
    blocks = block_ranges(model.layers[:num_base], spec, entry)
    # the catalog's table (what a recipe's unfreeze_from is checked against before a run):
    # for InceptionV3 the keras.io seed's cut, layers[249:] = mixed9 + mixed10 = Mixed_7b + 7c
    first = {block: r.start for block, r in blocks.items()}
    if getattr(entry, "first_layers", None) and (first != dict(entry.first_layers)
                                                 or num_base != entry.base_layers):
        raise ValueError(f"{spec.name}: the blocks start at {first} of {num_base} layers, the "
                         f"catalog says {dict(entry.first_layers)} of {entry.base_layers}")
    # every weight is trainable right after construction, except BN moving statistics
    params = frozenset(id(v) for v in model.trainable_weights)
    weights_view = keras.Model(base.input, model.output, name=f"{spec.name}_weights")
    return KerasModel(spec, entry, model, features, num_base, blocks, head_hidden_units, params,
                      weights_view, base=base, dropout=dropout, train_model=model)


def efficientnet_lite0(include_top: bool = False, weights: str | None = None,
                       input_shape: tuple | None = None) -> keras.Model:
    """EfficientNet-Lite0 as a ``keras.applications``-style constructor (Keras has no Lite
    variant): the functional API over ``Conv2D``, ``DepthwiseConv2D``,
    ``BatchNormalization(epsilon=1e-3)`` and ``ReLU(6)``, from the stage table of
    ``common.models.EFFICIENTNET_LITE0``, with keras.applications' EfficientNet layer names
    (``stem_conv``, ``block2a_expand_conv``, ``block2a_dwconv``, ``block2b_add``, ``top_bn``).
    ``padding="same"`` is TensorFlow's SAME (at stride 2 the larger half of the padding
    after). No rescaling layer: the suite normalises its input (mean 0.5, std 0.5). Only the
    backbone (``include_top=False``); weights come from the suite (``weights=None``)."""
    from common.models import EFFICIENTNET_LITE0 as spec

    if include_top or weights is not None:
        raise ValueError("efficientnet_lite0 builds the backbone only (include_top=False, "
                         "weights=None): its ImageNet weights are converted by the suite")
    layers = keras.layers
    eps = spec.bn_epsilon

    def conv_bn(x, filters, kernel, stride, name, act=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=eps, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_activation")(x) if act else x

    inputs = keras.Input(input_shape or (None, None, 3))
    x = conv_bn(inputs, spec.stem_channels, 3, 2, "stem")
    cin = spec.stem_channels
    for s, stage in enumerate(spec.stages, 1):
        for r in range(stage.repeats):
            name, stride = f"block{s}{chr(ord('a') + r)}", stage.stride if r == 0 else 1
            y = x
            if stage.expand != 1:
                y = conv_bn(y, cin * stage.expand, 1, 1, f"{name}_expand")
            y = layers.DepthwiseConv2D(stage.kernel, strides=stride, padding="same",
                                       use_bias=False, name=f"{name}_dwconv")(y)
            y = layers.BatchNormalization(epsilon=eps, name=f"{name}_bn")(y)
            y = layers.ReLU(6.0, name=f"{name}_activation")(y)
            y = layers.Conv2D(stage.channels, 1, padding="same", use_bias=False,
                              name=f"{name}_project_conv")(y)
            y = layers.BatchNormalization(epsilon=eps, name=f"{name}_project_bn")(y)
            x = layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and cin == stage.channels else y
            cin = stage.channels
    x = conv_bn(x, spec.top_channels, 1, 1, "top")
    return keras.Model(inputs, x, name="efficientnet_lite0")


def layer_range_text(indices) -> str:
    """``[249, ..., 310]`` -> ``"249..310"``; gaps give ``"a..b, c..d"``; empty -> ``"none"``."""
    indices = sorted(indices)
    if not indices:
        return "none"
    runs, start, prev = [], indices[0], indices[0]
    for i in indices[1:]:
        if i != prev + 1:
            runs.append((start, prev))
            start = i
        prev = i
    runs.append((start, prev))
    return ", ".join(f"{a}..{b}" for a, b in runs)
