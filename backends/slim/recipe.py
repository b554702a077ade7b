"""The transfer recipe in slim's own words, as ``train_image_classifier.py`` writes it: a
new head, batch_norm's ``is_training`` per scope, restore without the head (``_get_init_fn``,
``--checkpoint_exclude_scopes``), freeze (``_get_variables_to_train``, ``--trainable_scopes``),
the optimizer (``_configure_optimizer``) in one train op, fit one epoch, predict.

Towers, clones, the nets, the loss and the bookkeeping around a phase are the adapter's
(docs/design.md, Layout). No other module of the backend is imported here: model.py and
train.py build on this one.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.base import BackendError
from backends.slim.compat import slim
from common.config import Fidelity, Phase


def in_scopes(name: str, scopes) -> bool:
    """``name`` is one of ``scopes`` or below one (as the script matches its scope flags)."""
    return any(name == s or name.startswith(s + "/") for s in scopes)


# -------------------------------------------------------- the model with a new head
def new_head(features: tf.Tensor, num_classes: int, hidden_units: int, dropout: float,
             dropout_training: bool, dropout_scope: str) -> tuple[tf.Tensor, tf.Tensor]:
    """The head on a feature map ``[B, H, W, C]``, in the caller's ``Logits`` scope: a global
    average pool (tf_slim 1.1's inception_v3 pools 8x8, global only up to 299 px), the recipe's
    dropout (train towers only), an optional ReLU layer, then slim's classifier, a 1x1 conv
    ``[1, 1, C, classes]``. Returns (logits, pooled)."""
    # --8<-- [start:new-head]
    pooled = tf.reduce_mean(features, [1, 2], keepdims=True, name="GlobalPool")
    net = slim.dropout(pooled, keep_prob=1.0 - dropout, is_training=dropout_training,
                       scope=dropout_scope) if dropout else pooled
    if hidden_units > 0:
        net = slim.conv2d(net, hidden_units, [1, 1], activation_fn=tf.nn.relu,
                          normalizer_fn=None, scope="Conv2d_1b_1x1")
    logits = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                         scope="Conv2d_1c_1x1")
    return tf.squeeze(logits, [1, 2], name="SpatialSqueeze"), tf.squeeze(pooled, [1, 2])
    # --8<-- [end:new-head]


def scoped_batch_norm(training_scopes):
    """A conv2d ``normalizer_fn``: slim.batch_norm, ``is_training`` per (the layer's) scope."""
    # --8<-- [start:batchnorm]
    def batch_norm(inputs, **params):
        scope = tf.compat.v1.get_variable_scope().name
        # slim: is_training=False means moving statistics and *no* update op;
        # PyTorch decides this per module with .eval(), Keras with training=False.
        params["is_training"] = in_scopes(scope, training_scopes)
        return slim.batch_norm(inputs, **params)
    # --8<-- [end:batchnorm]
    return batch_norm


# ------------------------------------------------------- restore without the head
def restore_without_head(session, checkpoint: str, variables, exclude_scopes, shapes: dict,
                         ignore_missing_vars: bool = False) -> tuple[list, list, list, list]:
    """The script's ``_get_init_fn``, run: restore ``variables`` outside ``exclude_scopes`` from
    ``checkpoint`` (``shapes``: its shapes by name); a missing or reshaped variable is a one-line
    error unless ``ignore_missing_vars``. Returns (restored, excluded, missing, mismatched)."""
    to_restore, missing, mismatched, excluded = [], [], [], []
    # --8<-- [start:restore-without-head]
    for v in variables:
        name = v.op.name
        if in_scopes(name, exclude_scopes):
            excluded.append(name)
        elif name not in shapes:
            missing.append(name)
        elif list(shapes[name]) != v.shape.as_list():
            mismatched.append(name)
        else:
            to_restore.append(v)
    # --8<-- [end:restore-without-head]
    if (missing or mismatched) and not ignore_missing_vars:
        what = (f"{len(mismatched)} variable(s) of another shape, e.g. {mismatched[0]} "
                f"{list(shapes[mismatched[0]])} in the checkpoint") if mismatched else \
            f"{len(missing)} variable(s) the model needs are missing, e.g. {missing[0]}"
        raise BackendError(f"checkpoint {checkpoint!r} does not fit this model: {what}; pass "
                           f"--ignore-missing-vars (slim's --ignore_missing_vars) to keep their "
                           f"initial values")
    if to_restore:
        # --8<-- [start:restore-without-head]
        init_fn = slim.assign_from_checkpoint_fn(checkpoint, to_restore,
                                                 ignore_missing_vars=ignore_missing_vars)
        init_fn(session)
        # --8<-- [end:restore-without-head]
    return to_restore, excluded, missing, mismatched


# ------------------------------------------------------------- freeze / unfreeze
def get_variables_to_train(variables, trainable_scopes) -> list:
    """The script's ``_get_variables_to_train``: the trainable variables of the scopes, in order."""
    # --8<-- [start:freeze]
    # --trainable_scopes: only these variables reach the optimizer, the others stay frozen
    variables_to_train = [v for v in variables
                          if v.trainable and in_scopes(v.op.name, trainable_scopes)]
    # --8<-- [end:freeze]
    return variables_to_train


# ------------------------------------------------------------------ the optimizer
class RMSPropSlotFromZero(tf.compat.v1.train.RMSPropOptimizer):
    """TF1's RMSProp with its mean-square slot ``rms`` from 0 (torch, Keras 3) instead of 1.0
    (``fidelity.rmsprop = "aligned"``), through the slot hook ``_create_slots``."""

    def _create_slots(self, var_list):
        for v in var_list:
            self._zeros_slot(v, "rms", self._name)
            if self._centered:
                self._zeros_slot(v, "mg", self._name)
            self._zeros_slot(v, "momentum", self._name)


#: the optimizer's name in its slots' variable names (``phase0_Momentum``)
OPTIMIZER_NAMES = {"sgd": "SGD", "momentum": "Momentum", "rmsprop": "RMSProp", "adam": "Adam",
                   "adamw": "AdamW"}


def configure_optimizer(name: str, learning_rate, phase: Phase, op_name: str,
                        fidelity: Fidelity = Fidelity()) -> tf.compat.v1.train.Optimizer:
    """The script's ``_configure_optimizer`` with the common recipe's hyperparameters."""
    m = phase.effective_momentum
    if name == "sgd" and m == 0:
        return tf.compat.v1.train.GradientDescentOptimizer(learning_rate, name=op_name)
    if name in ("sgd", "momentum"):
        # momentum folded into the step as lr * velocity (PyTorch applies lr after the buffer)
        return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=m, name=op_name)
    if name == "rmsprop":
        # the recipe's values, not the flags' defaults (--rmsprop_decay=0.9 --opt_epsilon=1.0);
        # TF1 adds epsilon inside the sqrt (Keras 3; torch: outside), its slot starts at 1.0
        cls = RMSPropSlotFromZero if fidelity.aligned("rmsprop") else \
            tf.compat.v1.train.RMSPropOptimizer
        return cls(learning_rate, decay=phase.rmsprop_rho, momentum=m, epsilon=phase.epsilon,
                   name=op_name)
    if name in ("adam", "adamw"):
        # TF1 Adam uses the "epsilon hat" form (eps added after bias correction of lr); aligned:
        # betas, eps in lr's dtype (TF makes a Python float float32, even in a float64 model)
        dtype = getattr(learning_rate, "dtype", tf.float32).base_dtype
        hyper = [tf.constant(x, dtype) if fidelity.aligned("adam") else x
                 for x in (0.9, 0.999, phase.epsilon)]  # beta1, beta2, epsilon
        return tf.compat.v1.train.AdamOptimizer(learning_rate, *hyper, name=op_name)
    raise BackendError(f"optimizer {name!r} is not supported by the slim backend; choose one of: "
                       f"sgd, momentum, rmsprop, adam, adamw")


def create_train_op(total_loss, variables_to_train: list, head_variables: list, phase: Phase, *,
                    learning_rate, global_step, update_ops: list, name: str,
                    colocate: bool = False, fidelity: Fidelity = Fidelity()):
    """The train op of ``phase`` over ``variables_to_train``, ``update_ops`` (BatchNorm's moving
    averages) first; a head lr multiplier: two optimizers in one op (PyTorch's param groups).
    Returns the op, the (variables, learning rate) groups and their optimizers."""
    slot_prefix = f"{name}_{OPTIMIZER_NAMES.get(phase.optimizer, phase.optimizer)}"
    # --8<-- [start:optimizer]
    head_ids = {id(v) for v in head_variables}
    backbone = [v for v in variables_to_train if id(v) not in head_ids]
    head = [v for v in variables_to_train if id(v) in head_ids]
    mult = phase.head_lr_multiplier
    groups = [(backbone + head, learning_rate)] if mult == 1 or not backbone or not head else \
        [(backbone, learning_rate), (head, learning_rate * mult)]
    optimizers = [configure_optimizer(phase.optimizer, lr, phase,
                                      slot_prefix + (f"_{i}" if i else ""), fidelity)
                  for i, (_, lr) in enumerate(groups)]
    if len(groups) == 1 and phase.optimizer != "adamw":
        # the slim idiom: update_ops run before the gradient step, loss returned
        train_op = slim.learning.create_train_op(
            total_loss, optimizers[0], global_step=global_step, update_ops=update_ops,
            variables_to_train=groups[0][0], colocate_gradients_with_ops=colocate)
    # --8<-- [end:optimizer]
    else:
        train_op = _grouped_train_op(total_loss, groups, optimizers, update_ops, phase,
                                     global_step, colocate=colocate,
                                     decay_kernels_only=fidelity.aligned("weight_decay"))
    return train_op, groups, optimizers


def _grouped_train_op(total_loss, groups, optimizers, update_ops, phase, global_step,
                      colocate: bool = False, decay_kernels_only: bool = False):
    """create_train_op for several LR groups; AdamW decays before the step (every variable, as
    torch; kernels only with ``decay_kernels_only``, ``fidelity.weight_decay = "aligned"``)."""
    with tf.control_dependencies(update_ops):
        total_loss = tf.identity(total_loss)
    variables = [v for vs, _ in groups for v in vs]
    grads = tf.compat.v1.gradients(total_loss, variables, colocate_gradients_with_ops=colocate)
    deps = [g for g in grads if g is not None]
    if phase.optimizer == "adamw" and phase.weight_decay > 0:
        # PyTorch AdamW order: p *= 1 - lr * wd, then the Adam step (on the same gradients)
        with tf.control_dependencies(deps):
            deps = [v.assign_sub(lr * phase.weight_decay * v, read_value=False)
                    for vs, lr in groups for v in vs
                    if not (decay_kernels_only and v.shape.ndims <= 1)]
    applies, start = [], 0
    with tf.control_dependencies(deps):
        for i, ((vs, _), opt) in enumerate(zip(groups, optimizers)):
            pairs = [(g, v) for g, v in zip(grads[start:start + len(vs)], vs) if g is not None]
            start += len(vs)
            applies.append(opt.apply_gradients(pairs, global_step=global_step if i == 0 else None))
    with tf.control_dependencies(applies):
        return tf.identity(total_loss, name="train_op")


# ------------------------------------------------------------ fit one phase, predict
def train_one_epoch(session: tf.compat.v1.Session, step, initializer, feed: dict,
                    on_step=lambda loss: None) -> tuple[float, float, int]:
    """``slim.learning.train``'s loop of ``step`` cut at the epoch's end: (loss, top-1, images)."""
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
        on_step(float(batch_loss) / max(int(n), 1))
    if images == 0:
        raise BackendError("the training split is empty")
    if not np.isfinite(loss_sum):
        raise BackendError("training diverged: the loss is inf or nan (lower the learning rate)")
    return loss_sum / images, correct / images, images


def predict(session: tf.compat.v1.Session, initializer, outputs: tf.Tensor,
            on_batch=lambda: None) -> list[np.ndarray]:
    """One pass of an eval iterator through ``outputs`` of the eval tower; per batch."""
    # --8<-- [start:predict]
    # the eval tower: built with is_training=False everywhere (moving statistics, no dropout)
    session.run(initializer)
    batches = []
    while True:
        try:
            batches.append(session.run(outputs))
        except tf.errors.OutOfRangeError:
            return batches
    # --8<-- [end:predict]
        on_batch()
