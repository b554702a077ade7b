"""TF-Slim backend specifics: the tf_keras alias, trainable_scopes, BN per scope,
restore with checkpoint_exclude_scopes, resume, TFRecord export (CPU, 75 px)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys

import numpy as np
import pytest

from conftest import epsilon_hat_adam, require_backend, tiny_config

from backends.base import BackendError, WeightsRequest, get_backend
from benchmarks import driver
from common.config import Phase, load_recipe
from common.data import load_image
from common.models import HEAD, get_model
from common.paths import cache_root
from common.preprocess import get_preset
from common.results import validate_result

require_backend("slim")
# TensorFlow is imported inside the tests, not at collection: a process that imports
# TensorFlow before torch segfaults in torch's triton import (see the final report).


def _in_scopes(name, scopes):
    from backends.slim.model import in_scopes

    return in_scopes(name, scopes)


SPEC = get_model("inception_v3")
TOP2 = ("InceptionV3/Mixed_7b", "InceptionV3/Mixed_7c", "InceptionV3/Logits")


def _backend(tiny_quads, run_dir, *, image_size=75, aux=False, seed=0,
             weights=WeightsRequest("none"), hidden=0):
    config = tiny_config("slim", "two_phase", tiny_quads, run_dir, image_size=image_size, seed=seed)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, aux_logits=aux))
    split = driver.prepare_split(config)
    b = get_backend("slim")(config, run_dir)
    b.setup(split, image_size)
    b.build(SPEC, split.num_classes, weights, hidden)
    return b


@pytest.fixture(scope="module")
def built(tiny_quads, tmp_path_factory):
    """One InceptionV3 graph at 75 px shared by the phase tests (each applies its phase)."""
    b = _backend(tiny_quads, tmp_path_factory.mktemp("slim-run"))
    yield b
    b.close()


def test_tf_keras_legacy_layers_alias():
    """tf_slim.batch_norm on TF 2.21 needs tf_keras.legacy_tf_layers (only in tf_keras.src)."""
    import tensorflow as tf

    from backends.slim import compat

    for public, private in compat.ALIASED.items():
        assert sys.modules[public] is importlib.import_module(private)
    assert importlib.import_module("tf_keras.legacy_tf_layers.normalization").BatchNormalization
    assert compat.install() == {}  # idempotent
    variable = tf.Variable(1.0)
    with compat.identity_hashing():  # graph building: TF1 hashing, then TF2's equality again
        assert hash(variable) == id(variable)
    with pytest.raises(TypeError, match="unhashable"):
        hash(variable)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
        y = compat.slim.batch_norm(x, is_training=True, scope="bn")
        names = [v.op.name for v in tf.compat.v1.global_variables()]
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    assert y.shape.as_list() == [None, 8, 8, 3]
    assert names == ["bn/beta", "bn/moving_mean", "bn/moving_variance"]
    assert len(updates) == 2


def test_trainable_scopes_select_exactly_mixed_7b_7c_and_logits(built):
    import tensorflow as tf

    from backends.slim import train as slim_train

    phase = load_recipe("two_phase").phases[1]
    report = built.apply_phase(phase, 1)
    native = report["native"]
    assert native["trainable_scopes"] == ",".join(TOP2)
    assert native["checkpoint_exclude_scopes"] == "InceptionV3/Logits,InceptionV3/AuxLogits"
    assert native["optimizer"] == "tf.compat.v1.train.MomentumOptimizer(momentum=0.9)"
    with built.graph.as_default():
        expected = sorted(v.op.name for v in tf.compat.v1.trainable_variables()
                          if _in_scopes(v.op.name, TOP2))
    names = built.trainable_names()
    assert sorted(names) == expected
    # 9 convolutions per block (weights + BN beta; slim's inception BN has no gamma) + the head
    assert len(names) == 2 * 9 * 2 + 2 == report["trainable_tensors"]
    assert all(n.endswith(("/weights", "/BatchNorm/beta", "/biases")) for n in names)
    # L2 weights_regularizer terms collected by scope: the trained conv/fc weights only
    with built.graph.as_default():
        terms = slim_train.regularization_losses(TOP2)
        all_terms = tf.compat.v1.losses.get_regularization_losses()
    assert len(terms) == 19 and len(all_terms) == 95  # 94 convolutions + the logits
    assert all(_in_scopes(t.op.name, TOP2) for t in terms)
    # BN trains (has update ops) in the two trained blocks only: 18 batch_norms x 2
    assert native["update_ops"] == 36
    assert native["train_image_classifier_flags"].startswith(
        f"--trainable_scopes={','.join(TOP2)} --checkpoint_exclude_scopes=")
    # slim's l2_regularizer(wd) is wd * sum(w**2) / 2 (the weight_decay variable's value)
    with built.graph.as_default():
        built.weight_decay.load(0.1, built.session)
        weights = next(v for v in built.variables_to_train
                       if v.op.name == "InceptionV3/Mixed_7b/Branch_0/Conv2d_0a_1x1/weights")
        term = next(t for t in terms if t.op.name.startswith(weights.op.name.rsplit("/", 1)[0]))
        value, w = built.session.run([term, weights])
        built.weight_decay.load(0.0, built.session)
    assert value == pytest.approx(0.1 * np.sum(w.astype(np.float64) ** 2) / 2, rel=1e-5)
    # the learning rate is a graph variable the backend assigns per epoch
    built.set_learning_rate(3e-3)
    assert built.session.run(built.learning_rate) == pytest.approx(3e-3)


def test_pipelines_match_the_common_preprocessing(built):
    """The graph's input is common.preprocess exactly ([-1, 1], NHWC): no inception_preprocessing,
    no dropout anywhere; the train order is a function of the epoch seed fed at initialization."""
    import tensorflow as tf

    from common.data import load_image
    from common.preprocess import get_normalisation

    pipes, session, split = built.pipes, built.session, built.split
    assert pipes.images.shape.as_list() == [None, 75, 75, 3]  # NHWC (PyTorch: NCHW)
    session.run(pipes.initializers["val"])
    x = session.run(pipes.images)
    norm = get_normalisation("inception")
    expected = np.stack([norm.apply(load_image(s.path, 75)) for s in split.val[:len(x)]])
    np.testing.assert_allclose(x, expected, atol=1e-6)
    assert not [op.name for op in built.graph.get_operations() if "dropout" in op.name.lower()]

    def labels(seed):
        session.run(pipes.initializers["fit_augmented"], {pipes.epoch_seed: seed})
        out = []
        while True:
            try:
                out.extend(session.run(pipes.labels))
            except tf.errors.OutOfRangeError:  # the epoch is over
                return out
    first = labels(11)
    assert labels(11) == first and labels(12) != first and sorted(first) == sorted(
        s.label for s in split.train)


def test_frozen_scopes_bit_identical_after_training_bn_frozen(built):
    phase = Phase(name="top2", train="top", top_blocks=2, optimizer="sgd", learning_rate=0.05,
                  momentum=0.9, bn="frozen", epochs=1)
    built.apply_phase(phase, 2)
    before = {blk: built.snapshot(blk) for blk in (*SPEC.blocks, HEAD)}
    built.set_learning_rate(0.05)
    stats = built.fit_epoch(phase, 1)
    assert stats["images"] == 15 and np.isfinite(stats["loss"])
    for blk in SPEC.blocks[:-2]:
        after = built.snapshot(blk)
        assert after.keys() == before[blk].keys()
        for name, value in after.items():  # weights, beta, moving_mean, moving_variance
            np.testing.assert_array_equal(value, before[blk][name], err_msg=name)
    moved = built.snapshot("Mixed_7b")
    name = "InceptionV3/Mixed_7b/Branch_0/Conv2d_0a_1x1/BatchNorm/moving_mean"
    assert not np.array_equal(moved[name], before["Mixed_7b"][name])
    assert not np.array_equal(moved[name.replace("BatchNorm/moving_mean", "weights")],
                              before["Mixed_7b"][name.replace("BatchNorm/moving_mean", "weights")])


def test_bn_train_updates_moving_stats_of_frozen_scopes(built):
    phase = Phase(name="top2-bn-train", train="top", top_blocks=2, optimizer="sgd",
                  learning_rate=0.01, bn="train", epochs=1)
    report = built.apply_phase(phase, 3)
    assert report["native"]["update_ops"] == 2 * 94  # every batch_norm of InceptionV3
    before = built.snapshot("stem")
    built.set_learning_rate(0.01)
    built.fit_epoch(phase, 1)
    after = built.snapshot("stem")
    for name, value in after.items():
        if name.endswith(("/moving_mean", "/moving_variance")):
            assert not np.array_equal(value, before[name]), f"{name} did not move"
        else:  # frozen: not in variables_to_train
            np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_a_held_state_is_written_as_the_checkpoint_a_save_writes(tiny_quads, tmp_path):
    """``hold`` copies every global variable out of the session (model, optimizer slots,
    moving statistics, the step); ``save(path, held)`` writes it with ``SaveV2`` in a graph
    of its own: the same index and data files, byte for byte, and the same ``checkpoint``
    file as the ``Saver``'s ``save`` of the same state, with the session left alone. (A
    backend of its own: after this test in the module's shared graph, single-threaded as
    under xdist, ``test_bn_inference_trains_betas_on_moving_statistics`` took 37 s instead
    of 1 s; cause not isolated.)"""
    b = _backend(tiny_quads, tmp_path / "run")
    try:
        phase = Phase(name="top2-adam", train="top", top_blocks=2, optimizer="adam",
                      learning_rate=1e-3, epochs=1)
        b.apply_phase(phase, 0)
        b.set_learning_rate(1e-3)
        b.fit_epoch(phase, 1)  # the Adam slots and the step leave their initial values
        held = b.hold()
        names, arrays = held
        assert any(n.endswith("_Adam_1") for n in names) and len(names) == len(arrays)
        saved = b.save(tmp_path / "saved" / "best")
        before = b.snapshot("Mixed_7c")
        written = b.save(tmp_path / "held" / "best", held)
        assert saved.name == written.name == "best.ckpt"
        for suffix in (".index", ".data-00000-of-00001"):
            assert (saved.parent / f"best.ckpt{suffix}").read_bytes() == \
                (written.parent / f"best.ckpt{suffix}").read_bytes(), suffix
        assert (saved.parent / "checkpoint").read_text() == (written.parent / "checkpoint").read_text()
        after = b.snapshot("Mixed_7c")
        assert all(np.array_equal(before[k], after[k]) for k in before)
    finally:
        b.close()


def test_the_backend_runs_the_recipe_in_recipe_py(built, monkeypatch):
    """The adapter calls recipe.py's functions (no copy of them): freeze, the train op, the
    epoch loop and predict of a phase all go through that module."""
    from backends.slim import recipe

    called = []
    for name in ("get_variables_to_train", "create_train_op", "train_one_epoch", "predict"):
        monkeypatch.setattr(recipe, name, lambda *a, _f=getattr(recipe, name), _n=name, **k:
                            called.append(_n) or _f(*a, **k))
    phase = Phase(name="head", train="head", optimizer="sgd", learning_rate=0.01, epochs=1)
    report = built.apply_phase(phase, 41)
    built.set_learning_rate(0.01)
    stats = built.fit_epoch(phase, 1)
    logits = built.predict("val")
    assert called == ["get_variables_to_train", "create_train_op", "train_one_epoch", "predict"]
    assert report["native"]["trainable_scopes"] == "InceptionV3/Logits"
    assert stats["images"] == 15 and set(stats) == {"loss", "top1", "images", "seconds"}
    assert logits.shape == (len(built.split.val), built.num_classes)


def test_optimizer_descriptions_name_the_constructed_optimizers():
    """describe.optimizer_description: the phase report's words for each optimizer the recipe
    builds, one op or two (a head learning-rate multiplier)."""
    import tensorflow as tf

    from backends.slim import train as slim_train
    from backends.slim.describe import optimizer_description
    from backends.slim.model import Tower
    from common.config import Fidelity

    cases = [
        (Phase(optimizer="sgd", momentum=0.0), Fidelity(),
         "tf.compat.v1.train.GradientDescentOptimizer()"),
        (Phase(optimizer="momentum"), Fidelity(), "tf.compat.v1.train.MomentumOptimizer(momentum=0.9)"),
        (Phase(optimizer="rmsprop", rmsprop_rho=0.8, epsilon=0.5), Fidelity(),
         "tf.compat.v1.train.RMSPropOptimizer(decay=0.8, momentum=0.0, epsilon=0.5)"),
        (Phase(optimizer="rmsprop", rmsprop_rho=0.8, epsilon=0.5),
         Fidelity("aligned", "aligned", "aligned"),
         "RMSPropSlotFromZero(decay=0.8, momentum=0.0, epsilon=0.5)"),
        (Phase(optimizer="adam"), Fidelity(), "tf.compat.v1.train.AdamOptimizer(epsilon=1e-07)"),
        (Phase(optimizer="adamw", weight_decay=0.5), Fidelity(),
         "tf.compat.v1.train.AdamOptimizer(epsilon=1e-07) + decoupled weight decay 0.5 "
         "(w -= lr * wd * w)"),
        (Phase(optimizer="momentum", head_lr_multiplier=10.0), Fidelity(),
         "tf.compat.v1.train.MomentumOptimizer(momentum=0.9) on backbone; x10.0 learning rate "
         "on head"),
    ]
    for phase, fidelity, expected in cases:
        with tf.Graph().as_default():
            backbone = tf.compat.v1.Variable([[0.3, -0.2], [0.1, 0.4]], name="backbone")
            head = tf.compat.v1.Variable([[0.5, -0.5], [0.2, 0.1]], name="head")
            logits = tf.matmul(tf.matmul(tf.constant([[1.0, 2.0]]), backbone), head)
            step = slim_train.build_train_op(
                Tower(logits=logits, features=logits, aux_logits=None), tf.constant([0], tf.int64),
                2, phase, variables_to_train=[backbone, head], trainable_scopes=(),
                head_variables=[head], learning_rate=tf.constant(0.1),
                global_step=tf.compat.v1.train.get_or_create_global_step(), name="p",
                fidelity=fidelity)
            assert optimizer_description(step, phase) == expected


def test_restore_excludes_logits_and_aux_logits_and_reuses_head_rows(tiny_quads, tmp_path):
    source = _backend(tiny_quads, tmp_path / "a", image_size=107, aux=True, seed=0)
    try:
        source.apply_phase(load_recipe("two_phase").phases[0], 0)
        ckpt = source.save(tmp_path / "ckpt" / "source")
        assert ckpt.name == "source.ckpt" and (tmp_path / "ckpt" / "source.ckpt.index").is_file()
        values = {v.op.name: a for v, a in zip(source.model_variables,
                                               source.session.run(source.model_variables))}
    finally:
        source.close()
    assert any(n.startswith("InceptionV3/AuxLogits/") for n in values)
    rows = {0: 2, 1: 0}
    target = _backend(tiny_quads, tmp_path / "b", image_size=107, aux=True, seed=1,
                      weights=WeightsRequest("path", str(ckpt), rows))
    try:
        excluded = ("InceptionV3/Logits", "InceptionV3/AuxLogits")
        got = {v.op.name: a for v, a in zip(target.model_variables,
                                            target.session.run(target.model_variables))}
        assert got.keys() == values.keys()
        head = [n for n in got if _in_scopes(n, excluded)]
        body = [n for n in got if n not in head]
        for n in body:
            np.testing.assert_array_equal(got[n], values[n], err_msg=n)
        aux = [n for n in head if n.endswith("weights") and "AuxLogits" in n]
        assert aux and all(not np.array_equal(got[n], values[n]) for n in aux)
        report = target.restore_report
        assert report["restored"] == len(body) and report["excluded"] == len(head)
        assert report["missing"] == [] and report["shape_mismatch"] == []
        w, b = "InceptionV3/Logits/Conv2d_1c_1x1/weights", "InceptionV3/Logits/Conv2d_1c_1x1/biases"
        for t, s in rows.items():  # a slim class is a column of the 1x1 conv kernel
            np.testing.assert_array_equal(got[w][..., t], values[w][..., s])
            assert got[b][t] == values[b][s]
        assert not np.array_equal(got[w][..., 2], values[w][..., 2])
    finally:
        target.close()


def test_aux_logits_too_small_and_missing_imagenet_checkpoint_are_one_line_errors(tiny_quads,
                                                                                  tmp_path):
    with pytest.raises(BackendError, match="107 px"):
        _backend(tiny_quads, tmp_path / "aux", image_size=75, aux=True)
    with pytest.raises(BackendError) as err:
        _backend(tiny_quads, tmp_path / "imagenet", weights=WeightsRequest("imagenet"))
    message = str(err.value)
    assert "\n" not in message and "inception_v3_2016_08_28.tar.gz" in message
    assert str(cache_root() / "weights" / "imagenet" / "slim") in message
    assert "--weights PATH" in message


def test_optimizers_use_the_recipe_hyperparameters():
    import tensorflow as tf

    from backends.slim import recipe

    graph = tf.Graph()
    with graph.as_default():
        lr = tf.constant(0.1)
        sgd = recipe.configure_optimizer("sgd", lr, Phase(optimizer="sgd"), "a")
        assert isinstance(sgd, tf.compat.v1.train.GradientDescentOptimizer)
        mom = recipe.configure_optimizer("momentum", lr, Phase(optimizer="momentum"), "b")
        assert isinstance(mom, tf.compat.v1.train.MomentumOptimizer) and mom._momentum == 0.9
        phase = Phase(optimizer="rmsprop", rmsprop_rho=0.8, epsilon=1e-7)
        rms = recipe.configure_optimizer("rmsprop", lr, phase, "c")
        # the common recipe's epsilon, not train_image_classifier.py's --opt_epsilon=1.0
        assert (rms._decay, rms._epsilon, rms._momentum) == (0.8, 1e-7, 0.0)
        # one step on w = 1 with gradient 1: TF1's mean-square slot starts at 1.0 and eps is
        # inside the square root (PyTorch: slot at 0, eps outside)
        w = tf.compat.v1.Variable([1.0])
        opt = recipe.configure_optimizer(
            "rmsprop", 0.1, Phase(optimizer="rmsprop", rmsprop_rho=0.9, epsilon=0.5), "e")
        step = opt.apply_gradients([(tf.constant([1.0]), w)])
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(step)
            assert session.run(w)[0] == pytest.approx(1 - 0.1 / (0.9 * 1.0 + 0.1 + 0.5) ** 0.5)
        for name in ("adam", "adamw"):
            adam = recipe.configure_optimizer(name, lr, Phase(optimizer=name), name)
            assert isinstance(adam, tf.compat.v1.train.AdamOptimizer) and adam._epsilon == 1e-7
        with pytest.raises(BackendError):
            recipe.configure_optimizer("adadelta", lr, Phase(), "d")  # no recipe selects it


def _loss_graph(dtype, label_smoothing, aux=False):
    """classification_loss on fixed logits [5, 4] (and aux logits) in ``dtype``: the graph's
    (loss, per-image loss, d loss / d logits, d loss / d aux logits), and the inputs."""
    import tensorflow as tf

    from backends.slim.model import Tower
    from backends.slim.train import classification_loss

    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 3.0, (2, 5, 4))
    labels = np.array([0, 1, 2, 3, 0])
    with tf.Graph().as_default():
        logits, aux_logits = (tf.constant(v, dtype) for v in values)
        loss, per_image = classification_loss(Tower(logits, logits, aux_logits if aux else None),
                                              tf.constant(labels), 4, label_smoothing)
        grads = tf.compat.v1.gradients(loss, [logits, aux_logits])
        with tf.compat.v1.Session() as session:
            out = session.run([loss, per_image, *[g for g in grads if g is not None]])
    return out, values, labels


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_float64_cross_entropy_and_its_gradient_stay_float64(label_smoothing):
    """In a float64 model (bench parity --train --dtype float64) the slim loss is the float64
    cross-entropy, (logsumexp(z) - t . z) per image with t the smoothed one-hot labels, and its
    gradient (softmax(z) - t) / B, to float64 rounding. TF1's
    ``tf.compat.v1.losses.softmax_cross_entropy`` casts the per-image losses to float32 and
    back: it rounded them (1e-8) and scaled the whole gradient by float32(1/5) * 5 = 1 +
    1.5e-8, which 3 momentum steps with BatchNorm training grew into 2.3e-3 in the stem."""
    (loss, per_image, grad), values, labels = _loss_graph("float64", label_smoothing)
    z = values[0]
    t = np.eye(4)[labels] * (1 - label_smoothing) + label_smoothing / 4
    lse = np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1)) + z.max(1)
    expected = lse - np.sum(t * z, 1)
    softmax = np.exp(z - lse[:, None])
    assert per_image.dtype == np.float64
    np.testing.assert_allclose(per_image, expected, rtol=1e-13, atol=0)
    assert loss == pytest.approx(expected.mean(), rel=1e-13)
    np.testing.assert_allclose(grad, (softmax - t) / 5, rtol=1e-12, atol=1e-16)


def test_float32_cross_entropy_is_tf1s_loss_bit_for_bit():
    """In float32 the loss, per-image losses and gradients (main and aux head, weight 0.4,
    label smoothing) are bit-identical to train_image_classifier.py's
    ``tf.compat.v1.losses.softmax_cross_entropy``: only its float32 cast of a float64 model's
    loss is gone."""
    import tensorflow as tf

    (loss, per_image, grad, aux_grad), values, labels = _loss_graph("float32", 0.1, aux=True)
    with tf.Graph().as_default():
        logits, aux_logits = (tf.constant(v, tf.float32) for v in values)
        onehot = tf.one_hot(labels, 4)
        tf1 = tf.compat.v1.losses.softmax_cross_entropy(
            onehot, logits, label_smoothing=0.1, loss_collection=None,
            reduction=tf.compat.v1.losses.Reduction.NONE)
        tf1_loss = tf.reduce_mean(tf1) + tf.compat.v1.losses.softmax_cross_entropy(
            onehot, aux_logits, label_smoothing=0.1, weights=0.4, loss_collection=None)
        grads = tf.compat.v1.gradients(tf1_loss, [logits, aux_logits])
        with tf.compat.v1.Session() as session:
            expected = session.run([tf1_loss, tf1, *grads])
    for ours, theirs in zip((loss, per_image, grad, aux_grad), expected):
        assert ours.dtype == np.float32 and np.array_equal(ours, theirs)


def test_float64_momentum_step_is_the_float64_formula_and_parity_gives_it_float64_numbers(
        monkeypatch):
    """TF1's MomentumOptimizer makes a Python float momentum a float32 tensor, so two float64
    steps (lr 1, gradient 1) end at -(1 + 0.89999998 + 1), 2.4e-8 off; with
    ``float64_hyperparameters`` (a numpy float64 momentum) they are the float64 formula
    ``v = 0.9 v + g; w -= lr v`` exactly. slim's ``bench parity --train --dtype float64`` hands
    its phase machinery those numbers (float32: the phase as given)."""
    import tensorflow as tf

    from backends.slim import model as slim_model
    from backends.slim import parity, recipe
    from common import canonical
    from common.config import float64_hyperparameters

    def two_steps(phase):
        with tf.Graph().as_default():
            w = tf.compat.v1.Variable([0.0], dtype=tf.float64)
            opt = recipe.configure_optimizer("momentum", tf.constant(1.0, tf.float64), phase, "m")
            step = opt.apply_gradients([(tf.constant([1.0], tf.float64), w)])
            with tf.compat.v1.Session() as session:
                session.run(tf.compat.v1.global_variables_initializer())
                session.run(step)
                session.run(step)
                return session.run(w)[0]

    v1 = 1.0
    expected = -(v1 + (0.9 * v1 + 1.0))
    phase = Phase(optimizer="momentum")
    assert two_steps(float64_hyperparameters(phase)) == expected
    assert abs(two_steps(phase) - expected) == pytest.approx(0.9 - float(np.float32(0.9)), rel=1e-6)

    seen = {}

    def stop(spec, entry, phase):
        seen["phase"] = phase
        raise RuntimeError("stop")

    monkeypatch.setattr(slim_model, "trainable_scopes", stop)
    tensors = canonical.random_weights("inception_v3", SPEC.feature_dim, 5, 0)
    for dtype in ("float64", "float32"):
        with pytest.raises(RuntimeError, match="stop"):
            parity.train_steps("inception_v3", tensors, np.zeros((1, 75, 75, 3)),
                               np.zeros(1, int), phase, None, (1,), dtype)
        assert isinstance(seen["phase"].momentum, np.float64) == (dtype == "float64"), dtype
        assert seen["phase"].effective_momentum == 0.9


def test_head_lr_multiplier_is_a_second_optimizer_in_the_train_op():
    """Plain SGD, head x10: one session.run of the train op steps the backbone by lr * g and
    the head by 10 * lr * g (the slim counterpart of PyTorch param groups)."""
    import tensorflow as tf

    from backends.slim import train as slim_train
    from backends.slim.describe import optimizer_description
    from backends.slim.model import Tower

    with tf.Graph().as_default():
        x = tf.constant([[1.0, 2.0], [0.5, -1.0]])
        backbone = tf.compat.v1.Variable([[0.3, -0.2], [0.1, 0.4]], name="backbone")
        head = tf.compat.v1.Variable([[0.5, -0.5], [0.2, 0.1]], name="head")
        logits = tf.matmul(tf.nn.relu(tf.matmul(x, backbone)), head)
        tower = Tower(logits=logits, features=x, aux_logits=None)
        phase = Phase(optimizer="sgd", learning_rate=0.1, head_lr_multiplier=10.0, train="all")
        step = slim_train.build_train_op(
            tower, tf.constant([0, 1], tf.int64), 2, phase, variables_to_train=[backbone, head],
            trainable_scopes=(), head_variables=[head], learning_rate=tf.constant(0.1),
            global_step=tf.compat.v1.train.get_or_create_global_step(), name="p")
        grads = tf.gradients(step.loss_sum / 2, [backbone, head])  # the batch-mean loss
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            before, g = session.run([[backbone, head], grads])
            session.run(step.train_op)
            after = session.run([backbone, head])
    np.testing.assert_allclose(before[0] - after[0], 0.1 * g[0], rtol=1e-5)
    np.testing.assert_allclose(before[1] - after[1], 10 * 0.1 * g[1], rtol=1e-5)
    assert "x10.0 learning rate on head" in optimizer_description(step, phase)


# train_image_classifier.py's flags (tensorflow/models research/slim), name -> type or
# the values its _configure_optimizer / _configure_learning_rate accept.
SCRIPT_FLAGS = {
    "master": str, "train_dir": str, "num_clones": int, "clone_on_cpu": bool,
    "worker_replicas": int, "num_ps_tasks": int, "num_readers": int,
    "num_preprocessing_threads": int, "log_every_n_steps": int, "save_summaries_secs": int,
    "save_interval_secs": int, "task": int,
    "weight_decay": float,
    "optimizer": ("adadelta", "adagrad", "adam", "ftrl", "momentum", "sgd", "rmsprop"),
    "adadelta_rho": float, "adagrad_initial_accumulator_value": float, "adam_beta1": float,
    "adam_beta2": float, "opt_epsilon": float, "ftrl_learning_rate_power": float,
    "ftrl_initial_accumulator_value": float, "ftrl_l1": float, "ftrl_l2": float,
    "momentum": float, "rmsprop_momentum": float, "rmsprop_decay": float, "quantize_delay": int,
    "learning_rate_decay_type": ("fixed", "exponential", "polynomial"),
    "learning_rate": float, "end_learning_rate": float, "label_smoothing": float,
    "learning_rate_decay_factor": float, "num_epochs_per_decay": float, "sync_replicas": bool,
    "replicas_to_aggregate": int, "moving_average_decay": float,
    "dataset_name": str, "dataset_split_name": str, "dataset_dir": str, "labels_offset": int,
    "model_name": str, "preprocessing_name": str, "batch_size": int, "train_image_size": int,
    "max_number_of_steps": int, "use_grayscale": bool,
    "checkpoint_path": str, "checkpoint_exclude_scopes": str, "trainable_scopes": str,
    "ignore_missing_vars": bool,
}
# the optimizer class each --optimizer value builds in _configure_optimizer
SCRIPT_OPTIMIZER_CLASS = {"sgd": "GradientDescentOptimizer", "momentum": "MomentumOptimizer",
                          "rmsprop": "RMSPropOptimizer", "adam": "AdamOptimizer"}


def _parse_script_flags(line: str) -> dict:
    """``line`` parsed with train_image_classifier.py's flag set (absl: --flag=value, --bool)."""
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    for name, kind in SCRIPT_FLAGS.items():
        if kind is bool:
            parser.add_argument(f"--{name}", action="store_true")
        elif isinstance(kind, tuple):
            parser.add_argument(f"--{name}", choices=kind)
        else:
            parser.add_argument(f"--{name}", type=kind)
    args, unknown = parser.parse_known_args(line.split())
    assert not unknown, f"not train_image_classifier.py flags: {unknown}"
    return {k: v for k, v in vars(args).items() if v is not None and v is not False}


