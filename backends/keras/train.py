"""Phases the Keras way: ``layer.trainable`` + ``compile``, optimizers, one epoch of ``fit``.

Keras idioms shown here:

* freezing is ``layer.trainable = False`` on the layers of frozen blocks, and
  the model is **recompiled** afterwards (compile builds the train function
  from the trainable weights of that moment);
* in Keras 3 a ``BatchNormalization`` layer with ``trainable=False`` always
  runs in inference mode (moving statistics, no updates), whatever
  ``training=`` says. PyTorch keeps the two apart (``requires_grad`` vs
  ``eval()``), and so does TF1/slim (trainable variables vs ``is_training``).
  ``bn = "frozen"`` is therefore just the Keras default. ``bn = "train"``
  (update the moving statistics of frozen BN layers, as torch's ``train()``
  does) keeps those BN *layers* trainable, so they normalise with batch
  statistics and update their moving averages, and freezes their gamma/beta
  *variables* (``variable.trainable = False``) so no weight moves;
* optimizers take ``learning_rate=`` (Keras 3 rejects ``lr=``) and have no
  param groups: ``ParamGroups`` subclasses the chosen optimizer and splits
  ``_backend_update_step`` into a backbone and a head call, the head's with
  ``learning_rate * head_lr_multiplier``, exactly what a torch param group does,
  for adaptive optimizers too (scaling the head's gradients would not be).
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import ops

from common.config import Phase

from .model import KerasModel, layer_range_text

OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "momentum": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
}

_PARAM_GROUP_CLASSES: dict[type, type] = {}


def with_param_groups(cls: type) -> type:
    """``cls`` with a head param group and torch-style weight decay.

    * head variables step with ``learning_rate * head_lr_multiplier``;
    * ``l2``: coupled weight decay, ``grad + l2 * w`` (torch's ``weight_decay=``
      for SGD/RMSprop/Adam; the gradient of an ``l2/2 * ||w||^2`` loss term),
      on every trained variable, biases and BN betas included, as in torch;
    * ``decoupled_weight_decay``: AdamW's ``w -= lr * wd * w`` with each group's
      own learning rate (Keras' built-in decay would use the base LR for both).
    """
    if cls in _PARAM_GROUP_CLASSES:
        return _PARAM_GROUP_CLASSES[cls]

    class ParamGroups(cls):
        def __init__(self, *, head_variables=(), head_lr_multiplier=1.0, l2=0.0,
                     decoupled_weight_decay=0.0, **kwargs):
            super().__init__(**kwargs)
            self.head_lr_multiplier = float(head_lr_multiplier)
            self.l2 = float(l2)
            self.decoupled_weight_decay = float(decoupled_weight_decay)
            self._head_keys = {self._var_key(v) for v in head_variables}

        def _apply_weight_decay(self, variables):
            """Decoupled decay is applied per group in ``_backend_update_step``."""

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            if self.l2:
                grads = [ops.add(g, ops.multiply(ops.cast(self.l2, g.dtype), v))
                         for g, v in zip(grads, trainable_variables)]
            backbone, head = ([], []), ([], [])
            for g, v in zip(grads, trainable_variables):
                group = head if self._var_key(v) in self._head_keys else backbone
                group[0].append(g)
                group[1].append(v)
            for (g_list, v_list), lr in ((backbone, learning_rate),
                                         (head, ops.multiply(learning_rate, self.head_lr_multiplier))):
                if not v_list:
                    continue
                if self.decoupled_weight_decay:
                    for v in v_list:
                        v.assign(v - v * ops.cast(lr * self.decoupled_weight_decay, v.dtype))
                super()._backend_update_step(g_list, v_list, lr)

    ParamGroups.__name__ = ParamGroups.__qualname__ = cls.__name__
    _PARAM_GROUP_CLASSES[cls] = ParamGroups
    return ParamGroups


def make_optimizer(phase: Phase, head_variables) -> tuple[keras.optimizers.Optimizer, str]:
    """The phase's optimizer and how it reads in Keras (for the phase report)."""
    m = phase.effective_momentum
    # Keras 3 spells it learning_rate=; lr= raises (Keras 2 and torch take lr=).
    if phase.optimizer in ("sgd", "momentum"):
        kwargs = {"learning_rate": phase.learning_rate, "momentum": m}
    elif phase.optimizer == "rmsprop":
        kwargs = {"learning_rate": phase.learning_rate, "rho": phase.rmsprop_rho, "momentum": m,
                  "epsilon": phase.epsilon}
    else:  # adam, adamw: betas 0.9/0.999 stated explicitly
        kwargs = {"learning_rate": phase.learning_rate, "beta_1": 0.9, "beta_2": 0.999,
                  "epsilon": phase.epsilon}
    cls = OPTIMIZERS[phase.optimizer]
    if phase.optimizer == "adamw":
        kwargs["weight_decay"] = phase.weight_decay
    shown = ", ".join(f"{k}={v:g}" for k, v in kwargs.items())
    text = f"keras.optimizers.{cls.__name__}({shown})"
    groups = {"head_variables": head_variables, "head_lr_multiplier": phase.head_lr_multiplier}
    if phase.optimizer == "adamw":
        groups["decoupled_weight_decay"] = phase.weight_decay
    elif phase.weight_decay:
        groups["l2"] = phase.weight_decay
        text += f" + L2 {phase.weight_decay:g} added to the gradients"
    if phase.head_lr_multiplier != 1.0:
        text += f" + head learning_rate x{phase.head_lr_multiplier:g} (param group)"
    return with_param_groups(cls)(**groups, **kwargs), text


def set_trainable(km: KerasModel, phase: Phase) -> dict:
    """Set ``layer.trainable`` for ``phase``; the layer bookkeeping for the report."""
    trainable_blocks = phase.trainable_blocks(km.spec)
    bn_statistics = 0
    for block, indices in km.blocks.items():
        trains = block in trainable_blocks
        for i in indices:
            layer = km.layers[i]
            if trains:
                layer.trainable = True  # BN here trains: batch statistics, moving averages, beta
            elif phase.bn == "train" and isinstance(layer, keras.layers.BatchNormalization):
                # Keras 3: only a trainable BN layer uses batch statistics and updates its
                # moving averages; its weights are frozen one by one instead.
                layer.trainable = True
                for v in (layer.gamma, layer.beta):
                    if v is not None:
                        v.trainable = False
                bn_statistics += 1
            else:
                # Keras 3: trainable=False also puts BN in inference mode (torch: eval() is separate).
                layer.trainable = False
    for layer in km.layers[km.num_base_layers:]:
        layer.trainable = True
    indices = [i for b in trainable_blocks for i in km.blocks[b]]
    return {"trainable_blocks": list(trainable_blocks), "layer_indices": indices,
            "layer_range": layer_range_text(indices),
            "trainable_layers": len(indices) + len(km.head_layers()),
            "bn_statistics_only_layers": bn_statistics}


def loss_and_metrics(phase: Phase):
    # One-hot labels: Keras 3's SparseCategoricalCrossentropy has no label_smoothing.
    loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                label_smoothing=phase.label_smoothing)
    return loss, [keras.metrics.CategoricalAccuracy(name="top1")]


