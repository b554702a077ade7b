"""Phases the Keras way: ``layer.trainable`` + ``compile``, optimizers, one ``fit`` per phase.

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
  ``bn = "inference"`` fits a model whose backbone is called with
  ``training=False`` (``KerasModel.inference_bn_model``): every BN on its moving
  statistics while the trainable layers' betas train;
* ``unfreeze_from = N`` is the keras.io guide's cut as written:
  ``model.layers[:N]`` frozen, ``model.layers[N:]`` trainable;
* optimizers take ``learning_rate=`` (Keras 3 rejects ``lr=``) and have no
  param groups: ``with_param_groups`` subclasses the chosen optimizer through
  the public custom-optimizer API (``build`` + ``update_step``) and steps the
  head's variables with ``learning_rate * head_lr_multiplier``, exactly what a
  torch param group does, for adaptive optimizers too (scaling the head's
  gradients would not be). A phase that needs no groups and no coupled weight
  decay gets Keras' own optimizer class unchanged;
* a phase is **one** ``model.fit``: the schedule is a ``LearningRateScheduler``
  with the values of ``common.schedule``, the driver's per-epoch work
  (validation, checkpoints, ``state.json``) a callback, TensorBoard a callback.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from common.config import Fidelity, Phase
from common.progress import Progress

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
      own learning rate (Keras' built-in ``weight_decay=`` uses the one base LR),
      applied before the step as AdamW does (use it with ``Adam``);
    * ``decay_kernels_only``: either decay on kernels (conv, dense) only, as slim's
      ``l2_regularizer`` (``fidelity.weight_decay = "aligned"``).

    Written as a Keras optimizer is written, overriding only the public methods of
    the custom-optimizer API: ``build(variables)`` records what each variable needs
    (here its learning-rate multiplier) and ``update_step(gradient, variable,
    learning_rate)`` steps one variable, finding its entry with
    ``_get_variable_index`` as every built-in Keras optimizer's ``update_step``
    finds its slots (on TensorFlow the step receives the backing ``tf.Variable``,
    not the Keras one). Keras calls ``update_step`` per variable on every backend
    for a subclass (its fused torch optimizers stand in for the built-in classes
    only). No private hook (``_backend_update_step``, ``_apply``...) is overridden.
    """
    if cls in _PARAM_GROUP_CLASSES:
        return _PARAM_GROUP_CLASSES[cls]

    class ParamGroups(cls):
        def __init__(self, *, head_variables=(), head_lr_multiplier=1.0, l2=0.0,
                     decoupled_weight_decay=0.0, decay_kernels_only=False, **kwargs):
            super().__init__(**kwargs)
            self.head_lr_multiplier = float(head_lr_multiplier)
            self.l2 = float(l2)
            self.decoupled_weight_decay = float(decoupled_weight_decay)
            self.decay_kernels_only = bool(decay_kernels_only)
            # ids, not the variables: an optimizer tracks every Variable set as an attribute
            self.head_ids = frozenset(id(v) for v in head_variables)
            self.learning_rate_multipliers: list[float] = []

        def build(self, variables):
            super().build(variables)
            self.learning_rate_multipliers = [
                self.head_lr_multiplier if id(v) in self.head_ids else 1.0 for v in variables]

        # --8<-- [start:optimizer]
        def update_step(self, gradient, variable, learning_rate):
            multiplier = self.learning_rate_multipliers[self._get_variable_index(variable)]
            if multiplier != 1.0:  # read when the step is traced: no cost per step
                learning_rate = ops.multiply(learning_rate, multiplier)
        # --8<-- [end:optimizer]
            if self.decay_kernels_only and len(variable.shape) <= 1:  # biases, BN betas
                l2 = decoupled = 0.0
            else:
                l2, decoupled = self.l2, self.decoupled_weight_decay
            if l2:
                gradient = ops.add(gradient, ops.multiply(ops.cast(l2, gradient.dtype),
                                                          ops.cast(variable, gradient.dtype)))
            if decoupled:
                decay = ops.cast(ops.multiply(learning_rate, decoupled),
                                 variable.dtype)
                self.assign(variable, ops.subtract(variable, ops.multiply(variable, decay)))
            super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "head_lr_multiplier": self.head_lr_multiplier,
                    "l2": self.l2, "decoupled_weight_decay": self.decoupled_weight_decay,
                    "decay_kernels_only": self.decay_kernels_only}

    ParamGroups.__name__ = ParamGroups.__qualname__ = cls.__name__
    _PARAM_GROUP_CLASSES[cls] = ParamGroups
    return ParamGroups