@pytest.mark.parametrize("phase", [
    *[p for r in ("head", "partial", "full", "two_phase", "scratch") for p in load_recipe(r).phases],
    Phase(optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_epochs=1, epochs=3,
          train="all", bn="train"),
    Phase(optimizer="sgd", schedule="exponential", train="all", bn="train"),
    Phase(optimizer="momentum", momentum=0.0, train="head"),
], ids=lambda p: f"{p.name}-{p.optimizer}-{p.schedule}")
def test_train_image_classifier_flags_are_the_scripts_own(phase):
    """The flags record parses with the script's flag set and builds the optimizer that ran;
    what no flag can say is listed, not invented."""
    import tensorflow as tf

    from backends.slim import recipe
    from backends.slim import train as slim_train
    from backends.slim.catalog import MODELS
    from backends.slim.model import bn_training_blocks, checkpoint_exclude_scopes, trainable_scopes

    entry = MODELS["inception_v3"]
    scopes = trainable_scopes(SPEC, entry, phase)
    frozen_bn = any(b not in bn_training_blocks(SPEC, phase) for b in SPEC.blocks)
    line, missing = slim_train.train_image_classifier_flags(
        phase, scopes, checkpoint_exclude_scopes(entry), frozen_bn_scopes=frozen_bn)
    flags = _parse_script_flags(line)
    assert flags["trainable_scopes"] == ",".join(scopes)
    assert flags["learning_rate"] == phase.learning_rate
    expressible = phase.schedule in ("fixed", "exponential")
    assert flags.get("learning_rate_decay_type") == (phase.schedule if expressible else None)
    expected = [what for what, applies in (
        ("schedule", not expressible), ("warmup_epochs", phase.warmup_epochs > 0),
        ("adamw", phase.optimizer == "adamw"), ("head_lr_multiplier", phase.head_lr_multiplier != 1),
        ("batch_norm", frozen_bn)) if applies]
    assert [m.split(" ")[0].rstrip(":") for m in missing] == expected
    with tf.Graph().as_default():
        opt = recipe.configure_optimizer(phase.optimizer, 0.1, phase, "x")
    assert type(opt).__name__ == SCRIPT_OPTIMIZER_CLASS[flags["optimizer"]]
    if flags["optimizer"] == "momentum":
        assert opt._momentum == flags["momentum"]
    if flags["optimizer"] == "rmsprop":
        assert (opt._decay, opt._momentum, opt._epsilon) == \
            (flags["rmsprop_decay"], flags["rmsprop_momentum"], flags["opt_epsilon"])
    if flags["optimizer"] == "adam":
        assert opt._epsilon == flags["opt_epsilon"]


