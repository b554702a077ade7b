"""Phases in the vocabulary of slim's ``train_image_classifier.py``.

A common ``Phase`` becomes that script's flags: ``--trainable_scopes``
(-> ``variables_to_train``), ``--optimizer`` with its hyperparameter flags,
``--learning_rate`` / ``--learning_rate_decay_type``, ``--label_smoothing``,
``--weight_decay`` (the L2 ``weights_regularizer`` of the arg_scope, whose
terms are collected by scope: ``tf.compat.v1.losses.get_regularization_losses``);
the train op is ``slim.learning.create_train_op`` over ``variables_to_train``
with the tower's UPDATE_OPS as control dependencies. ``train_one_epoch`` is
the loop that ``slim.learning.train`` would run, cut at the end of the epoch.
``train_image_classifier_flags`` writes the phase as that script's command
line, and lists what of the phase the script has no flag for.

``--moving_average_decay`` is not implemented (the driver's best-on-val
checkpoint would need the averaged variables swapped in).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from backends.base import BackendError
from backends.slim.compat import slim
from backends.slim.model import Tower
from common.config import Fidelity, Phase

# The values train_image_classifier.py accepts (tensorflow/models research/slim):
# --optimizer (_configure_optimizer) and --learning_rate_decay_type (_configure_learning_rate).
SCRIPT_OPTIMIZERS = ("adadelta", "adagrad", "adam", "ftrl", "momentum", "sgd", "rmsprop")
SCRIPT_DECAY_TYPES = ("fixed", "exponential", "polynomial")


class RMSPropSlotFromZero(tf.compat.v1.train.RMSPropOptimizer):
    """TF1's ``RMSPropOptimizer`` whose mean-square slot ``rms`` starts at 0, as torch's and
    Keras 3's do, instead of 1.0 (``fidelity.rmsprop = "aligned"``): ``_create_slots``, the
    hook a ``tf.compat.v1.train.Optimizer`` subclass overrides to make its slots."""

    def _create_slots(self, var_list):
        for v in var_list:
            self._zeros_slot(v, "rms", self._name)
            if self._centered:
                self._zeros_slot(v, "mg", self._name)
            self._zeros_slot(v, "momentum", self._name)


def configure_optimizer(name: str, learning_rate, phase: Phase, op_name: str,
                        fidelity: Fidelity = Fidelity()) -> tuple[tf.compat.v1.train.Optimizer, str]:
    """slim's ``_configure_optimizer`` with the common recipe's hyperparameters.

    Returns the optimizer and how it was constructed (for the phase report).
    """
    m = phase.effective_momentum
    if name == "sgd" and m == 0:
        return (tf.compat.v1.train.GradientDescentOptimizer(learning_rate, name=op_name),
                "tf.compat.v1.train.GradientDescentOptimizer()")
    if name in ("sgd", "momentum"):
        # momentum folded into the step as lr * velocity (PyTorch applies lr after the buffer)
        return (tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=m, name=op_name),
                f"tf.compat.v1.train.MomentumOptimizer(momentum={m})")
    if name == "rmsprop":
        # slim's flags default to --rmsprop_decay=0.9 --opt_epsilon=1.0; the recipe's values
        # are used. TF1 RMSProp adds epsilon inside the sqrt (as Keras 3; PyTorch: outside)
        # and starts its mean-square slot at 1.0 (PyTorch and Keras 3: 0.0).
        cls = RMSPropSlotFromZero if fidelity.aligned("rmsprop") else \
            tf.compat.v1.train.RMSPropOptimizer
        return (cls(learning_rate, decay=phase.rmsprop_rho, momentum=m, epsilon=phase.epsilon,
                    name=op_name),
                f"{'RMSPropSlotFromZero' if cls is RMSPropSlotFromZero else 'tf.compat.v1.train.RMSPropOptimizer'}"
                f"(decay={phase.rmsprop_rho}, momentum={m}, epsilon={phase.epsilon})")
    if name in ("adam", "adamw"):
        # TF1 Adam uses the "epsilon hat" form (eps added after bias correction of lr)
        opt = tf.compat.v1.train.AdamOptimizer(learning_rate, beta1=0.9, beta2=0.999,
                                               epsilon=phase.epsilon, name=op_name)
        desc = f"tf.compat.v1.train.AdamOptimizer(epsilon={phase.epsilon})"
        if name == "adamw":
            desc += f" + decoupled weight decay {phase.weight_decay} (w -= lr * wd * w)"
        return opt, desc
    raise BackendError(f"optimizer {name!r} is not supported by the slim backend; choose one of: "
                       f"sgd, momentum, rmsprop, adam, adamw")


def script_optimizer(phase: Phase) -> str:
    """The ``--optimizer`` of train_image_classifier.py that ``configure_optimizer`` builds."""
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
    optimizer: str
    variables: list = field(default_factory=list)  # variables the optimizer created (slots...)
    trained: list = field(default_factory=list)    # variables the step updates
    compute_dtype: str = "float32"                 # dtype of the tower's logits


def classification_loss(tower: Tower, labels: tf.Tensor, num_classes: int,
                        label_smoothing: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean main-head loss, per-image loss) as in train_image_classifier.py.

    ``softmax_cross_entropy(onehot, logits, label_smoothing)``; the aux head adds
    the same loss with weight 0.4. ``loss_collection=None`` because several
    towers share one graph (``tf.losses.get_total_loss`` would sum them all).
    """
    onehot = tf.one_hot(labels, num_classes)
    per_image = tf.compat.v1.losses.softmax_cross_entropy(
        onehot, tower.logits, label_smoothing=label_smoothing, loss_collection=None,
        reduction=tf.compat.v1.losses.Reduction.NONE)
    loss = tf.reduce_mean(per_image)
    if tower.aux_logits is not None:
        loss += tf.compat.v1.losses.softmax_cross_entropy(
            onehot, tower.aux_logits, label_smoothing=label_smoothing, weights=0.4,
            loss_collection=None)
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
    gradients of ``variables_to_train`` -> update.

    ``head_lr_multiplier != 1``: two optimizers (backbone at lr, head at lr * mult)
    grouped in one op, the slim counterpart of PyTorch param groups. ``clones``: the
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
    # --8<-- [start:optimizer]
    head_ids = {id(v) for v in head_variables}
    backbone = [v for v in variables_to_train if id(v) not in head_ids]
    head = [v for v in variables_to_train if id(v) in head_ids]
    mult = phase.head_lr_multiplier
    groups = [(backbone + head, learning_rate)] if mult == 1 or not backbone or not head else \
        [(backbone, learning_rate), (head, learning_rate * mult)]
    optimizers, descriptions = [], []
    for i, (_, lr) in enumerate(groups):
        opt, desc = configure_optimizer(phase.optimizer, lr, phase,
                                        f"{name}_{type_name(phase)}" + (f"_{i}" if i else ""),
                                        fidelity)
        optimizers.append(opt)
        descriptions.append(desc)

    if len(groups) == 1 and phase.optimizer != "adamw":
        # the slim idiom: update_ops run before the gradient step, loss returned
        train_op = slim.learning.create_train_op(
            total_loss, optimizers[0], global_step=global_step, update_ops=tower.update_ops,
            variables_to_train=groups[0][0], colocate_gradients_with_ops=bool(clones))
    # --8<-- [end:optimizer]
    else:
        train_op = _grouped_train_op(total_loss, groups, optimizers, tower.update_ops, phase,
                                     global_step, colocate=bool(clones),
                                     decay_kernels_only=fidelity.aligned("weight_decay"))
    predictions = tf.argmax(tower.logits, axis=1)
    description = descriptions[0] if len(groups) == 1 else \
        f"{descriptions[0]} on backbone; x{mult} learning rate on head"
    return TrainOp(
        train_op=train_op,
        loss_sum=tf.reduce_sum(per_image),
        correct=tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int64)),
        count=tf.shape(labels)[0],
        update_ops=list(tower.update_ops),
        optimizer=description,
        variables=[v for v in tf.compat.v1.global_variables() if v not in before],
        trained=[v for vs, _ in groups for v in vs],
        compute_dtype=tower.logits.dtype.name,
    )


