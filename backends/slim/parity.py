"""``bench parity`` in TF-Slim: every canonical block's output for a batch, eval mode, fp32.

TF-Slim idiom: the net's ``end_points`` dict (``"MaxPool_5a_3x3"``,
``"Mixed_5b"``, ...) fetched in one ``session.run`` of the eval tower
(``is_training=False`` everywhere) whose variables ``convert.session_from_canonical``
set (the same mapping ``write_canonical`` saves; head included). A canonical
block's output is the end point named by its last scope in the catalog. NHWC already.
"""

from __future__ import annotations

import numpy as np

from common.config import float64_hyperparameters
from common.models import get_model

from .catalog import MODELS
from .convert import session_from_canonical


def block_outputs(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                  aligned: bool = True) -> dict[str, np.ndarray]:
    """``{block: [N, H, W, C], ..., "logits": [N, classes]}`` of the net holding the
    canonical ``tensors``, for NHWC float32 ``images``. (slim needs no alignment:
    ``aligned`` is accepted for symmetry.)"""
    spec, entry = get_model(model), MODELS[model]
    session, inputs, tower = session_from_canonical(model, tensors, images.shape[1])
    fetch = {block: tower.end_points[entry.blocks[block][-1].rsplit("/", 1)[-1]]
             for block in spec.blocks}
    fetch["logits"] = tower.logits
    try:
        return session.run(fetch, {inputs: images})
    finally:
        session.close()


# TensorFlow's fused batch norm has no float64 kernel: on float64 inputs the batch_norm
# layer falls back to its non-fused path, whose moving variance follows the biased batch
# variance whatever bn_moving_variance says (the fused one applies n/(n-1))
FLOAT64_MOVING = ("TensorFlow has no float64 fused batch norm; slim's non-fused fallback "
                  "moves the moving variance towards the biased batch variance, so the "
                  "bn_moving_variance switch cannot be honoured")


def train_steps(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                labels: np.ndarray, phase, fidelity, steps=(1, 3), dtype: str = "float32") -> dict:
    """``bench parity --train`` in TF-Slim: the backend's train tower (``batch_norm``
    ``is_training`` per scope, the arg_scope's L2 regularizer) and its train op
    (``train.build_train_op``: ``variables_to_train`` of the trainable scopes, the
    recipe's fidelity) on the net holding ``tensors``, run ``max(steps)`` times on one
    fixed batch, in ``dtype`` (``float64``: the batch constants, so every variable, the
    weight decay and the learning rate; the momentum and RMSprop numbers as numpy float64,
    ``common.config.float64_hyperparameters``, which TF1's optimizers would otherwise turn
    into float32 tensors). ``{"loss": [main cross-entropy per step, before its
    update], "tensors": {k: canonical tensors after step k}}`` (rounded to float32, the
    canonical format); in float64 also ``"not_compared": {"moving statistics": why}``
    (``FLOAT64_MOVING``)."""
    import tensorflow as tf

    from common import canonical
    from common.models import HEAD

    from . import model as slim_model
    from . import train as slim_train
    from .compat import identity_hashing
    from .convert import canonical_from_session, native_names

    spec, entry = get_model(model), MODELS[model]
    if dtype == "float64":
        phase = float64_hyperparameters(phase)
    classes, hidden = canonical.head_shape(model, tensors, spec.feature_dim, "slim")
    graph = tf.Graph()
    with graph.as_default(), identity_hashing():
        x = tf.constant(np.asarray(images, dtype))  # the variables take the input's dtype
        y = tf.constant(np.asarray(labels, np.int64))
        scopes = slim_model.trainable_scopes(spec, entry, phase)
        tower = slim_model.build_tower(
            spec, entry, x, classes, hidden_units=hidden, aux_logits=False,
            weight_decay=tf.constant(0.0 if phase.optimizer == "adamw" else phase.weight_decay,
                                     dtype),
            training_scopes=slim_model.bn_training_scopes(spec, entry, phase, scopes, False))
        model_variables = tf.compat.v1.global_variables()
        trainable = [v for v in model_variables
                     if v.trainable and slim_model.in_scopes(v.op.name, scopes)]
        head = slim_model.variables_in_scopes(trainable, slim_model.native_scopes(entry, HEAD, True))
        step = slim_train.build_train_op(
            tower, y, classes, phase, variables_to_train=trainable, trainable_scopes=scopes,
            head_variables=head, learning_rate=tf.constant(phase.learning_rate, dtype),
            global_step=tf.compat.v1.train.get_or_create_global_step(), name="parity",
            fidelity=fidelity)
        values = {n: tensors[k] for k, n in native_names(model, tensors).items()}
        # the classifier's canonical [in, out] is slim's 1x1 conv [1, 1, in, out]
        feed = {v.initializer.inputs[1]: values[v.op.name].reshape(v.shape)
                for v in model_variables}
        known = {id(v) for v in model_variables}
        others = [v for v in tf.compat.v1.global_variables() if id(v) not in known]
        init_others = tf.compat.v1.variables_initializer(others)
        mean_loss = step.loss_sum / tf.cast(step.count, step.loss_sum.dtype)
        session = tf.compat.v1.Session(graph=graph)
    try:
        session.run([v.initializer for v in model_variables], feed)
        session.run(init_others)
        losses, after = [], {}
        for k in range(1, max(steps) + 1):
            _, loss = session.run([step.train_op, mean_loss])
            losses.append(float(loss))
            if k in steps:
                after[k] = canonical_from_session(model, session, tensors)
        out = {"loss": losses, "tensors": after}
        if dtype == "float64" and tower.update_ops:  # a batch_norm trains
            out["not_compared"] = {"moving statistics": FLOAT64_MOVING}
        return out
    finally:
        session.close()