def test_restore_fails_in_one_line_unless_ignore_missing_vars(built, tmp_path):
    """As train_image_classifier.py without --ignore_missing_vars: a variable the model needs
    missing from the checkpoint, or of another shape, fails the restore."""
    import tensorflow as tf

    from backends.slim import weights as slim_weights
    from backends.slim.model import checkpoint_exclude_scopes

    values = dict(zip([v.op.name for v in built.model_variables],
                      built.session.run(built.model_variables)))
    gone = "InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights"
    bent = "InceptionV3/Conv2d_1a_3x3/BatchNorm/beta"

    def checkpoint(name, drop=(), reshape=()):
        tensors = {n: np.zeros(3, np.float32) if n in reshape else v
                   for n, v in values.items() if n not in drop}
        prefix = str(tmp_path / name)
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                          tensors=list(tensors.values()))  # eager: a V2 checkpoint, no graph
        return prefix

    exclude = checkpoint_exclude_scopes(built.entry)
    for ckpt, fragment in ((checkpoint("missing", drop=[gone]), f"missing, e.g. {gone}"),
                           (checkpoint("bent", reshape=[bent]), f"of another shape, e.g. {bent} [3]")):
        with pytest.raises(BackendError) as err:
            slim_weights.restore_excluding(built.session, ckpt, built.model_variables, exclude)
        assert fragment in str(err.value) and "--ignore-missing-vars" in str(err.value)
        assert "\n" not in str(err.value)
    with built.graph.as_default():  # assign_from_checkpoint_fn adds its ops to the graph
        report = slim_weights.restore_excluding(built.session, ckpt, built.model_variables,
                                                exclude, ignore_missing_vars=True)
    assert report["shape_mismatch"] == [bent] and report["missing"] == []
    assert report["ignore_missing_vars"] is True and report["restored"] == len(values) - 1 - \
        report["excluded"]


