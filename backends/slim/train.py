"""Phases in the vocabulary of slim's ``train_image_classifier.py``.

A common ``Phase`` becomes that script's flags: ``--trainable_scopes``
(-> ``variables_to_train``), ``--optimizer`` with its hyperparameter flags,
``--learning_rate`` / ``--learning_rate_decay_type``, ``--label_smoothing``,
``--weight_decay`` (the L2 ``weights_regularizer`` of the arg_scope); the
train op is ``slim.learning.create_train_op`` over ``variables_to_train``
with the tower's UPDATE_OPS as control dependencies. ``train_one_epoch`` is
the loop that ``slim.learning.train`` would run, cut at the end of the epoch.

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
from common.config import Phase

# slim's default hyperparameters for the optimizers that common recipes cannot
# select (train_image_classifier.py flags); kept so the vocabulary is complete.
SLIM_ONLY_OPTIMIZERS = {
    "adadelta": lambda lr: tf.compat.v1.train.AdadeltaOptimizer(lr, rho=0.95, epsilon=1.0),
    "adagrad": lambda lr: tf.compat.v1.train.AdagradOptimizer(lr, initial_accumulator_value=0.1),
    "ftrl": lambda lr: tf.compat.v1.train.FtrlOptimizer(
        lr, learning_rate_power=-0.5, initial_accumulator_value=0.1,
        l1_regularization_strength=0.0, l2_regularization_strength=0.0),
}

# common schedule -> slim's --learning_rate_decay_type. The value for each epoch
# comes from common.schedule (assigned to the learning-rate variable), so the
# schedule is the same in every backend; slim 1.x has no cosine decay type.
LEARNING_RATE_DECAY_TYPE = {
    "fixed": "fixed",
    "exponential": "exponential",  # --learning_rate_decay_factor = phase.decay_rate per epoch
    "cosine": "cosine (not a slim 1.x decay type: common.schedule values per epoch)",
}


def configure_optimizer(name: str, learning_rate, phase: Phase,
                        op_name: str) -> tuple[tf.compat.v1.train.Optimizer, str]:
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
        return (tf.compat.v1.train.RMSPropOptimizer(learning_rate, decay=phase.rmsprop_rho,
                                                    momentum=m, epsilon=phase.epsilon, name=op_name),
                f"tf.compat.v1.train.RMSPropOptimizer(decay={phase.rmsprop_rho}, momentum={m}, "
                f"epsilon={phase.epsilon})")
    if name in ("adam", "adamw"):
        # TF1 Adam uses the "epsilon hat" form (eps added after bias correction of lr)
        opt = tf.compat.v1.train.AdamOptimizer(learning_rate, beta1=0.9, beta2=0.999,
                                               epsilon=phase.epsilon, name=op_name)
        desc = f"tf.compat.v1.train.AdamOptimizer(epsilon={phase.epsilon})"
        if name == "adamw":
            desc += f" + decoupled weight decay {phase.weight_decay} (w -= lr * wd * w)"
        return opt, desc
    if name in SLIM_ONLY_OPTIMIZERS:
        opt = SLIM_ONLY_OPTIMIZERS[name](learning_rate)
        return opt, f"tf.compat.v1.train.{type(opt).__name__} (slim defaults)"
    raise BackendError(f"optimizer {name!r} is not supported by the slim backend; choose one of: "
                       f"sgd, momentum, rmsprop, adam, adamw, {', '.join(SLIM_ONLY_OPTIMIZERS)}")


def slim_flags(phase: Phase, trainable: tuple[str, ...], exclude: tuple[str, ...]) -> dict:
    """The ``train_image_classifier.py`` flags this phase corresponds to."""
    flags = {
        "trainable_scopes": ",".join(trainable),
        "checkpoint_exclude_scopes": ",".join(exclude),
        "optimizer": "momentum" if phase.optimizer == "sgd" and phase.effective_momentum else
                     phase.optimizer,
        "learning_rate": phase.learning_rate,
        "learning_rate_decay_type": LEARNING_RATE_DECAY_TYPE[phase.schedule],
        "label_smoothing": phase.label_smoothing,
        "weight_decay": 0.0 if phase.optimizer == "adamw" else phase.weight_decay,
        "opt_epsilon": phase.epsilon,
    }
    if phase.schedule == "exponential":
        flags["learning_rate_decay_factor"] = phase.decay_rate
        flags["num_epochs_per_decay"] = 1
    if phase.optimizer in ("sgd", "momentum"):
        flags["momentum"] = phase.effective_momentum
    if phase.optimizer == "rmsprop":
        flags.update(rmsprop_decay=phase.rmsprop_rho, rmsprop_momentum=phase.effective_momentum)
    return flags


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


def regularization_losses(variables_to_train) -> list[tf.Tensor]:
    """The arg_scope's L2 ``weights_regularizer`` terms of the variables that train.

    slim's l2_regularizer(wd) is ``wd * sum(w**2) / 2``: the same gradient as PyTorch's
    ``weight_decay=wd`` (Keras' ``L2(wd)`` has no 1/2). Only conv/fc weights carry one:
    biases and BN beta are not decayed.
    """
    names = {v.op.name for v in variables_to_train}
    return [r for r in tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES)
            if _regularized_variable(r) in names]


def _regularized_variable(loss: tf.Tensor) -> str | None:
    """Name of the variable a regularizer term reads: ``scale * l2_loss(w)``, followed
    through the graph (the term's op name says ``kernel``, the legacy-layer name,
    where the variable is slim's ``weights``)."""

    def upstream(op, wanted, depth=4):
        frontier = [op]
        for _ in range(depth):
            for o in frontier:
                if o.type in wanted:
                    return o
            frontier = [t.op for o in frontier for t in o.inputs]
        return None

    l2 = upstream(loss.op, ("L2Loss",))
    var = upstream(l2, ("VarHandleOp", "VariableV2")) if l2 is not None else None
    return var.name if var is not None else None


def build_train_op(tower: Tower, labels: tf.Tensor, num_classes: int, phase: Phase, *,
                   variables_to_train: list, head_variables: list, learning_rate: tf.Variable,
                   global_step: tf.Variable, name: str) -> TrainOp:
    """The train op of ``phase``: loss -> gradients of ``variables_to_train`` -> update.

    ``head_lr_multiplier != 1``: two optimizers (backbone at lr, head at lr * mult)
    grouped in one op, the slim counterpart of PyTorch param groups.
    """
    if not variables_to_train:
        raise BackendError(f"phase {phase.name!r} trains no variables")
    before = set(tf.compat.v1.global_variables())
    loss, per_image = classification_loss(tower, labels, num_classes, phase.label_smoothing)
    total_loss = loss
    if phase.weight_decay > 0 and phase.optimizer != "adamw":
        reg = regularization_losses(variables_to_train)
        if reg:
            total_loss = total_loss + tf.add_n(reg, name="regularization_loss")
    head_ids = {id(v) for v in head_variables}
    backbone = [v for v in variables_to_train if id(v) not in head_ids]
    head = [v for v in variables_to_train if id(v) in head_ids]
    mult = phase.head_lr_multiplier
    groups = [(backbone + head, learning_rate)] if mult == 1 or not backbone or not head else \
        [(backbone, learning_rate), (head, learning_rate * mult)]
    optimizers, descriptions = [], []
    for i, (_, lr) in enumerate(groups):
        opt, desc = configure_optimizer(phase.optimizer, lr, phase,
                                        f"{name}_{type_name(phase)}" + (f"_{i}" if i else ""))
        optimizers.append(opt)
        descriptions.append(desc)

    if len(groups) == 1 and phase.optimizer != "adamw":
        # the slim idiom: update_ops run before the gradient step, loss returned
        train_op = slim.learning.create_train_op(
            total_loss, optimizers[0], global_step=global_step, update_ops=tower.update_ops,
            variables_to_train=groups[0][0])
    else:
        train_op = _grouped_train_op(total_loss, groups, optimizers, tower.update_ops, phase,
                                     global_step)
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
    )


def type_name(phase: Phase) -> str:
    return {"sgd": "SGD", "momentum": "Momentum", "rmsprop": "RMSProp", "adam": "Adam",
            "adamw": "AdamW"}.get(phase.optimizer, phase.optimizer)


def _grouped_train_op(total_loss, groups, optimizers, update_ops, phase, global_step):
    """create_train_op for several LR groups, with AdamW's decoupled decay before the step."""
    with tf.control_dependencies(update_ops):
        total_loss = tf.identity(total_loss)
    variables = [v for vs, _ in groups for v in vs]
    grads = tf.gradients(total_loss, variables)
    deps = [g for g in grads if g is not None]
    if phase.optimizer == "adamw" and phase.weight_decay > 0:
        # PyTorch AdamW order: p *= 1 - lr * wd, then the Adam step (on the same gradients)
        decays = []
        with tf.control_dependencies(deps):
            for vs, lr in groups:
                for v in vs:
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
    session.run(initializer, feed_dict=feed)  # feed only the epoch seed, once per epoch
    loss_sum, correct, images = 0.0, 0, 0
    while True:
        try:
            _, batch_loss, batch_correct, n = session.run(
                [step.train_op, step.loss_sum, step.correct, step.count])
        except tf.errors.OutOfRangeError:
            break
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
