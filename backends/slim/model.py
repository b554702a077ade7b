"""Build tf_slim nets (with recipe.py's new head); map canonical blocks to variable scopes.

TF-Slim idiom: a network is a function that creates variables under a
``variable_scope`` ("InceptionV3/Mixed_7b/Branch_1/...") inside the defaults
of an ``arg_scope`` (``inception_v3_arg_scope``: conv2d -> batch_norm,
L2 ``weights_regularizer``). A canonical block *is* a scope prefix, so
freezing is a list of scopes (``--trainable_scopes``) and restoring is a list
of scopes to leave out (``--checkpoint_exclude_scopes``).

A *tower* is one call of the net function on an input tensor. Variables are
created by the first tower (``reuse=False``) and shared by later ones
(``reuse=True``), the way slim builds train and eval graphs. Each tower
decides per scope whether ``batch_norm`` runs with ``is_training=True``:
slim's ``is_training`` is a Python bool fixed at graph construction, so the
backend builds a new train tower when a phase changes the BN mode of a block
(``recipe.scoped_batch_norm``).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tf_slim.nets import inception_v3 as slim_inception
from tf_slim.nets import resnet_v1

from backends.base import BackendError, ModelEntry
from backends.slim.compat import slim
# the recipe's own pieces (recipe.py): the new head, BatchNorm per scope, the scope test
from backends.slim.recipe import in_scopes, new_head, scoped_batch_norm
from common.config import Phase
from common.models import BN_DECAY, EFFICIENTNET_LITE0, HEAD, ModelSpec

# BatchNorm moving-average decay for every net: the suite's one value
# (common.models.BN_DECAY). slim's arg_scopes default to 0.9997 (inception)
# and 0.997 (resnet), tuned for ImageNet-length runs.
BATCH_NORM_DECAY = BN_DECAY


@dataclass
class Tower:
    """Output tensors of one call of the network."""

    logits: tf.Tensor
    features: tf.Tensor              # pooled backbone features [B, feature_dim]
    aux_logits: tf.Tensor | None
    # UPDATE_OPS (BN moving averages) this tower created: one pair per batch_norm
    # built with is_training=True, none for batch_norm with is_training=False.
    update_ops: list = field(default_factory=list)
    training_scopes: tuple[str, ...] = ()   # where batch_norm runs with is_training=True
    # the net's end_points (slim's name -> tensor: "Mixed_5b", "MaxPool_5a_3x3"), for bench parity
    end_points: dict = field(default_factory=dict)


# ------------------------------------------------------------------ scopes

def native_scopes(entry: ModelEntry, block: str, aux_logits: bool = False) -> tuple[str, ...]:
    """Variable scopes of canonical ``block`` ("head": Logits, plus AuxLogits when built)."""
    return entry.native(block, aux=aux_logits)


def trainable_scopes(spec: ModelSpec, entry: ModelEntry, phase: Phase,
                     aux_logits: bool = False) -> tuple[str, ...]:
    """slim's ``--trainable_scopes`` for ``phase``: its blocks' scopes, then the head's; a
    phase that names ``trainable_scopes`` itself gets them as written."""
    if phase.trainable_scopes:
        return tuple(phase.trainable_scopes)
    scopes = [s for block in phase.trainable_blocks(spec) for s in native_scopes(entry, block)]
    return (*scopes, *native_scopes(entry, HEAD, aux_logits))


def checkpoint_exclude_scopes(entry: ModelEntry) -> tuple[str, ...]:
    """slim's ``--checkpoint_exclude_scopes``: the classifier scopes, never restored."""
    return entry.native(HEAD)


def block_of(name: str, spec: ModelSpec, entry: ModelEntry) -> str | None:
    """The canonical block whose scopes contain ``name`` (``None`` outside the model)."""
    for block in (*spec.blocks, HEAD):
        if in_scopes(name, entry.native(block)):
            return block
    return None


def variables_in_scopes(variables, scopes) -> list:
    return [v for v in variables if in_scopes(v.op.name, scopes)]