def test_imagenet_weights_use_their_own_normalisation(tiny_quads, tmp_path):
    # slim's ResNet checkpoints expect vgg_preprocessing's mean subtraction; suite-made
    # weights use the model's own normalisation in every backend
    cls = get_backend("slim")
    for model, weights, expected in (("resnet50", "imagenet", "vgg"), ("resnet50", "source", "torch"),
                                     ("inception_v3", "imagenet", "inception")):
        config = tiny_config("slim", "head", tiny_quads, tmp_path, model=model, weights=weights)
        assert cls(config, tmp_path).preprocessing_name() == expected


def test_bf16_is_refused_in_one_line(tiny_quads, tmp_path):
    config = tiny_config("slim", "head", tiny_quads, tmp_path / "run", precision="bf16")
    b = get_backend("slim")(config, tmp_path / "run")
    with pytest.raises(BackendError) as err:
        b.setup(driver.prepare_split(config), 75)
    assert "fp32 only" in str(err.value) and "\n" not in str(err.value)


def test_linear_probe_throughput_times_the_head_only_sgd_step(built):
    """What the driver records for a linear probe's train img/s (head, sgd) is what ran."""
    report = built.apply_phase(driver.LINEAR_PROBE_THROUGHPUT_PHASE, 9)
    record = driver.throughput_phase_record(driver.LINEAR_PROBE_THROUGHPUT_PHASE, SPEC)
    assert record["trainable_blocks"] == ["head"] and record["optimizer"] == "sgd"
    tp = built.throughput(2, "fp32", 1, 0)
    assert tp["timed"] == {"optimizer": "tf.compat.v1.train.GradientDescentOptimizer()",
                           "trainable_tensors": 2, "trainable_params": 2048 * 5 + 5, "metrics": []}
    assert report["native"]["trainable_scopes"] == "InceptionV3/Logits"
    assert tp["precision"] == "fp32" and built.precision_used()["requested"] == "fp32"


