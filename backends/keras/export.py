"""Deployable Keras formats: the ``.keras`` archive and a TensorFlow SavedModel.

Keras idiom: ``model.save("model.keras")`` writes the architecture, the weights and
no optimizer (the uncompiled view of the model's layers), read back with
``keras.models.load_model``; ``model.export(path, format="tf_saved_model")`` writes
an inference-only SavedModel whose ``serve`` endpoint is what TF Serving and
``tf.saved_model.load`` call. Both take what the Keras model takes: a normalised
float32 NHWC batch (``common.preprocess``) with a dynamic batch dimension, and
return logits (no softmax).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np

from . import INFO
from .model import KerasModel

FORMATS = INFO.export_formats  # ("keras", "savedmodel")


def export(km: KerasModel, fmt: str, directory: Path,
           golden: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """Write ``km`` as ``fmt`` under ``directory`` and run both on ``golden`` (NHWC)."""
    # training=False: every BatchNormalization on its moving statistics, as in predict()
    native = keras.ops.convert_to_numpy(km.model(golden, training=False))
    layout = {"layout": "NHWC", "shape": [None, *golden.shape[1:]], "dtype": "float32",
              "output": "logits"}
    if fmt == "keras":
        path = directory / "model.keras"
        km.weights_view.save(str(path))  # the same layers, never compiled: no optimizer inside
        loaded = keras.models.load_model(str(path), compile=False)
        exported = keras.ops.convert_to_numpy(loaded(golden, training=False))
        return path, exported, native, layout
    if fmt == "savedmodel":
        import tensorflow as tf

        path = directory / "saved_model"
        if path.exists():
            shutil.rmtree(path)
        km.model.export(str(path), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(path))  # kept: serve() needs its variables alive
        exported = loaded.serve(tf.constant(golden)).numpy()
        return path, exported, native, {**layout, "signature": "serve"}
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
