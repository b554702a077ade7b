"""``bench parity`` in Keras: every canonical block's output for a batch, inference mode, fp32.

Keras idiom: a second functional ``keras.Model`` on the same layers whose
outputs are the last layer of each canonical block (``model.block_ranges``) and
the logits, called with ``training=False`` on the model that
``convert.model_from_canonical`` builds (the same mapping ``write_canonical``
saves; head included). Keras is NHWC already.
"""

from __future__ import annotations

import keras
import numpy as np

from common.config import float64_hyperparameters

from .convert import model_from_canonical


def block_outputs(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                  aligned: bool = True) -> dict[str, np.ndarray]:
    """``{block: [N, H, W, C], ..., "logits": [N, classes]}`` of the model holding the
    canonical ``tensors``, for NHWC float32 ``images``. (Keras needs no alignment:
    ``aligned`` is accepted for symmetry.)"""
    km = model_from_canonical(model, tensors, images.shape[1])
    blocks = list(km.spec.blocks)
    ends = [km.layers[km.blocks[b].stop - 1].output for b in blocks]
    probe = keras.Model(km.model.input, [*ends, km.model.output])
    values = probe(images, training=False)
    return {name: np.asarray(keras.ops.convert_to_numpy(v)) for name, v in
            zip([*blocks, "logits"], values)}


def train_steps(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                labels: np.ndarray, phase, fidelity, steps=(1, 3), dtype: str = "float32") -> dict:
    """``bench parity --train`` in Keras: the suite's own phase machinery (``recipe.py``:
    ``set_trainable``, ``compile_phase`` with the recipe's fidelity) on the model holding
    ``tensors`` (``UnbiasedMovingVarianceBN`` layers when ``bn_moving_variance`` is
    aligned), ``train_on_batch`` ``max(steps)`` times on one fixed batch, in ``dtype`` (``float64``:
    ``keras.config.set_floatx`` and the dtype policy before the model is built; the head
    follows floatx too; the momentum a numpy float64, ``common.config.float64_hyperparameters``,
    which Keras' SGD would otherwise ``ops.cast`` through float32).
    ``{"loss": [per step, before its update], "tensors": {k: canonical tensors after step
    k}}`` (tensors rounded to float32, the canonical format)."""
    # floatx and the global dtype policy (once set, e.g. by an earlier run in this process,
    # it wins over floatx); both restored after: the tests run several cases in one process
    before = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    if dtype == "float64":
        phase = float64_hyperparameters(phase)
    try:
        return _train_steps(model, tensors, images, labels, phase, fidelity, steps, dtype)
    finally:
        keras.config.set_floatx(before[0])
        keras.config.set_dtype_policy(before[1])


def _train_steps(model, tensors, images, labels, phase, fidelity, steps, dtype) -> dict:
    from .convert import canonical_from_model
    from .recipe import compile_phase, set_trainable

    km = model_from_canonical(model, tensors, images.shape[1],
                              unbiased_bn=fidelity.aligned("bn_moving_variance"))
    set_trainable(km, phase)
    compile_phase(km, phase, fidelity)
    onehot = np.eye(km.model.output_shape[-1], dtype=dtype)[np.asarray(labels)]
    images = np.asarray(images, dtype)
    losses, after = [], {}
    for k in range(1, max(steps) + 1):
        km.train_model.reset_metrics()  # the loss of this step, not a running mean
        logs = km.train_model.train_on_batch(images, onehot, return_dict=True)
        losses.append(float(logs["loss"]))
        if k in steps:
            after[k] = canonical_from_model(km, model)
    return {"loss": losses, "tensors": after}