def test_timed_steps_read_a_device_batch_in_a_copy_and_leave_the_trained_graph_alone(built):
    """The throughput step (docs/measurements.md, "What a throughput row times"): the phase's
    train op and the eval logits, copied into a graph of their own whose iterator outputs
    are a batch held in variables (no tf.data, no feed); the copy starts from the trained
    values, and the trained graph gains no op and keeps every variable and slot as it was."""
    from backends.slim import throughput
    from common import timing

    built.apply_phase(Phase(name="t", train="top", top_blocks=2, optimizer="momentum"), 7)
    built._set_learning_rate(0.05)
    graph = built.graph
    ops_before = len(graph.get_operations())
    variables = graph.get_collection("variables") + graph.get_collection("local_variables")
    before = built.session.run(variables)

    copy = built._step_graph(4)
    try:
        # no path from either step back to the tf.data iterator: the batch is the variables'
        iterators = {op.name for op in copy.session.graph.get_operations()
                     if op.type in ("IteratorGetNext", "IteratorV2", "Iterator")}
        assert iterators  # imported, never run
        for fetch in (copy.train, copy.infer):
            ancestors = {t.op.name for t in _inputs_closure(fetch)}
            assert not ancestors & iterators
            assert "timed_batch/images" in ancestors
        labels = {t.op.name for t in _inputs_closure(copy.train)}
        assert "timed_batch/labels" in labels
        # the copy starts from the trained values: same logits on the same batch
        images, _ = throughput.device_batch(4, built.image_size, built.num_classes,
                                            built.config.train.seed)
        fed = built.session.run(built.eval_tower.logits, {built.pipes.images: images})
        np.testing.assert_array_equal(copy.session.run(copy.infer), fed)
        # and its train op trains the copy's variables
        head, = [v for v in copy.session.graph.get_collection("variables")
                 if v.op.name == "InceptionV3/Logits/Conv2d_1c_1x1/weights"]
        w0 = copy.session.run(head)
        copy.session.run(copy.train)
        assert not np.array_equal(copy.session.run(head), w0)
    finally:
        copy.close()

    tp = built.throughput(4, "fp32", 2, 1)
    assert tp["timed_step"] == timing.timed_step(4)
    assert len(graph.get_operations()) == ops_before
    for v, old, new in zip(variables, before, built.session.run(variables)):
        np.testing.assert_array_equal(old, new, err_msg=v.name)


def _inputs_closure(tensor):
    """Every tensor ``tensor`` depends on (data and control inputs), itself included."""
    seen, stack, out = set(), [tensor.op], []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        out.extend(op.outputs)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return out


def test_aux_head_starts_from_the_same_distribution_as_torch():
    """slim's AuxLogits initialisers and the PyTorch backend's init_aux_head_like_slim
    draw from the same truncated normals (std and 2-stddev cut per layer)."""
    pytest.importorskip("torchvision")
    import tensorflow as tf
    import torch
    from torchvision.models.inception import InceptionAux

    from backends.pytorch.model import init_aux_head_like_slim
    from backends.slim.catalog import MODELS
    from backends.slim.model import _inception_aux_head, arg_scope
    from backends.slim.compat import slim

    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        with slim.arg_scope(arg_scope(MODELS["inception_v3"], 0.0)):
            with tf.compat.v1.variable_scope("AuxLogits"):
                _inception_aux_head(tf.zeros([1, 17, 17, 768]), 5)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            got = {v.op.name: a for v, a in zip(tf.compat.v1.global_variables(),
                                                session.run(tf.compat.v1.global_variables()))}
    torch.manual_seed(0)
    aux = InceptionAux(768, 5)
    init_aux_head_like_slim(aux)
    pairs = {"Conv2d_1b_1x1": aux.conv0.conv.weight, "Conv2d_2a_5x5": aux.conv1.conv.weight,
             "Conv2d_2b_1x1": aux.fc.weight}
    for layer, weight in pairs.items():
        s, t = got[f"AuxLogits/{layer}/weights"], weight.detach().numpy()
        assert s.size == t.size
        assert t.std() == pytest.approx(s.std(), rel=0.04), layer
        assert np.abs(t).max() <= np.abs(s).max() * 1.02 and np.abs(s).max() <= np.abs(t).max() * 1.02
    assert not got["AuxLogits/Conv2d_2b_1x1/biases"].any() and not aux.fc.bias.detach().any()