def compile_phase(km: KerasModel, phase: Phase) -> tuple[keras.optimizers.Optimizer, str]:
    """A fresh optimizer for ``phase`` and a recompiled model.

    Keras reads ``trainable`` when it builds the train function, so changing
    it needs ``compile`` again (torch: requires_grad is read at every step).
    """
    head_variables = [v for layer in km.head_layers() for v in layer.trainable_weights]
    optimizer, text = make_optimizer(phase, head_variables)
    loss, metrics = loss_and_metrics(phase)
    km.model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return optimizer, text


def weight_count(variables) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


class ProgressCallback(keras.callbacks.Callback):
    """One ``common.progress`` unit per batch of ``fit`` or ``predict`` (Keras' own
    progress bar, ``verbose=1``, would print from the worker process, one line per update
    once its output is not a terminal)."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(1)


def fit_one_epoch(km: KerasModel, dataset, global_epoch: int, images: int, callbacks=()) -> dict:
    """One pass of ``model.fit`` over ``dataset`` (epoch numbering for TensorBoard)."""
    t0 = time.perf_counter()
    history = km.model.fit(dataset, epochs=global_epoch, initial_epoch=global_epoch - 1,
                           verbose=0, shuffle=False, callbacks=list(callbacks))
    seconds = time.perf_counter() - t0
    logs = history.history
    return {"loss": float(logs["loss"][-1]), "top1": float(logs["top1"][-1]),
            "images": int(images), "seconds": seconds}