def type_name(phase: Phase) -> str:
    return {"sgd": "SGD", "momentum": "Momentum", "rmsprop": "RMSProp", "adam": "Adam",
            "adamw": "AdamW"}.get(phase.optimizer, phase.optimizer)


def _grouped_train_op(total_loss, groups, optimizers, update_ops, phase, global_step,
                      colocate: bool = False, decay_kernels_only: bool = False):
    """create_train_op for several LR groups, with AdamW's decoupled decay before the step
    (on every trained variable, as torch's AdamW; on kernels only when ``decay_kernels_only``,
    ``fidelity.weight_decay = "aligned"``)."""
    with tf.control_dependencies(update_ops):
        total_loss = tf.identity(total_loss)
    variables = [v for vs, _ in groups for v in vs]
    grads = tf.compat.v1.gradients(total_loss, variables, colocate_gradients_with_ops=colocate)
    deps = [g for g in grads if g is not None]
    if phase.optimizer == "adamw" and phase.weight_decay > 0:
        # PyTorch AdamW order: p *= 1 - lr * wd, then the Adam step (on the same gradients)
        decays = []
        with tf.control_dependencies(deps):
            for vs, lr in groups:
                for v in vs:
                    if decay_kernels_only and v.shape.ndims <= 1:
                        continue
                    decays.append(v.assign_sub(lr * phase.weight_decay * v, read_value=False))
        deps = decays
    applies = []
    start = 0
    with tf.control_dependencies(deps):
        for i, ((vs, _), opt) in enumerate(zip(groups, optimizers)):
            pairs = [(g, v) for g, v in zip(grads[start:start + len(vs)], vs) if g is not None]
            start += len(vs)
            applies.append(opt.apply_gradients(pairs, global_step=global_step if i == 0 else None))
    with tf.control_dependencies(applies):
        return tf.identity(total_loss, name="train_op")


def train_one_epoch(session: tf.compat.v1.Session, step: TrainOp, initializer, feed: dict,
                    on_step=None) -> dict:
    """Run ``step`` until the train iterator is exhausted; ``{loss, top1, images, seconds}``."""
    t0 = time.perf_counter()
    # --8<-- [start:fit]
    session.run(initializer, feed_dict=feed)  # feed only the epoch seed, once per epoch
    loss_sum, correct, images = 0.0, 0, 0
    while True:
        try:
            _, batch_loss, batch_correct, n = session.run(
                [step.train_op, step.loss_sum, step.correct, step.count])
    # --8<-- [end:fit]
        # --8<-- [start:fit]
        except tf.errors.OutOfRangeError:
            break
        # --8<-- [end:fit]
        except tf.errors.InvalidArgumentError as err:  # create_train_op's check_numerics
            if "nan" not in str(err).lower():
                raise
            raise BackendError("training diverged: the loss is inf or nan "
                               "(lower the learning rate)") from None
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
        images += int(n)
        if on_step is not None:
            on_step(float(batch_loss) / max(int(n), 1))
    if images == 0:
        raise BackendError("the training split is empty")
    if not np.isfinite(loss_sum):
        raise BackendError("training diverged: the loss is inf or nan (lower the learning rate)")
    return {"loss": loss_sum / images, "top1": correct / images, "images": images,
            "seconds": time.perf_counter() - t0}
