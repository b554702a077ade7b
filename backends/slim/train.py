"""Phases in the vocabulary of slim's ``train_image_classifier.py``.

A common ``Phase`` becomes that script's flags: ``--trainable_scopes``
(-> ``variables_to_train``), ``--optimizer`` with its hyperparameter flags,
``--learning_rate`` / ``--learning_rate_decay_type``, ``--label_smoothing``,
``--weight_decay`` (the L2 ``weights_regularizer`` of the arg_scope, whose
terms are collected by scope: ``tf.compat.v1.losses.get_regularization_losses``);
``build_train_op`` puts the loss of a tower (or of model_deploy's clones) under
``recipe.create_train_op``, ``slim.learning.create_train_op`` over
``variables_to_train`` with the tower's UPDATE_OPS as control dependencies; the
optimizers and the epoch loop are recipe.py's (docs/design.md, Layout).
``train_image_classifier_flags`` writes the phase as that script's command
line, and lists what of the phase the script has no flag for.

``--moving_average_decay`` is not implemented (the driver's best-on-val
checkpoint would need the averaged variables swapped in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf

from backends.base import BackendError
from backends.slim import recipe
from backends.slim.model import Tower
from common.config import Fidelity, Phase

# The values train_image_classifier.py accepts (tensorflow/models research/slim):
# --optimizer (_configure_optimizer) and --learning_rate_decay_type (_configure_learning_rate).
SCRIPT_OPTIMIZERS = ("adadelta", "adagrad", "adam", "ftrl", "momentum", "sgd", "rmsprop")
SCRIPT_DECAY_TYPES = ("fixed", "exponential", "polynomial")


def script_optimizer(phase: Phase) -> str:
    """The ``--optimizer`` of train_image_classifier.py that ``recipe.configure_optimizer``
    builds."""
    if phase.optimizer in ("sgd", "momentum"):
        # the script's "sgd" is GradientDescentOptimizer; SGD with momentum is "momentum"
        return "sgd" if phase.optimizer == "sgd" and not phase.effective_momentum else "momentum"
    if phase.optimizer == "adamw":
        return "adam"  # the script has no decoupled weight decay (listed as not expressed)
    return phase.optimizer


def train_image_classifier_flags(phase: Phase, trainable: tuple[str, ...],
                                 exclude: tuple[str, ...], *, frozen_bn_scopes: bool,
                                 ignore_missing_vars: bool = False) -> tuple[str, list[str]]:
    """``phase`` as a ``train_image_classifier.py`` command line, and what it leaves out.

    The command line has only that script's flags and values (``SCRIPT_OPTIMIZERS``,
    ``SCRIPT_DECAY_TYPES``). What the phase does that no flag says (a cosine schedule,
    warm-up, a head learning-rate multiplier, AdamW's decoupled decay, BatchNorm in
    inference mode in frozen scopes) is listed instead; an empty list means the command
    line trains the phase as the suite does.
    """
    optimizer = script_optimizer(phase)
    flags: dict[str, object] = {
        "trainable_scopes": ",".join(trainable),
        "checkpoint_exclude_scopes": ",".join(exclude),
        "optimizer": optimizer,
        "learning_rate": phase.learning_rate,
        "label_smoothing": phase.label_smoothing,
        "weight_decay": 0.0 if phase.optimizer == "adamw" else phase.weight_decay,
    }
    not_expressed = []
    if phase.schedule in ("fixed", "exponential"):
        flags["learning_rate_decay_type"] = phase.schedule
    else:
        not_expressed.append(f"schedule {phase.schedule!r}: the script's decay types are "
                             f"{', '.join(SCRIPT_DECAY_TYPES)}; the learning rate is set per epoch "
                             f"from common.schedule")
    if phase.schedule == "exponential":
        flags.update(learning_rate_decay_factor=phase.decay_rate,
                     num_epochs_per_decay=float(phase.decay_epochs))
    if phase.warmup_epochs:
        not_expressed.append(f"warmup_epochs {phase.warmup_epochs}: the script has no warm-up")
    if optimizer == "momentum":
        flags["momentum"] = phase.effective_momentum
    elif optimizer == "rmsprop":
        # the script's defaults are --rmsprop_momentum=0.9 --opt_epsilon=1.0: always given
        flags.update(rmsprop_decay=phase.rmsprop_rho, rmsprop_momentum=phase.effective_momentum,
                     opt_epsilon=phase.epsilon)
    elif optimizer == "adam":
        flags.update(adam_beta1=0.9, adam_beta2=0.999, opt_epsilon=phase.epsilon)
    if phase.optimizer == "adamw":
        not_expressed.append(f"adamw: decoupled weight decay {phase.weight_decay} "
                             f"(w -= lr * wd * w) before each Adam step; the script has no AdamW")
    if phase.head_lr_multiplier != 1:
        not_expressed.append(f"head_lr_multiplier {phase.head_lr_multiplier}: a second optimizer "
                             f"steps the head at that multiple of --learning_rate")
    if frozen_bn_scopes and phase.bn == "inference":
        not_expressed.append("batch_norm is_training=False everywhere (bn = \"inference\": moving "
                             "statistics, no update ops; the betas in --trainable_scopes still "
                             "train); the script builds is_training=True everywhere")
    elif frozen_bn_scopes:
        not_expressed.append("batch_norm is_training=False outside --trainable_scopes (moving "
                             "statistics, no update ops); the script builds is_training=True "
                             "everywhere")
    line = " ".join(f"--{k}={v}" for k, v in flags.items())
    if ignore_missing_vars:
        line += " --ignore_missing_vars"
    return line, not_expressed


@dataclass
class TrainOp:
    """What ``fit_epoch`` runs: the step op and the per-batch sums it reports."""

    train_op: tf.Tensor            # evaluates to the total loss after the update
    loss_sum: tf.Tensor            # summed main-head cross-entropy of the batch
    correct: tf.Tensor             # correct top-1 predictions in the batch
    count: tf.Tensor               # images in the batch
    update_ops: list
    optimizers: list               # one per learning-rate group (describe.optimizer_description)
    variables: list = field(default_factory=list)  # variables the optimizer created (slots...)
    trained: list = field(default_factory=list)    # variables the step updates
    compute_dtype: str = "float32"                 # dtype of the tower's logits


def softmax_cross_entropy(onehot: tf.Tensor, logits: tf.Tensor,
                          label_smoothing: float) -> tf.Tensor:
    """Per image, what ``tf.compat.v1.losses.softmax_cross_entropy(onehot, logits,
    label_smoothing=...)`` computes before it weights and reduces (the same label smoothing and
    kernel, bit-identical in float32), in the logits' dtype. The TF1 function's
    ``compute_weighted_loss`` casts the per-image losses to float32 and back, whatever their
    dtype: in a float64 model (``bench parity --train --dtype float64``) it rounded every
    loss and, through the cast's gradient, scaled every gradient by float32(1/B) * B, 1 +
    1.5e-8 at B = 5, which 3 steps of momentum with BatchNorm training amplified to 2.3e-3 in
    the stem (docs/design.md, Fidelity switches)."""
    labels = tf.cast(onehot, logits.dtype)
    if label_smoothing > 0:
        num_classes = tf.cast(tf.shape(labels)[-1], logits.dtype)
        labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=tf.stop_gradient(labels), logits=logits)


def classification_loss(tower: Tower, labels: tf.Tensor, num_classes: int,
                        label_smoothing: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean main-head loss, per-image loss) as in train_image_classifier.py.

    ``softmax_cross_entropy(onehot, logits, label_smoothing)`` (the TF1 loss without its
    float32 cast, above); the aux head adds the same loss with weight 0.4, summed over the
    batch and divided by its size as TF1's ``weights=0.4`` does. Not in the
    ``tf.GraphKeys.LOSSES`` collection because several towers share one graph
    (``tf.losses.get_total_loss`` would sum them all).
    """
    onehot = tf.one_hot(labels, num_classes)
    per_image = softmax_cross_entropy(onehot, tower.logits, label_smoothing)
    loss = tf.reduce_mean(per_image)
    if tower.aux_logits is not None:
        aux = softmax_cross_entropy(onehot, tower.aux_logits, label_smoothing)
        loss += tf.reduce_sum(aux * 0.4) / tf.cast(tf.size(aux), aux.dtype)
    return loss, per_image


