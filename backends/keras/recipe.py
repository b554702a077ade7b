"""The transfer recipe in Keras 3's own words, as the keras.io transfer-learning guide writes it.

Top to bottom: the application with ``include_top=False`` and a new head; the backbone of a
pretrained ``.weights.h5`` without its head; ``layer.trainable`` for the layers a phase trains
(and what that does to BatchNormalization); the optimizer, with the head's larger learning
rate; ``compile`` again (Keras reads ``trainable`` when it compiles); one ``model.fit`` per
phase; ``model.predict``. The adapter (``backend.py``) calls these functions; ``bench explain``
cuts the marked regions from this file.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from common.config import Fidelity, Phase
from common.models import ModelSpec
from common.schedule import learning_rate_at

from .model import DROPOUT_LAYER, FEATURES_LAYER, HEAD_HIDDEN, HEAD_LOGITS, KerasModel, build_model


def new_head(base: keras.Model, spec: ModelSpec, num_classes: int, head_hidden_units: int = 0,
             dropout: float = 0.0, hidden_dtype: str | None = None) -> tuple[keras.Model, object]:
    """``(model, pooled)``: ``base`` (built with ``include_top=False``) pooled, with a new head
    (an optional ``Dropout``, a hidden ``Dense`` of ``hidden_dtype`` or the policy's, the logits)
    on the application's own graph (functional API), so ``model.layers[i]`` is base layer ``i``."""
    # --8<-- [start:new-head]
    pooled = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(base.output)
    x = keras.layers.Dropout(dropout, name=DROPOUT_LAYER)(pooled) if dropout else pooled
    if head_hidden_units:
        x = keras.layers.Dense(head_hidden_units, activation="relu", name=HEAD_HIDDEN, dtype=hidden_dtype)(x)
    dtype = "float64" if keras.config.floatx() == "float64" else "float32"  # f32 in mixed precision
    logits = keras.layers.Dense(num_classes, name=HEAD_LOGITS, dtype=dtype)(x)  # losses: from_logits
    model = keras.Model(base.input, logits, name=f"{spec.name}_transfer")
    # --8<-- [end:new-head]
    return model, pooled


def restore_without_head(km: KerasModel, path: str, num_classes: int, head_hidden_units: int,
                         image_size: int) -> KerasModel:
    """Copy the backbone of the ``.weights.h5`` at ``path`` (a model with ``num_classes`` and
    ``head_hidden_units``) into ``km``; ``km``'s head keeps its fresh initialisation. Returns
    the model shaped like the checkpoint. Keras 3 loads such a file by structure, not by layer
    name (``skip_mismatch=True`` would load a head whose shape happens to match)."""
    # --8<-- [start:restore-without-head]
    # a model shaped like the checkpoint loads it; its backbone's layers are copied across
    source = build_model(km.spec, km.entry, num_classes, image_size, head_hidden_units)
    source.weights_view.load_weights(str(path))
    for src, dst in zip(source.layers[:source.num_base_layers], km.layers[:km.num_base_layers]):
        dst.set_weights(src.get_weights())
    # --8<-- [end:restore-without-head]
    return source


def trained_layers(km: KerasModel, phase: Phase) -> set[int]:
    """Indices into ``model.layers`` of the backbone layers ``phase`` trains: the guide's cut
    ``model.layers[N:]`` (``unfreeze_from = N``) or the layers of the phase's blocks."""
    if phase.unfreeze_from is not None:
        return set(range(phase.unfreeze_from, km.num_base_layers))
    return {i for block in phase.trainable_blocks(km.spec) for i in km.blocks[block]}


def set_trainable(km: KerasModel, phase: Phase) -> None:
    """``layer.trainable`` for ``phase``: the head and the trained layers train, the rest is
    frozen; ``bn = "train"`` keeps frozen BatchNormalization layers on batch statistics with
    their gamma and beta frozen. Takes effect at the next ``compile``."""
    trained = trained_layers(km, phase)
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
            else:
                # Keras 3: trainable=False also puts BN in inference mode (torch: eval() is separate).
                layer.trainable = False
            # --8<-- [end:batchnorm]
    for layer in km.layers[km.num_base_layers:]:
        layer.trainable = True
    # --8<-- [end:freeze]


OPTIMIZERS = {"sgd": keras.optimizers.SGD, "momentum": keras.optimizers.SGD,
              "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
              "adamw": keras.optimizers.AdamW}

_PARAM_GROUP_CLASSES: dict[type, type] = {}


def with_param_groups(cls: type) -> type:
    """``cls`` with a head param group (Keras optimizers have none) and torch-style weight decay:
    head variables step with ``learning_rate * head_lr_multiplier``; ``l2`` adds ``l2 * w`` to
    the gradient (torch's ``weight_decay=``); ``decoupled_weight_decay`` is AdamW's decay with
    each group's learning rate; ``decay_kernels_only`` spares biases and BN betas (slim).
    Only the custom-optimizer API's public methods are overridden: ``build`` records each
    variable's multiplier, ``update_step`` (per variable, every Keras backend) finds it."""
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
                decay = ops.cast(ops.multiply(learning_rate, decoupled), variable.dtype)
                self.assign(variable, ops.subtract(variable, ops.multiply(variable, decay)))
            super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "head_lr_multiplier": self.head_lr_multiplier,
                    "l2": self.l2, "decoupled_weight_decay": self.decoupled_weight_decay,
                    "decay_kernels_only": self.decay_kernels_only}

    ParamGroups.__name__ = ParamGroups.__qualname__ = cls.__name__
    _PARAM_GROUP_CLASSES[cls] = ParamGroups
    return ParamGroups