def test_resume_after_interruption_runs_only_the_missing_epoch(tiny_quads, tmp_path, monkeypatch):
    cls = get_backend("slim")
    config = tiny_config("slim", "two_phase", tiny_quads, tmp_path / "run")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, throughput_steps=1))
    original, original_apply = cls.fit_epoch, cls.apply_phase
    calls = []

    def interrupted_before_epoch_2(self, phase, index):
        # between epoch 1 (phase 1) and epoch 2 (phase 2), before the phase-2 graph is built
        if index == 1:
            raise RuntimeError("interrupted before epoch 2")
        return original_apply(self, phase, index)

    def counted(self, phase, global_epoch):
        calls.append(global_epoch)
        return original(self, phase, global_epoch)

    monkeypatch.setattr(cls, "fit_epoch", counted)
    monkeypatch.setattr(cls, "apply_phase", interrupted_before_epoch_2)
    first = driver.run(config)
    assert first["status"] == "failed" and "interrupted" in first["error"]
    assert calls == [1]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "last.ckpt.index").is_file()
    import tensorflow as tf  # slim's --checkpoint_path=DIR idiom finds the newest save

    assert tf.train.latest_checkpoint(str(checkpoints)) == str(checkpoints / "last.ckpt")

    calls.clear()
    monkeypatch.setattr(cls, "apply_phase", original_apply)
    second = driver.run(config)
    assert second["status"] == "ok", second.get("traceback")
    assert calls == [2]
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert validate_result(on_disk) == []
    assert [c["global_epoch"] for c in on_disk["curves"]] == [1, 2]
    assert [p["native"]["trainable_scopes"] for p in on_disk["phases"]] == \
        ["InceptionV3/Logits", ",".join(TOP2)]
    assert on_disk["versions"]["tf_slim"] and on_disk["throughput"]["precision"] == "fp32"
    precision = on_disk["precision"]  # observed in the fit and predict paths of this process
    assert (precision["requested"], precision["train"], precision["eval"]) == ("fp32",) * 3
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("image_size", [None, 75])
def test_tfrecord_round_trip(tiny_quads, tmp_path, image_size):
    from backends.slim.tfrecord import export_split, read_tfrecords

    config = tiny_config("slim", "head", tiny_quads, tmp_path / "run")
    split = driver.prepare_split(config)
    info = export_split(split, tmp_path / "tfr", image_size)
    assert info["counts"] == {s: len(split.subset(s)) for s in ("train", "val", "test")}
    assert (tmp_path / "tfr" / "train-00000-of-00001.tfrecord").is_file()
    assert (tmp_path / "tfr" / "labels.txt").read_text() == \
        "".join(f"{i}:{c}\n" for i, c in enumerate(split.classes))
    for subset in ("train", "test"):
        images, labels = read_tfrecords(tmp_path / "tfr", subset)
        samples = split.subset(subset)
        np.testing.assert_array_equal(labels, [s.label for s in samples])
        size = image_size or 80  # the synthetic quads are 80 px
        expected = np.stack([load_image(s.path, size) for s in samples])
        assert images.dtype == np.uint8 and images.shape == expected.shape
        np.testing.assert_array_equal(images, expected)


def test_batch_norm_decay_is_the_suite_value_not_slims_default():
    # slim's inception_v3_arg_scope defaults to batch_norm_decay=0.9997; the suite uses BN_DECAY
    require_backend("slim")
    from backends.slim.catalog import MODELS
    from backends.slim.model import arg_scope, normalizes_convolutions
    from common.models import BN_DECAY

    without_batch_norm = []
    for name, entry in MODELS.items():
        scope = arg_scope(entry, 0.0)
        decays = {(kw.get("normalizer_params") or {}).get("decay") for kw in scope.values()
                  if kw.get("normalizer_params")}
        if not normalizes_convolutions(scope):
            without_batch_norm.append(name)
        assert decays == ({BN_DECAY} if normalizes_convolutions(scope) else set()), (name, decays)
    assert without_batch_norm == ["vgg16"]  # vgg_arg_scope: no batch_norm, no decay to set


# ------------------------------------------- fine-tuning modes of the guides (issue 12)

def test_bn_inference_trains_betas_on_moving_statistics(built):
    """bn = "inference": every batch_norm with is_training=False (the eval tower's graph, no
    update op), the betas of the trained scopes still in variables_to_train: after an epoch
    the moving statistics are bit-identical and the betas moved."""
    phase = dataclasses.replace(load_recipe("two_phase").phases[1], bn="inference",
                                learning_rate=0.1)
    report = built.apply_phase(phase, 21)  # a phase index of its own: its own optimizer slots
    assert report["native"]["update_ops"] == 0
    assert report["native"]["bn"].startswith("batch_norm is_training=True in: none")
    assert built.step.update_ops == [] and built._train_towers[((), False)] is built.eval_tower
    assert any(n.endswith("/BatchNorm/beta") for n in built.trainable_names())
    assert report["native"]["not_expressed_by_flags"][-1].startswith(
        "batch_norm is_training=False everywhere")
    before = built.snapshot("Mixed_7b")
    built.set_learning_rate(0.1)
    built.fit_epoch(phase, 1)
    after = built.snapshot("Mixed_7b")
    moving = [k for k in before if "/moving_" in k]
    betas = [k for k in before if k.endswith("/beta")]
    assert len(moving) == 2 * len(betas) == 2 * 9
    assert all(np.array_equal(before[k], after[k]) for k in moving)
    assert all(not np.array_equal(before[k], after[k]) for k in betas)


def test_trainable_scopes_as_written_map_to_blocks_or_fail_in_one_line(built):
    from common.config import parse_phase

    built.apply_phase(load_recipe("two_phase").phases[1], 31)
    top2 = sorted(built.trainable_names())
    report = built.apply_phase(parse_phase({"trainable_scopes": list(TOP2)}, "r"), 32)
    assert sorted(built.trainable_names()) == top2
    assert report["trainable_blocks"] == ["Mixed_7b", "Mixed_7c"]
    assert report["native_selection"]["exact"] and report["native"]["update_ops"] == 36
    branch = "InceptionV3/Mixed_7c/Branch_3"
    part = built.apply_phase(parse_phase({"trainable_scopes": [branch, "InceptionV3/Logits"]},
                                         "r"), 33)
    assert sorted(built.trainable_names()) == sorted([f"{branch}/Conv2d_0b_1x1/BatchNorm/beta",
                                                      f"{branch}/Conv2d_0b_1x1/weights",
                                                      "InceptionV3/Logits/Conv2d_1c_1x1/biases",
                                                      "InceptionV3/Logits/Conv2d_1c_1x1/weights"])
    assert part["trainable_blocks"] == [] and 0 < part["partially_trained_blocks"]["Mixed_7c"] < 0.2
    assert part["native"]["update_ops"] == 2  # the one batch_norm of the branch trains
    assert part["native_selection"]["partially_trained_blocks"] == {"Mixed_7c": [branch]}
    with pytest.raises(BackendError, match=r"trainable_scopes names 'InceptionV3/Mixed_7c/Branch_9', "
                                           r"which holds no trainable variable of slim inception_v3; "
                                           r"InceptionV3/Mixed_7c holds: InceptionV3/Mixed_7c/Branch_0, "):
        built.apply_phase(parse_phase({"trainable_scopes": ["InceptionV3/Mixed_7c/Branch_9"]}, "r"), 34)
    with pytest.raises(BackendError, match=r"'InceptionV3/Mixed_8a', which is not a variable scope "
                                           r"of slim inception_v3; its scopes are: InceptionV3/"):
        built.apply_phase(parse_phase({"trainable_scopes": ["InceptionV3/Mixed_8a"]}, "r"), 35)