def make_optimizer(phase: Phase, head_variables, fidelity: Fidelity = Fidelity()
                   ) -> tuple[keras.optimizers.Optimizer, str]:
    """The phase's optimizer and how it reads in Keras (for the phase report). ``fidelity``:
    Keras' RMSprop is the aligned one already (epsilon inside the root, slot from 0); an
    aligned weight decay reaches kernels only."""
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
    groups: dict = {}
    extra = ""
    if phase.head_lr_multiplier != 1.0:
        groups = {"head_variables": head_variables, "head_lr_multiplier": phase.head_lr_multiplier}
        extra += f" + head learning_rate x{phase.head_lr_multiplier:g} (param group)"
    kernels_only = bool(phase.weight_decay) and fidelity.aligned("weight_decay")
    if phase.optimizer == "adamw":
        if groups or kernels_only:  # Keras' decoupled decay would use the base LR for the head too
            cls = keras.optimizers.Adam
            groups["decoupled_weight_decay"] = phase.weight_decay
            extra += (f" + decoupled weight decay {phase.weight_decay:g} x each group's "
                      f"learning_rate (AdamW per param group)")
        else:
            kwargs["weight_decay"] = phase.weight_decay
    elif phase.weight_decay:
        groups["l2"] = phase.weight_decay
        extra = f" + L2 {phase.weight_decay:g} added to the gradients" + extra
    if kernels_only:
        groups["decay_kernels_only"] = True
        extra += " (kernels only)"
    shown = ", ".join(f"{k}={v:g}" for k, v in kwargs.items())
    text = f"keras.optimizers.{cls.__name__}({shown}){extra}"
    if not groups:
        return cls(**kwargs), text
    return with_param_groups(cls)(**groups, **kwargs), text


def set_trainable(km: KerasModel, phase: Phase) -> dict:
    """Set ``layer.trainable`` for ``phase``; the layer bookkeeping for the report."""
    if phase.unfreeze_from is not None:  # the guide's cut: model.layers[N:] train
        trained = set(range(phase.unfreeze_from, km.num_base_layers))
        trainable_blocks = [b for b, r in km.blocks.items() if r.start >= phase.unfreeze_from]
        partial = {b: round(len(trained & set(r)) / len(r), 4) for b, r in km.blocks.items()
                   if 0 < len(trained & set(r)) < len(r)}
    else:
        trainable_blocks = list(phase.trainable_blocks(km.spec))
        trained = {i for b in trainable_blocks for i in km.blocks[b]}
        partial = {}
    bn_statistics = 0
    # --8<-- [start:freeze]
    for block, indices in km.blocks.items():
        for i in indices:
            layer = km.layers[i]
            if i in trained:
                layer.trainable = True  # BN here trains: batch statistics, moving averages, beta
                if isinstance(layer, keras.layers.BatchNormalization):
                    # an earlier bn = "train" phase may have frozen these variables one by one
                    for v in (layer.gamma, layer.beta):
                        if v is not None:
                            v.trainable = True
            # --8<-- [start:batchnorm]
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
            # --8<-- [end:batchnorm]
    for layer in km.layers[km.num_base_layers:]:
        layer.trainable = True
    # --8<-- [end:freeze]
    indices = sorted(trained)
    return {"trainable_blocks": list(trainable_blocks), "partially_trained_blocks": partial,
            "layer_indices": indices,
            "layer_range": layer_range_text(indices),
            "trainable_layers": len(indices) + len(km.head_layers()),
            "bn_statistics_only_layers": bn_statistics}


def loss_and_metrics(phase: Phase):
    # One-hot labels: Keras 3's SparseCategoricalCrossentropy has no label_smoothing.
    loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                label_smoothing=phase.label_smoothing)
    return loss, [keras.metrics.CategoricalAccuracy(name="top1")]