def regularization_losses(trainable_scopes) -> list[tf.Tensor]:
    """The arg_scope's L2 ``weights_regularizer`` terms of the scopes that train.

    Collected by scope, as train_image_classifier.py's clones collect theirs:
    ``tf.compat.v1.losses.get_regularization_losses(scope)`` for each trained scope
    (terms of frozen weights would add nothing to the gradients of the trained ones).
    slim's l2_regularizer(wd) is ``wd * sum(w**2) / 2``: the same gradient as PyTorch's
    ``weight_decay=wd`` (Keras' ``L2(wd)`` has no 1/2). Only conv/fc weights carry one:
    biases and BN beta are not decayed.
    """
    return [loss for scope in trainable_scopes
            for loss in tf.compat.v1.losses.get_regularization_losses(scope=scope + "/")]


def build_train_op(tower: Tower, labels: tf.Tensor, num_classes: int, phase: Phase, *,
                   variables_to_train: list, trainable_scopes: tuple[str, ...],
                   head_variables: list, learning_rate: tf.Variable,
                   global_step: tf.Variable, name: str, clones: list | None = None,
                   fidelity: Fidelity = Fidelity()) -> TrainOp:
    """The train op of ``phase``: loss (+ the L2 terms of ``trainable_scopes``) ->
    ``recipe.create_train_op`` over ``variables_to_train`` (with a head learning-rate
    multiplier, two optimizers in one op). ``clones``: the
    ``(tower, labels)`` of each clone (``parallel.py``): model_deploy's loss, each
    clone's divided by their number and summed, gradients colocated with each clone's
    ops, BN update ops of the first clone only.
    """
    if not variables_to_train:
        raise BackendError(f"phase {phase.name!r} trains no variables")
    before = set(tf.compat.v1.global_variables())
    if clones:
        parts = [classification_loss(t, lab, num_classes, phase.label_smoothing) for t, lab in clones]
        loss = tf.add_n([clone_loss / len(clones) for clone_loss, _ in parts], name="clone_loss")
        per_image = tf.concat([p for _, p in parts], 0)
        tower = Tower(tf.concat([t.logits for t, _ in clones], 0), clones[0][0].features, None,
                      clones[0][0].update_ops)  # model_deploy: the first clone's update ops
        labels = tf.concat([lab for _, lab in clones], 0)
    else:
        loss, per_image = classification_loss(tower, labels, num_classes, phase.label_smoothing)
    total_loss = loss
    if phase.weight_decay > 0 and phase.optimizer != "adamw":
        reg = regularization_losses(trainable_scopes)
        if reg:
            total_loss = total_loss + tf.add_n(reg, name="regularization_loss")
    train_op, groups, optimizers = recipe.create_train_op(
        total_loss, variables_to_train, head_variables, phase, learning_rate=learning_rate,
        global_step=global_step, update_ops=tower.update_ops, name=name, colocate=bool(clones),
        fidelity=fidelity)
    predictions = tf.argmax(tower.logits, axis=1)
    return TrainOp(
        train_op=train_op,
        loss_sum=tf.reduce_sum(per_image),
        correct=tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int64)),
        count=tf.shape(labels)[0],
        update_ops=list(tower.update_ops),
        optimizers=optimizers,
        variables=[v for v in tf.compat.v1.global_variables() if v not in before],
        trained=[v for vs, _ in groups for v in vs],
        compute_dtype=tower.logits.dtype.name,
    )
