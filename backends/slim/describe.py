"""What a slim phase reports, in one place: ``describe_phase`` builds the phase report that
``SlimBackend._apply_phase`` returns (``Backend.apply_phase``), after recipe.py has built the
phase's train op; ``optimizer_description`` says how its optimizers were constructed."""

from __future__ import annotations

import tensorflow as tf

from backends.native import coverage
from backends.slim import model as slim_model
from backends.slim import recipe
from backends.slim import train as slim_train
from common.config import Phase


def optimizer_description(step: slim_train.TrainOp, phase: Phase) -> str:
    """``step``'s optimizer as constructed (``tf.compat.v1.train.MomentumOptimizer(momentum=0.9)``);
    with a head learning-rate multiplier, the backbone's and the head's multiple."""
    first = _constructed(step.optimizers[0], phase)
    if len(step.optimizers) == 1:
        return first
    return f"{first} on backbone; x{phase.head_lr_multiplier} learning rate on head"


def _constructed(optimizer, phase: Phase) -> str:
    m = phase.effective_momentum
    if isinstance(optimizer, tf.compat.v1.train.RMSPropOptimizer):
        name = "RMSPropSlotFromZero" if isinstance(optimizer, recipe.RMSPropSlotFromZero) else \
            "tf.compat.v1.train.RMSPropOptimizer"
        return f"{name}(decay={phase.rmsprop_rho}, momentum={m}, epsilon={phase.epsilon})"
    if isinstance(optimizer, tf.compat.v1.train.MomentumOptimizer):
        return f"tf.compat.v1.train.MomentumOptimizer(momentum={m})"
    if isinstance(optimizer, tf.compat.v1.train.AdamOptimizer):
        text = f"tf.compat.v1.train.AdamOptimizer(epsilon={phase.epsilon})"
        if phase.optimizer == "adamw":
            text += f" + decoupled weight decay {phase.weight_decay} (w -= lr * wd * w)"
        return text
    return "tf.compat.v1.train.GradientDescentOptimizer()"


def describe_phase(backend, phase: Phase, scopes: tuple[str, ...],
                   training_scopes: tuple[str, ...], bn_scopes: tuple[str, ...]) -> dict:
    """The phase report of ``backend`` (a built ``SlimBackend`` whose ``step`` and
    ``variables_to_train`` are ``phase``'s): canonical blocks and parameter counts, and under
    ``native`` the phase in slim's terms (``--trainable_scopes``, the optimizer, batch_norm's
    ``is_training`` per scope (``bn_scopes``: where it is True), the update ops, the
    ``train_image_classifier.py`` command line and what it cannot say)."""
    spec, entry, step = backend.spec, backend.entry, backend.step
    trainable, restored = backend.variables_to_train, backend.restore_report
    exclude = backend._exclude_scopes()
    params = [v for v in backend.model_variables if not slim_model.is_moving_statistic(v)]
    bn_training = ", ".join(bn_scopes) or "none"
    frozen_bn = any(not slim_model.in_scopes(s, training_scopes)
                    for b in spec.blocks for s in slim_model.native_scopes(entry, b))
    flags, not_expressed = slim_train.train_image_classifier_flags(
        phase, scopes, exclude, frozen_bn_scopes=frozen_bn,
        ignore_missing_vars=bool(restored.get("ignore_missing_vars")))
    if backend.clone_devices:  # train_image_classifier.py's flag for model_deploy's clones
        flags += f" --num_clones={len(backend.clone_devices)}"
    blocks, partial = list(phase.trainable_blocks(spec)), {}
    if phase.trainable_scopes:  # a native selection: what its scopes cover, block by block
        counts, trained = {}, {id(v) for v in trainable}
        for block in spec.blocks:
            vs = slim_model.variables_in_scopes(params, slim_model.native_scopes(entry, block))
            counts[block] = (slim_model.param_count([v for v in vs if id(v) in trained]),
                             slim_model.param_count(vs))
        blocks, partial = coverage(counts)
    return {
        "trainable_blocks": blocks,
        **({"partially_trained_blocks": partial} if partial else {}),
        "trainable_params": slim_model.param_count(trainable),
        "total_params": slim_model.param_count(params),
        "trainable_tensors": len(trainable),
        "native": {
            "trainable_scopes": ",".join(scopes),
            "checkpoint_exclude_scopes": ",".join(exclude),
            "optimizer": optimizer_description(step, phase),
            "bn": (f"batch_norm is_training=True in: {bn_training}; is_training=False "
                   f"(moving statistics, no update ops) elsewhere"),
            "update_ops": len(step.update_ops),
            "train_image_classifier_flags": flags,
            "not_expressed_by_flags": not_expressed,
            "weights": {k: v for k, v in restored.items()
                        if k not in ("missing", "shape_mismatch")},
        },
    }