def optimizer_arguments(phase: Phase, fidelity: Fidelity = Fidelity()) -> tuple[type, dict, dict]:
    """``(cls, kwargs, groups)``: the Keras class, its arguments, the ``with_param_groups``
    options (empty: Keras' own class). Keras' RMSprop and Adam formulas are the aligned ones."""
    m = phase.effective_momentum
    # Keras 3 spells it learning_rate=; lr= raises (Keras 2 and torch take lr=).
    if phase.optimizer in ("sgd", "momentum"):
        kwargs = {"learning_rate": phase.learning_rate, "momentum": m}
    elif phase.optimizer == "rmsprop":
        kwargs = {"learning_rate": phase.learning_rate, "rho": phase.rmsprop_rho, "momentum": m,
                  "epsilon": phase.epsilon}
    else:  # adam, adamw: betas 0.9/0.999 stated explicitly; an aligned float64 model's as float64
        # numbers (TF casts a Python float through float32: 1 - beta_2 would be 1.3e-5 off)
        b = np.float64 if fidelity.aligned("adam") and keras.config.floatx() == "float64" else float
        kwargs = {"learning_rate": phase.learning_rate, "beta_1": b(0.9), "beta_2": b(0.999),
                  "epsilon": phase.epsilon}
    cls, groups = OPTIMIZERS[phase.optimizer], {}
    if phase.head_lr_multiplier != 1.0:
        groups["head_lr_multiplier"] = phase.head_lr_multiplier
    kernels_only = bool(phase.weight_decay) and fidelity.aligned("weight_decay")
    if phase.optimizer == "adamw":
        if groups or kernels_only:  # Keras' decoupled decay would use the base LR for the head too
            cls = keras.optimizers.Adam
            groups["decoupled_weight_decay"] = phase.weight_decay
        else:
            kwargs["weight_decay"] = phase.weight_decay
    elif phase.weight_decay:
        groups["l2"] = phase.weight_decay
    if kernels_only:
        groups["decay_kernels_only"] = True
    return cls, kwargs, groups


def make_optimizer(phase: Phase, head_variables, fidelity: Fidelity = Fidelity()
                   ) -> keras.optimizers.Optimizer:
    """A fresh optimizer for ``phase``; ``head_variables`` step with the head's multiplier."""
    cls, kwargs, groups = optimizer_arguments(phase, fidelity)
    if not groups:
        return cls(**kwargs)
    return with_param_groups(cls)(head_variables=head_variables, **groups, **kwargs)


def loss_and_metrics(phase: Phase):
    # One-hot labels: Keras 3's SparseCategoricalCrossentropy has no label_smoothing.
    loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                label_smoothing=phase.label_smoothing)
    return loss, [keras.metrics.CategoricalAccuracy(name="top1")]


def compile_phase(km: KerasModel, phase: Phase, fidelity: Fidelity = Fidelity()
                  ) -> keras.optimizers.Optimizer:
    """A fresh optimizer and a recompiled ``km.train_model`` (``km.model``, or for ``bn =
    "inference"`` the same layers with the backbone called as ``base(x, training=False)``).
    Keras reads ``trainable`` when it compiles (torch reads requires_grad at every step)."""
    # --8<-- [start:optimizer]
    head_variables = [v for layer in km.head_layers() for v in layer.trainable_weights]
    optimizer = make_optimizer(phase, head_variables, fidelity)
    loss, metrics = loss_and_metrics(phase)
    km.train_model = km.inference_bn_model() if phase.bn == "inference" else km.model
    km.train_model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    # --8<-- [end:optimizer]
    # slots made now: made in fit's first step, they would make TensorFlow trace it twice
    optimizer.build(km.train_model.trainable_variables)
    return optimizer


def learning_rate_schedule(phase: Phase, offset: int = 0) -> keras.callbacks.Callback:
    """The phase's schedule as a fit callback: Keras' epoch ``k`` is phase epoch ``k - offset``."""
    # --8<-- [start:fit]
    # the learning rate of each epoch is set by a callback, one of fit's callbacks below
    schedule = keras.callbacks.LearningRateScheduler(lambda k, lr: learning_rate_at(phase, k - offset))
    # --8<-- [end:fit]
    return schedule


def fit(km: KerasModel, dataset, initial_epoch: int, epochs: int, steps_per_epoch: int | None,
        callbacks=None) -> None:
    """One ``model.fit`` of the compiled ``km.train_model`` over Keras' 0-based epochs
    ``initial_epoch .. epochs - 1``; the per-epoch work is in ``callbacks``."""
    # --8<-- [start:fit]
    km.train_model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch,
                       steps_per_epoch=steps_per_epoch, verbose=0, shuffle=False,
                       callbacks=callbacks)
    # --8<-- [end:fit]


def predict(model: keras.Model, dataset, callbacks=None):
    """``model``'s outputs over ``dataset``, in inference mode."""
    # --8<-- [start:predict]
    # predict() calls the model with training=False: every BN layer uses moving statistics.
    return model.predict(dataset, verbose=0, callbacks=callbacks)
    # --8<-- [end:predict]