def nearest_scopes(scope: str, variables) -> str:
    """What exists next to ``scope``: the child scopes of its deepest existing parent."""
    parent = scope
    while parent and not variables_in_scopes(variables, [parent]):
        parent = parent.rpartition("/")[0]
    depth = parent.count("/") + 1 if parent else 0
    children = sorted({"/".join(v.op.name.split("/")[:depth + 1]) for v in variables
                       if not parent or in_scopes(v.op.name, [parent])})
    return f"{parent or 'the model'} holds: {', '.join(children)}"


def is_moving_statistic(var) -> bool:
    """BN moving_mean / moving_variance: state, not parameters (torch buffers)."""
    return var.op.name.endswith(("/moving_mean", "/moving_variance"))


def param_count(variables) -> int:
    return int(sum(np.prod(v.shape.as_list(), dtype=np.int64) for v in variables))


def _inception_aux_head(mixed_6e: tf.Tensor, num_classes: int) -> tf.Tensor:
    """slim's InceptionV3/AuxLogits, verbatim from ``tf_slim.nets.inception_v3``."""
    with slim.arg_scope([slim.conv2d, slim.max_pool2d, slim.avg_pool2d], stride=1, padding="SAME"):
        aux = slim.avg_pool2d(mixed_6e, [5, 5], stride=3, padding="VALID", scope="AvgPool_1a_5x5")
        aux = slim.conv2d(aux, 128, [1, 1], scope="Conv2d_1b_1x1")
        kernel = slim_inception._reduced_kernel_size_for_small_input(aux, [5, 5])
        aux = slim.conv2d(aux, 768, kernel, padding="VALID",
                          weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.01),
                          scope="Conv2d_2a_{}x{}".format(*kernel))
        aux = slim.conv2d(aux, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                          weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.001),
                          scope="Conv2d_2b_1x1")
        return tf.squeeze(aux, [1, 2], name="SpatialSqueeze")


# ---------------------------------------------------------------- networks

def inception_v3(images, num_classes, hidden_units, aux_logits, reuse, dropout=0.0,
                 dropout_training=False):
    """``inception_v3_base`` + AuxLogits + the new head under InceptionV3/Logits.

    tf_slim 1.1's ``inception_v3()`` has no ``num_classes=0`` (features-only) or
    ``global_pool`` option and ties the aux head to ``num_classes``, so the
    classifier scopes are rebuilt here around ``inception_v3_base`` with the
    same variable names, which keeps official ``inception_v3.ckpt`` files loadable.
    Op names follow the variable names (``InceptionV3/Mixed_7b/...``), where slim's
    ``inception_v3()`` nests its name scope twice (``InceptionV3/InceptionV3/Mixed_7b``):
    the L2 regularizer terms are then collected by variable scope.
    """
    # auxiliary_name_scope=False: inception_v3_base opens the "InceptionV3" name scope itself
    with tf.compat.v1.variable_scope("InceptionV3", [images], reuse=reuse,
                                     auxiliary_name_scope=False) as scope:
        net, end_points = slim_inception.inception_v3_base(images, scope=scope)
        name_scope = net.op.name[: net.op.name.index("/Mixed_7c/") + 1]  # "InceptionV3/"
    with tf.compat.v1.variable_scope(scope, reuse=reuse, auxiliary_name_scope=False), \
            tf.name_scope(name_scope):
        aux = None
        if aux_logits:
            if end_points["Mixed_6e"].shape[1] < 5:
                raise BackendError("tf_slim inception_v3 with aux_logits needs image_size >= 107 px "
                                   "(its AuxLogits pools 5x5 after Mixed_6e); use a larger "
                                   "--image-size or turn aux_logits off")
            with tf.compat.v1.variable_scope("AuxLogits"):
                aux = _inception_aux_head(end_points["Mixed_6e"], num_classes)
        with tf.compat.v1.variable_scope("Logits"):
            # slim's inception_v3 drops out as Dropout_1b (keep_prob 0.8 by default)
            logits, pooled = new_head(net, num_classes, hidden_units, dropout, dropout_training,
                                      "Dropout_1b")
    return logits, pooled, aux, end_points