@pytest.mark.parametrize("flags", [
    "--trainable_scopes=InceptionV3/Mixed_7b,InceptionV3/Mixed_7c,InceptionV3/Logits "
    "--checkpoint_exclude_scopes=InceptionV3/Logits,InceptionV3/AuxLogits --learning_rate=0.001 "
    "--train_dir=/tmp/train --dataset_name=flowers",
    "--optimizer=momentum --momentum=0.8 --learning_rate=0.05 --learning_rate_decay_type=fixed "
    "--weight_decay=0 --label_smoothing=0.1",
    "--optimizer sgd --learning_rate_decay_factor=0.5 --num_epochs_per_decay=3 "
    "--trainable_scopes=InceptionV3/Logits",
    "--optimizer=adam --opt_epsilon=0.1 --ignore_missing_vars",
])
def test_pasted_slim_flags_are_the_phase_the_script_runs(flags):
    """A train_image_classifier.py command line as a recipe (bench run --slim-flags): the slim
    backend writes the phase back as exactly those flags, with the script's defaults for the
    ones not given, and nothing the flags cannot say (the script's batch_norm is_training=True
    everywhere: bn = "train")."""
    from backends.slim import train as slim_train
    from backends.slim.catalog import MODELS
    from backends.slim.model import trainable_scopes
    from benchmarks.slim_flags import DEFAULTS, from_slim_flags, parse_flags

    command = from_slim_flags(flags, epochs=3)
    [phase] = command.recipe.phases
    entry = MODELS["inception_v3"]
    scopes = trainable_scopes(SPEC, entry, phase)
    given = parse_flags(flags)
    exclude = tuple(command.recipe.checkpoint_exclude_scopes) or entry.native("head")
    line, missing = slim_train.train_image_classifier_flags(
        phase, scopes, exclude, frozen_bn_scopes=False,
        ignore_missing_vars=command.recipe.ignore_missing_vars)
    assert missing == []
    written = _parse_script_flags(line)
    script = {name: SCRIPT_FLAGS[name] for name in written}
    for name, kind in script.items():
        value = given.get(name, DEFAULTS.get(name))
        if name == "trainable_scopes" and "trainable_scopes" not in given:
            value = ",".join(scopes)  # every scope: the script trains every variable
        if value is None or isinstance(kind, tuple) or kind is str:
            assert written[name] == value or name == "checkpoint_exclude_scopes", name
        elif kind is bool:
            assert written[name] is True
        else:
            assert written[name] == kind(value), name
    assert written["learning_rate_decay_type"] == given.get("learning_rate_decay_type", "exponential")
    assert set(written) >= {"optimizer", "learning_rate", "weight_decay"}
    assert command.run_options["--image-size"] == 299 and command.run_options["--aux-logits"]
    assert (command.recipe.preprocessing, command.recipe.dropout, phase.bn) == ("inception", 0.2, "train")
    # the script's preprocess_image(..., is_training=True) leaves fast_mode at its default, True
    assert get_preset(command.recipe.preprocessing).color.orderings == (("brightness", "saturation"),)


def test_every_script_flag_is_taken_ignored_or_refused_with_a_reason():
    from benchmarks.slim_flags import (IGNORED_FLAGS, RECIPE_FLAGS, REFUSED, RUN_FLAGS,
                                       SlimFlagsError, from_slim_flags)

    handled = set(RECIPE_FLAGS) | set(RUN_FLAGS) | set(IGNORED_FLAGS) | set(REFUSED)
    assert handled == set(SCRIPT_FLAGS)  # the script's own flags, no invented ones
    for bad, fragment in (("--max_number_of_steps=1000", "pass --epochs"),
                          ("--optimizer=ftrl", "--optimizer=ftrl is not supported"),
                          ("--learning_rate_decay_type=polynomial", "the suite takes fixed, exponential"),
                          ("--trainable_scope=x", "--trainable_scope is not a "
                                                  "train_image_classifier.py flag"),
                          ("--model_name=mobilenet_v1", "--model_name=mobilenet_v1 is not a model"),
                          ("--num_epochs_per_decay=2.5", "every whole number of epochs"),
                          ("--learning_rate", "--learning_rate has no value")):
        with pytest.raises(SlimFlagsError) as err:
            from_slim_flags(bad)
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_dropout_is_slims_dropout_1b_in_train_towers_only(tiny_quads, tmp_path):
    """dropout = 0.5: slim.dropout(keep_prob=0.5) as InceptionV3/Logits/Dropout_1b, active in
    the train tower (masks drawn per run) and absent from the eval tower's logits."""
    from common.preprocess import get_normalisation

    config = tiny_config("slim", "head", tiny_quads, tmp_path, image_size=75)
    config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, dropout=0.5))
    split = driver.prepare_split(config)
    b = get_backend("slim")(config, tmp_path)
    try:
        b.setup(split, 75)
        b.build(SPEC, split.num_classes, WeightsRequest("none"), 0)
        from backends.slim.compat import identity_hashing

        with b.graph.as_default(), identity_hashing():  # a train tower (apply_phase's, no train op)
            tower = b._tower(("InceptionV3/Logits",), dropout_training=True, reuse=True)
        ops = [op.name for op in b.graph.get_operations() if "Dropout_1b" in op.name]
        # the eval tower's is an identity, the train tower's (name scope InceptionV3_1) draws
        assert ops and all(re.match(r"InceptionV3(_\d+)?/Logits/Dropout_1b/", n) for n in ops)
        assert "InceptionV3/Logits/Dropout_1b/Identity" in ops
        assert any(n.endswith("Dropout_1b/dropout/random_uniform/RandomUniform") for n in ops)
        norm = get_normalisation("inception")
        images = np.stack([norm.apply(load_image(s.path, 75)) for s in split.test[:4]])
        feed = {b.pipes.images: images}
        first, second = (b.session.run(tower.logits, feed) for _ in range(2))
        assert not np.array_equal(first, second)
        features, logits = b.session.run([b.eval_tower.features, b.eval_tower.logits], feed)
        w, bias = b.session.run([b._variable("InceptionV3/Logits/Conv2d_1c_1x1/weights"),
                                 b._variable("InceptionV3/Logits/Conv2d_1c_1x1/biases")])
        np.testing.assert_allclose(logits, features @ w[0, 0] + bias, rtol=1e-4, atol=1e-5)
        assert np.array_equal(b.session.run(b.eval_tower.logits, feed), logits)
    finally:
        b.close()


def test_aligned_rmsprop_starts_the_slot_at_zero_and_aligned_adamw_decays_kernels_only():
    """fidelity rmsprop = "aligned": TF1's RMSProp with its mean-square slot from 0 (one step
    on w = 1, g = 1: w - lr / sqrt(0.1 + eps), as Keras and aligned torch); native starts at
    1.0. weight_decay = "aligned": AdamW's decoupled decay reaches kernels only (slim's
    l2_regularizer already does: conv/fc weights)."""
    import tensorflow as tf

    from backends.slim import recipe
    from backends.slim import train as slim_train
    from backends.slim.model import Tower
    from common.config import Fidelity

    aligned = Fidelity("aligned", "aligned", "aligned")
    phase = Phase(optimizer="rmsprop", rmsprop_rho=0.9, epsilon=0.5)
    for fidelity, start in ((Fidelity(), 1.0), (aligned, 0.0)):
        with tf.Graph().as_default():
            w = tf.compat.v1.Variable([1.0])
            opt = recipe.configure_optimizer("rmsprop", 0.1, phase, "r", fidelity)
            assert isinstance(opt, recipe.RMSPropSlotFromZero) is (fidelity == aligned)
            step = opt.apply_gradients([(tf.constant([1.0]), w)])
            with tf.compat.v1.Session() as session:
                session.run(tf.compat.v1.global_variables_initializer())
                session.run(step)
                assert session.run(w)[0] == pytest.approx(
                    1 - 0.1 / (0.9 * start + 0.1 + 0.5) ** 0.5, rel=1e-6)
    adamw = Phase(optimizer="adamw", learning_rate=0.1, weight_decay=0.5, train="all")
    for fidelity, bias_after in ((Fidelity(), 1 - 0.1 * 0.5), (aligned, 1.0)):
        with tf.Graph().as_default():
            kernel = tf.compat.v1.Variable(tf.ones((2, 2)), name="kernel")
            bias = tf.compat.v1.Variable(tf.ones(2), name="bias")
            # the bias's gradient is 0, so Adam's own step leaves it: only the decay moves it
            logits = tf.matmul(tf.constant([[1.0, 2.0]]), kernel) + 0.0 * bias
            step = slim_train.build_train_op(
                Tower(logits=logits, features=logits, aux_logits=None), tf.constant([0], tf.int64),
                2, adamw, variables_to_train=[kernel, bias], trainable_scopes=(),
                head_variables=[], learning_rate=tf.constant(0.1),
                global_step=tf.compat.v1.train.get_or_create_global_step(), name="p",
                fidelity=fidelity)
            with tf.compat.v1.Session() as session:
                session.run(tf.compat.v1.global_variables_initializer())
                session.run(step.train_op)
                np.testing.assert_allclose(session.run(bias), bias_after, rtol=1e-6)
                assert not np.allclose(session.run(kernel), 1.0)