def compile_phase(km: KerasModel, phase: Phase, fidelity: Fidelity = Fidelity()
                  ) -> tuple[keras.optimizers.Optimizer, str]:
    """A fresh optimizer for ``phase`` and a recompiled model (``km.train_model``: ``km.model``,
    or for ``bn = "inference"`` the model whose backbone is called with ``training=False``).

    Keras reads ``trainable`` when it builds the train function, so changing
    it needs ``compile`` again (torch: requires_grad is read at every step).
    """
    # --8<-- [start:optimizer]
    head_variables = [v for layer in km.head_layers() for v in layer.trainable_weights]
    optimizer, text = make_optimizer(phase, head_variables, fidelity)
    loss, metrics = loss_and_metrics(phase)
    km.train_model = km.inference_bn_model() if phase.bn == "inference" else km.model
    km.train_model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    # --8<-- [end:optimizer]
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


class EpochProgress(keras.callbacks.Callback):
    """One ``common.progress`` pass per epoch of a ``fit``: "epoch N train", N the run's
    1-based epoch (Keras' epoch index + 1), as ``Backend.fit_epoch`` names it."""

    def __init__(self, batches: int):
        super().__init__()
        self.batches, self.bar = batches, None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = Progress(self.batches, f"epoch {epoch + 1} train")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class SetEpoch(keras.callbacks.Callback):
    """Moves a training ``PyDataset`` to each epoch as it begins, before any of its batches
    is read (``data.NumpyBatches.set_epoch``; Keras' epoch ``k`` is the run's ``k + 1``)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch + 1)

# ------------------------------------------------------------------ fit

class EpochEnd(keras.callbacks.Callback):
    """Hands each finished epoch to ``on_epoch_end(keras_epoch, stats)``: fit's loss and top-1,
    the images of the epoch and the seconds from ``on_epoch_begin`` to here."""

    def __init__(self, images: int, on_epoch_end: Callable[[int, dict], None]):
        super().__init__()
        self.images, self.on_epoch_end_fn, self._t0 = images, on_epoch_end, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        self.on_epoch_end_fn(epoch, {"loss": float(logs["loss"]), "top1": float(logs["top1"]),
                                     "images": int(self.images), "seconds": seconds})


class EventFile:
    """Scalars in a TensorBoard event file, written with the ``tensorboard`` package's own
    record writer. Keras' ``TensorBoard`` callback imports ``tensorflow.summary`` on every
    Keras backend (and ``tensorboard.summary.Writer`` imports TensorFlow whenever it is
    installed), so the jax and torch runs write their events this way: they need no
    TensorFlow (the GPU machines have none)."""

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(log_dir / name, "wb")
        self._records = RecordWriter(self._file)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v))
                                       for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._file.close()


class EpochScalars(keras.callbacks.Callback):
    """The epoch scalars Keras' ``TensorBoard`` callback writes (``epoch_loss``,
    ``epoch_top1``, ``epoch_learning_rate`` under ``LOG_DIR/train``), without TensorFlow."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._events: EventFile | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self._events is None:
            self._events = EventFile(self.log_dir / "train")
        self._events.scalars(epoch, {f"epoch_{k}": v for k, v in (logs or {}).items()
                                     if np.ndim(v) == 0})

    def on_train_end(self, logs=None):
        if self._events is not None:
            self._events.close()
            self._events = None


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback | None:
    """Keras' ``TensorBoard`` callback on TensorFlow; the same epoch scalars through the
    ``tensorboard`` package on jax and torch; None when neither can write."""
    if keras.backend.backend() == "tensorflow":
        return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)
    return EpochScalars(log_dir) if tensorboard_available() else None


def fit_epochs(km: KerasModel, dataset, steps_per_epoch: int, initial_epoch: int, epochs: int,
               images: int, on_epoch_end: Callable[[int, dict], None], callbacks=(),
               after=()) -> None:
    """``model.fit`` over Keras' 0-based epochs ``initial_epoch .. epochs - 1`` (the run's
    epochs ``initial_epoch + 1 .. epochs``) of ``dataset`` (``KerasData.train`` of exactly
    those), calling ``on_epoch_end(epoch, stats)`` after each; ``callbacks`` run before
    that call in every hook, ``after`` after it."""
    if isinstance(dataset, keras.utils.PyDataset):  # one epoch, moved on by SetEpoch
        callbacks, steps_per_epoch = [SetEpoch(dataset), *callbacks], None
    # --8<-- [start:fit]
    km.train_model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch,
                 steps_per_epoch=steps_per_epoch, verbose=0, shuffle=False,
                 callbacks=[*callbacks, EpochProgress(steps_per_epoch or len(dataset)),
                            EpochEnd(images, on_epoch_end), *after])
    # --8<-- [end:fit]