def resnet_v1_50(images, num_classes, hidden_units, aux_logits, reuse, dropout=0.0,
                 dropout_training=False):
    """``resnet_v1_50(num_classes=None)`` (pooled features) + the head as resnet_v1_50/logits."""
    net, end_points = resnet_v1.resnet_v1_50(images, num_classes=None, is_training=None,
                                             global_pool=True, reuse=reuse, scope="resnet_v1_50")
    name_scope = net.op.name.rsplit("/", 1)[0] + "/"  # the net's own: "resnet_v1_50/"
    with tf.compat.v1.variable_scope("resnet_v1_50", reuse=reuse, auxiliary_name_scope=False), \
            tf.name_scope(name_scope), tf.compat.v1.variable_scope("logits") as logits_scope:
        net_h = slim.dropout(net, keep_prob=1.0 - dropout, is_training=dropout_training,
                             scope="dropout") if dropout else net
        if hidden_units > 0:
            net_h = slim.conv2d(net_h, hidden_units, [1, 1], activation_fn=tf.nn.relu,
                                normalizer_fn=None, scope="hidden")
        # slim's own name for the ResNet classifier: resnet_v1_50/logits/{weights,biases}
        # (the scope object: variables in it, ops in a name scope below it)
        logits = slim.conv2d(net_h, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                             scope=logits_scope)
    return tf.squeeze(logits, [1, 2]), tf.squeeze(net, [1, 2]), None, end_points


def vgg_16(images, num_classes, hidden_units, aux_logits, reuse, dropout=0.0,
           dropout_training=False):
    """slim's ``vgg_16`` convolutions (``conv1`` .. ``conv5``, each ``slim.repeat``-ed, and
    ``pool1`` .. ``pool5``, as ``tf_slim.nets.vgg`` builds them), the global average pool of
    ``pool5`` (512-d) and the new head under ``vgg_16/Logits``.

    tf_slim's ``vgg_16()`` always builds the original classifier, fc6 .. fc8, as
    convolutions (fc6 a 7x7 VALID convolution of pool5, so it needs 224 px); the suite's
    model has no fc6 .. fc8, so the blocks are rebuilt here with slim's scopes, which keeps
    an official ``vgg_16.ckpt`` loadable (its fc6 .. fc8 are left unread). VGG has no
    auxiliary head: ``aux_logits`` is accepted for the net-function signature.
    """
    end_points = {}
    with tf.compat.v1.variable_scope("vgg_16", [images], reuse=reuse):
        net = images
        for block, (depth, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3),
                                                (512, 3)), 1):
            net = slim.repeat(net, convs, slim.conv2d, depth, [3, 3], scope=f"conv{block}")
            net = end_points[f"pool{block}"] = slim.max_pool2d(net, [2, 2], scope=f"pool{block}")
        with tf.compat.v1.variable_scope("Logits"):
            logits, pooled = new_head(net, num_classes, hidden_units, dropout, dropout_training,
                                      "Dropout")
    return logits, pooled, None, end_points


def efficientnet_lite0_arg_scope(weight_decay=0.00004, batch_norm_decay=0.99,
                                batch_norm_epsilon=1e-3):
    """EfficientNet-Lite0's arg_scope, in the style of slim's ``mobilenet_v1_arg_scope``:
    ``slim.conv2d`` and ``slim.separable_conv2d`` followed by ``slim.batch_norm`` *with*
    scale (gamma; epsilon 1e-3, TensorFlow's EfficientNet) and ReLU6, TensorFlow SAME
    padding; L2 weight decay on the convolutions, not on the depthwise ones (mobilenet's
    ``regularize_depthwise=False``)."""
    batch_norm_params = {"decay": batch_norm_decay, "epsilon": batch_norm_epsilon,
                         "scale": True, "center": True,
                         "updates_collections": tf.compat.v1.GraphKeys.UPDATE_OPS}
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], padding="SAME",
                        weights_initializer=slim.variance_scaling_initializer(),
                        activation_fn=tf.nn.relu6, normalizer_fn=slim.batch_norm,
                        normalizer_params=batch_norm_params):
        with slim.arg_scope([slim.conv2d],
                            weights_regularizer=slim.l2_regularizer(weight_decay)):
            with slim.arg_scope([slim.separable_conv2d], weights_regularizer=None) as sc:
                return sc