def test_slim_adam_is_the_aligned_formula_in_both_settings():
    """TF1's AdamOptimizer (slim's ``--optimizer=adam``) is what fidelity adam = "aligned"
    makes every framework compute (the bias correction in the step size, eps on sqrt(v):
    ``epsilon_hat_adam``), natively too: two steps (gradients 1, then -0.5) of Adam and AdamW
    (its decay at each group's own lr), the head at x1 and x10 (two optimizers in one op)."""
    import tensorflow as tf

    from backends.slim import recipe
    from common.config import Fidelity

    grads = (1.0, -0.5)
    for optimizer, wd, mult in (("adam", 0.0, 1.0), ("adam", 0.0, 10.0), ("adamw", 0.3, 10.0)):
        phase = Phase(optimizer=optimizer, learning_rate=0.1, epsilon=0.5, weight_decay=wd,
                      head_lr_multiplier=mult, train="all")
        for fidelity in (Fidelity(), Fidelity(adam="aligned")):
            with tf.Graph().as_default():
                backbone = tf.compat.v1.Variable([1.0], name="backbone")
                head = tf.compat.v1.Variable([1.0], name="head")
                g = tf.compat.v1.placeholder(tf.float32, [])
                loss = g * tf.reduce_sum(backbone) + g * tf.reduce_sum(head)  # gradient g for both
                train_op, _, _ = recipe.create_train_op(
                    loss, [backbone, head], [head], phase, learning_rate=tf.constant(0.1),
                    global_step=tf.compat.v1.train.get_or_create_global_step(), update_ops=[],
                    name="p", fidelity=fidelity)
                after = []
                with tf.compat.v1.Session() as session:
                    session.run(tf.compat.v1.global_variables_initializer())
                    for value in grads:
                        session.run(train_op, {g: value})
                        after.append((session.run(backbone)[0], session.run(head)[0]))
            for lr, i in ((0.1, 0), (0.1 * mult, 1)):
                expected = epsilon_hat_adam(1.0, grads, lr, 0.5, wd, decoupled=optimizer == "adamw")
                assert [a[i] for a in after] == pytest.approx(expected, rel=1e-5), (optimizer, mult, lr)


def test_aligned_adam_gives_a_float64_slim_model_its_betas_and_epsilon_in_float64():
    """In a float64 graph (``bench parity --train --dtype float64``) TF1's AdamOptimizer makes
    its Python-float betas and epsilon float32 tensors (and its beta powers float32 variables)
    before casting them, so natively a first step with a gradient near epsilon's scale is off
    the formula by 1e-6 relative; fidelity adam = "aligned" gives them the learning rate's
    dtype: the formula to 1e-12."""
    import tensorflow as tf

    from backends.slim import recipe
    from common.config import Fidelity

    g = 1e-5  # large enough to step, small enough that epsilon (1e-7 / sqrt(0.001)) counts

    def first_step(fidelity, dtype):
        with tf.Graph().as_default():
            w = tf.compat.v1.Variable(np.ones(1), dtype=dtype)
            opt = recipe.configure_optimizer("adam", tf.constant(0.1, dtype),
                                             Phase(optimizer="adam", epsilon=1e-7), "a", fidelity)
            step = opt.apply_gradients([(tf.constant([g], dtype), w)])
            with tf.compat.v1.Session() as session:
                session.run(tf.compat.v1.global_variables_initializer())
                session.run(step)
                return 1 - session.run(w)[0]

    expected = 1 - epsilon_hat_adam(1.0, [g], 0.1, 1e-7)[0]
    for fidelity, exact in ((Fidelity(adam="aligned"), True), (Fidelity(), False)):
        moved = first_step(fidelity, tf.float64)
        assert bool(moved == pytest.approx(expected, rel=1e-12)) is exact
        assert moved == pytest.approx(expected, rel=1e-5)
    # float32: the same numbers either way (TensorFlow made them float32 already)
    assert first_step(Fidelity(adam="aligned"), tf.float32) == first_step(Fidelity(), tf.float32)


def test_slim_batch_norm_feeds_its_moving_variance_the_unbiased_batch_variance():
    """slim.batch_norm in training (TF's fused batch norm): the moving variance moves towards
    n/(n-1) x the biased batch variance, 1.0667 at n = 16, as torch (Keras 3 natively: 1.0;
    fidelity switch bn_moving_variance)."""
    import tensorflow as tf

    from backends.slim.compat import slim
    from common.models import BN_DECAY

    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 1, 1, 4)).astype(np.float32)
    with tf.Graph().as_default():
        out = slim.batch_norm(tf.constant(x), decay=BN_DECAY, epsilon=1e-3, scale=False,
                              is_training=True, scope="bn")
        update = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        variance = [v for v in tf.compat.v1.global_variables() if "moving_variance" in v.name][0]
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            before = session.run(variance)
            session.run([out, update])
            after = session.run(variance)
    fed = (after - BN_DECAY * before) / (1 - BN_DECAY)
    np.testing.assert_allclose(fed / x.reshape(-1, 4).var(axis=0), 16 / 15, rtol=1e-4)


# ------------------------------------------------------------ fidelity: head_init

def test_aligned_head_init_writes_the_common_draw_into_the_slim_head(tiny_quads, tmp_path):
    """fidelity head_init = "aligned": the new head read back through the weight conversion
    (``head_from_session``) is ``common.canonical.aligned_head`` of the run's seed, hidden
    layer included; ``native`` is slim's own xavier draw; another seed, another head."""
    from backends.slim.convert import head_from_session
    from common.canonical import aligned_head

    def head(setting, seed, hidden):
        config = tiny_config("slim", "two_phase", tiny_quads, tmp_path, seed=seed)
        config = dataclasses.replace(config, recipe=dataclasses.replace(
            config.recipe, fidelity=dataclasses.replace(config.recipe.fidelity,
                                                        head_init=setting)))
        split = driver.prepare_split(config)
        b = get_backend("slim")(config, tmp_path / f"{setting}{seed}{hidden}")
        b.setup(split, 75)
        b.build(SPEC, split.num_classes, WeightsRequest("none"), hidden)
        try:
            return (head_from_session("inception_v3", b.session, b.model_variables),
                    aligned_head(seed, 2048, split.num_classes, hidden))
        finally:
            b.close()

    for seed, hidden in ((0, 0), (1, 16)):
        got, want = head("aligned", seed, hidden)
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    native, want = head("native", 0, 0)
    assert not np.allclose(native["head/kernel"], want["head/kernel"])
    # the inception arg_scope's variance_scaling_initializer: He truncated normal (std
    # sqrt(2 / fan_in)), tails beyond Glorot's limit; zero biases (docs/differences.md)
    kernel = native["head/kernel"]
    assert abs(kernel.std() - np.sqrt(2 / 2048)) < 0.05 * np.sqrt(2 / 2048)
    assert np.abs(kernel).max() > np.sqrt(6 / (2048 + 5)) and not native["head/bias"].any()
