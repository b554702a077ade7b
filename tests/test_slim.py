"""TF-Slim backend specifics: the tf_keras alias, trainable_scopes, BN per scope,
restore with checkpoint_exclude_scopes, resume, TFRecord export (CPU, 75 px)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys

import numpy as np
import pytest

from conftest import require_backend, tiny_config

from backends.base import BackendError, WeightsRequest, get_backend
from benchmarks import driver
from common.config import Phase, load_recipe
from common.data import load_image
from common.models import HEAD, get_model
from common.paths import cache_root
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
    # L2 weights_regularizer terms of the trained conv/fc weights only
    with built.graph.as_default():
        assert len(slim_train.regularization_losses(built.variables_to_train)) == 19
    # BN trains (has update ops) in the two trained blocks only: 18 batch_norms x 2
    assert native["update_ops"] == 36


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
        report = target.weights_report
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

    from backends.slim import train as slim_train

    graph = tf.Graph()
    with graph.as_default():
        lr = tf.constant(0.1)
        sgd, _ = slim_train.configure_optimizer("sgd", lr, Phase(optimizer="sgd"), "a")
        assert isinstance(sgd, tf.compat.v1.train.GradientDescentOptimizer)
        mom, desc = slim_train.configure_optimizer("momentum", lr, Phase(optimizer="momentum"), "b")
        assert isinstance(mom, tf.compat.v1.train.MomentumOptimizer) and mom._momentum == 0.9
        phase = Phase(optimizer="rmsprop", rmsprop_rho=0.8, epsilon=1e-7)
        rms, _ = slim_train.configure_optimizer("rmsprop", lr, phase, "c")
        # the common recipe's epsilon, not train_image_classifier.py's --opt_epsilon=1.0
        assert (rms._decay, rms._epsilon, rms._momentum) == (0.8, 1e-7, 0.0)
        for name in ("adadelta", "adagrad", "ftrl", "adam", "adamw"):
            slim_train.configure_optimizer(name, lr, Phase(optimizer="adam"), name)
        with pytest.raises(BackendError):
            slim_train.configure_optimizer("lamb", lr, Phase(), "d")


def test_resume_after_interruption_runs_only_the_missing_epoch(tiny_quads, tmp_path, monkeypatch):
    cls = get_backend("slim")
    config = tiny_config("slim", "two_phase", tiny_quads, tmp_path / "run")
    original = cls.fit_epoch
    calls = []

    def interrupted_at_epoch_2(self, phase, global_epoch):
        if global_epoch == 2:
            raise RuntimeError("interrupted at epoch 2")
        calls.append(global_epoch)
        return original(self, phase, global_epoch)

    def counted(self, phase, global_epoch):
        calls.append(global_epoch)
        return original(self, phase, global_epoch)

    monkeypatch.setattr(cls, "fit_epoch", interrupted_at_epoch_2)
    first = driver.run(config)
    assert first["status"] == "failed" and "interrupted" in first["error"]
    assert calls == [1]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "last.ckpt.index").is_file()
    import tensorflow as tf  # slim's --checkpoint_path=DIR idiom finds the newest save

    assert tf.train.latest_checkpoint(str(checkpoints)) == str(checkpoints / "last.ckpt")

    calls.clear()
    monkeypatch.setattr(cls, "fit_epoch", counted)
    second = driver.run(config)
    assert second["status"] == "ok", second.get("traceback")
    assert calls == [2]
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert validate_result(on_disk) == []
    assert [c["global_epoch"] for c in on_disk["curves"]] == [1, 2]
    assert [p["native"]["trainable_scopes"] for p in on_disk["phases"]] == \
        ["InceptionV3/Logits", ",".join(TOP2)]
    assert on_disk["versions"]["tf_slim"] and on_disk["throughput"]["precision"] == "fp32"
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
    from backends.slim.model import arg_scope
    from common.models import BN_DECAY

    for name, entry in MODELS.items():
        scope = arg_scope(entry, 0.0)
        decays = {(kw.get("normalizer_params") or {}).get("decay") for kw in scope.values()
                  if kw.get("normalizer_params")}
        assert decays == {BN_DECAY}, (name, decays)