def efficientnet_lite0(images, num_classes, hidden_units, aux_logits, reuse, dropout=0.0,
                       dropout_training=False):
    """EfficientNet-Lite0 from the stage table of ``common.models.EFFICIENTNET_LITE0``, in
    slim's idiom (slim has no EfficientNet): ``slim.conv2d`` for the stem, the 1x1
    ``expand`` and ``project`` convolutions (``project`` without activation) and the ``top``
    convolution; ``slim.separable_conv2d(num_outputs=None)``, a depthwise convolution, for
    ``dwconv``; each MBConv block under its own scope (``EfficientNetLite0/block2a``), its
    output an end point of that name; then the new head under ``EfficientNetLite0/Logits``.
    No auxiliary head: ``aux_logits`` is accepted for the net-function signature."""
    spec = EFFICIENTNET_LITE0
    end_points = {}
    with tf.compat.v1.variable_scope("EfficientNetLite0", [images], reuse=reuse):
        net = end_points["stem"] = slim.conv2d(images, spec.stem_channels, [3, 3], stride=2,
                                               scope="stem")
        cin = spec.stem_channels
        for s, stage in enumerate(spec.stages, 1):
            for r in range(stage.repeats):
                name, stride = f"block{s}{chr(ord('a') + r)}", stage.stride if r == 0 else 1
                with tf.compat.v1.variable_scope(name):
                    y = net
                    if stage.expand != 1:
                        y = slim.conv2d(y, cin * stage.expand, [1, 1], scope="expand")
                    y = slim.separable_conv2d(y, None, [stage.kernel, stage.kernel],
                                              depth_multiplier=1, stride=stride, scope="dwconv")
                    y = slim.conv2d(y, stage.channels, [1, 1], activation_fn=None,
                                    scope="project")
                    net = net + y if stride == 1 and cin == stage.channels else y
                end_points[name] = net
                cin = stage.channels
        net = end_points["top"] = slim.conv2d(net, spec.top_channels, [1, 1], scope="top")
        with tf.compat.v1.variable_scope("Logits"):
            logits, pooled = new_head(net, num_classes, hidden_units, dropout, dropout_training,
                                      "Dropout")
    return logits, pooled, None, end_points


def arg_scope(entry: ModelEntry, weight_decay) -> dict:
    """The model's own arg_scope (slim's ``arg_scopes_map``) with the suite's BN decay
    (a net without BatchNorm has an arg_scope factory without ``batch_norm_decay``)."""
    module, _, function = entry.arg_scope.partition(":")
    factory = getattr(importlib.import_module(module), function)
    if "batch_norm_decay" in inspect.signature(factory).parameters:
        return factory(weight_decay=weight_decay, batch_norm_decay=BATCH_NORM_DECAY)
    return factory(weight_decay=weight_decay)


def normalizes_convolutions(scope: dict) -> bool:
    """Whether an arg_scope gives ``slim.conv2d`` a ``normalizer_fn`` (batch_norm)."""
    return bool(scope.get(slim.arg_scope_func_key(slim.conv2d), {}).get("normalizer_fn"))


def block_scopes(entry: ModelEntry, blocks, aux_logits: bool = True) -> tuple[str, ...]:
    """The variable scopes of canonical ``blocks`` (``"head"`` included)."""
    return tuple(s for block in blocks for s in native_scopes(entry, block, aux_logits))


