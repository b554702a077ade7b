"""The report's words for a Keras phase: what ``recipe.py`` set up, as ``_apply_phase`` returns
it (trainable blocks and counts, and the ``native`` table of how Keras expressed the phase)."""

from __future__ import annotations

import keras

from common.config import Fidelity, Phase

from .model import KerasModel, layer_range_text
from .recipe import optimizer_arguments, trained_layers
from .train import tensorboard_available, weight_count

BN_MODES = {
    "frozen": "frozen blocks: layer.trainable=False, so their BatchNormalization runs in "
              "inference mode (Keras 3); trained blocks: batch statistics",
    "train": "every BatchNormalization layer trainable (batch statistics, moving averages "
             "updated); gamma/beta variables of frozen blocks set trainable=False",
    "inference": "the backbone called as base(x, training=False) from a layer (fit's "
                 "training=True would reach every node of a functional graph): every "
                 "BatchNormalization on its moving statistics; trainable layers' betas train",
}


def optimizer_text(phase: Phase, fidelity: Fidelity = Fidelity()) -> str:
    """How ``recipe.make_optimizer``'s optimizer for ``phase`` reads in Keras."""
    cls, kwargs, groups = optimizer_arguments(phase, fidelity)
    extra = ""
    if "l2" in groups:
        extra += f" + L2 {groups['l2']:g} added to the gradients"
    if "head_lr_multiplier" in groups:
        extra += f" + head learning_rate x{phase.head_lr_multiplier:g} (param group)"
    if "decoupled_weight_decay" in groups:
        extra += (f" + decoupled weight decay {phase.weight_decay:g} x each group's "
                  f"learning_rate (AdamW per param group)")
    if groups.get("decay_kernels_only"):
        extra += " (kernels only)"
    shown = ", ".join(f"{k}={v:g}" for k, v in kwargs.items())
    return f"keras.optimizers.{cls.__name__}({shown}){extra}"


def execution(km: KerasModel, input_pipeline: str) -> dict:
    """How this Keras backend runs the phase: the three differ (docs/differences.md)."""
    value = km.model.weights[0].value  # the backend's own tensor behind a keras.Variable
    if keras.backend.backend() == "tensorflow":
        tensorboard = "keras.callbacks.TensorBoard (tf.summary)"
    elif tensorboard_available():
        tensorboard = "epoch scalars via the tensorboard package (Keras' callback needs TensorFlow)"
    else:
        tensorboard = "not written: the tensorboard package is not installed"
    return {"keras_backend": keras.backend.backend(),
            # compile(jit_compile="auto"): XLA on jax always, on TensorFlow only with a GPU;
            # never on torch (eager)
            "jit_compile": bool(km.train_model.jit_compile),
            "variables": f"{type(value).__module__}.{type(value).__qualname__}",
            "input_pipeline": input_pipeline, "fit": "one model.fit per phase",
            "tensorboard": tensorboard}


def describe_phase(km: KerasModel, phase: Phase, fidelity: Fidelity, input_pipeline: str,
                   aux_logits: bool = False) -> dict:
    """What ``Backend._apply_phase`` returns for ``phase`` once ``recipe.set_trainable`` and
    ``recipe.compile_phase`` have run on ``km``."""
    trained = trained_layers(km, phase)
    if phase.unfreeze_from is not None:  # the guide's cut: model.layers[N:] train
        trainable_blocks = [b for b, r in km.blocks.items() if r.start >= phase.unfreeze_from]
        partial = {b: round(len(trained & set(r)) / len(r), 4) for b, r in km.blocks.items()
                   if 0 < len(trained & set(r)) < len(r)}
    else:
        trainable_blocks, partial = list(phase.trainable_blocks(km.spec)), {}
    # bn = "train": the frozen blocks' BatchNormalization layers train their statistics only
    bn_statistics = 0 if phase.bn != "train" else sum(
        1 for r in km.blocks.values() for i in r
        if i not in trained and isinstance(km.layers[i], keras.layers.BatchNormalization))
    trainable = km.model.trainable_weights
    native = {"layer_range": layer_range_text(trained),
              "trainable_layers": len(trained) + len(km.head_layers()),
              **({"unfreeze_from": phase.unfreeze_from} if phase.unfreeze_from is not None else {}),
              "fit_model": km.train_model.name,
              "bn_statistics_only_layers": bn_statistics,
              "head_layers": [layer.name for layer in km.head_layers()],
              "optimizer": optimizer_text(phase, fidelity), "bn": f"{phase.bn}: {BN_MODES[phase.bn]}",
              "compile": "recompiled", **execution(km, input_pipeline)}
    if aux_logits:
        native["aux_logits"] = "unavailable: keras.applications has no auxiliary Inception head"
    return {"trainable_blocks": trainable_blocks,
            **({"partially_trained_blocks": partial} if partial else {}),
            "trainable_params": weight_count(trainable),
            "total_params": weight_count(km.parameters()),
            "trainable_tensors": len(trainable), "native": native}