def build_tower(spec: ModelSpec, entry: ModelEntry, images: tf.Tensor, num_classes: int, *,
                hidden_units: int,
                aux_logits: bool, weight_decay: tf.Variable, training_blocks=(),
                training_scopes=None, dropout: float = 0.0, dropout_training: bool = False,
                reuse: bool = False) -> Tower:
    """One call of ``spec``'s slim net in its arg_scope; BN trains in ``training_scopes``
    (default: the scopes of ``training_blocks``); ``dropout`` before the classifier, active
    when ``dropout_training``.

    ``weight_decay`` (a variable, so phases can change it) is the scale of slim's
    ``l2_regularizer`` in the arg_scope; the regularization losses land in
    ``REGULARIZATION_LOSSES`` when the first tower creates the variables.
    """
    net_fn = entry.resolve_constructor()
    scopes = tuple(training_scopes) if training_scopes is not None else \
        block_scopes(entry, training_blocks)
    before = set(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))
    regularizers = set(tf.compat.v1.losses.get_regularization_losses())
    # only a recipe with dropout passes it: a net function without the argument still builds
    extra = {"dropout": dropout, "dropout_training": dropout_training} if dropout else {}
    scope = arg_scope(entry, weight_decay)
    # the net's batch_norm, if it has one, chooses is_training per scope
    normalizer = ({"normalizer_fn": scoped_batch_norm(scopes)}
                  if normalizes_convolutions(scope) else {})
    with slim.arg_scope(scope):
        # separable_conv2d too: EfficientNet-Lite0's depthwise convolutions are normalised
        with slim.arg_scope([slim.conv2d, slim.separable_conv2d], **normalizer):
            logits, features, aux, end_points = net_fn(images, num_classes, hidden_units,
                                                       aux_logits, reuse, **extra)
    update_ops = [op for op in tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
                  if op not in before]
    stray = [t.op.name for t in tf.compat.v1.losses.get_regularization_losses()
             if t not in regularizers and block_of(t.op.name, spec, entry) is None]
    if stray:  # weight decay is collected by scope (train.regularization_losses)
        raise BackendError(f"{entry.constructor}: the L2 regularizer {stray[0]} is outside the "
                           f"model's variable scopes; build the net so that its op names follow "
                           f"its variable scopes")
    return Tower(logits, features, aux, update_ops, scopes, end_points)


def bn_training_blocks(spec: ModelSpec, phase: Phase) -> tuple[str, ...]:
    """Blocks whose batch_norm runs with ``is_training=True`` in ``phase``'s train tower.

    ``bn = "frozen"``: only the blocks that train (and the head); ``"train"``: all;
    ``"inference"``: none (moving statistics everywhere, while the betas train).
    """
    if phase.bn == "train":
        return (*spec.blocks, HEAD)
    if phase.bn == "inference":
        return ()
    return (*phase.trainable_blocks(spec), HEAD)


def bn_training_scopes(spec: ModelSpec, entry: ModelEntry, phase: Phase,
                       trainable: tuple[str, ...], aux_logits: bool) -> tuple[str, ...]:
    """Scopes whose batch_norm runs with ``is_training=True`` in ``phase``'s train tower:
    ``bn_training_blocks``' scopes, or for ``bn = "frozen"`` the trainable scopes themselves
    (so a native ``trainable_scopes`` below a block trains only its own batch_norms)."""
    if phase.bn == "frozen":
        return tuple(trainable)
    return block_scopes(entry, bn_training_blocks(spec, phase), aux_logits)


def summary(spec: ModelSpec, entry: ModelEntry, variables, trainable_names=()) -> str:
    """Variable scopes per canonical block with variable and parameter counts."""
    trainable_names = set(trainable_names)
    lines = [f"{entry.constructor} (variable scopes per canonical block)", "",
             f"{'block':<10} {'scope':<34} {'variables':>9} {'params':>12} {'trainable':>12}"]
    for block in (*spec.blocks, HEAD):
        for scope in entry.native(block):
            vs = variables_in_scopes(variables, [scope])
            if not vs:
                continue
            params = [v for v in vs if not is_moving_statistic(v)]
            tr = [v for v in params if v.op.name in trainable_names]
            lines.append(f"{block:<10} {scope:<34} {len(vs):>9} {param_count(params):>12,} "
                         f"{param_count(tr):>12,}")
    params = [v for v in variables if not is_moving_statistic(v)]
    lines.append(f"{'total':<10} {'':<34} {len(variables):>9} {param_count(params):>12,} "
                 f"{param_count([v for v in params if v.op.name in trainable_names]):>12,}")
    return "\n".join(lines) + "\n"
