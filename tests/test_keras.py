"""Keras backend specifics: the 249 cut, BN in frozen layers, learning_rate=,
param groups through the public optimizer API, one ``fit`` per phase, resume,
backbone-only restore with the head JSON, head rows, ImageNet offline, and
Keras 3 on jax and torch as rows of their own.

CPU, 75 px, batch 5. One InceptionV3 is shared by the tests that only read it
or that compare before/after snapshots of their own; one top-2 ``fit`` on it
is shared by the tests that look at what that epoch did. Keras on jax and on
torch cannot share this process (``KERAS_BACKEND`` is read once, at import):
they run as ``bench run`` runs them, one child process each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, epsilon_hat_adam, require_backend, tiny_config

require_backend("keras")

import keras  # noqa: E402

from backends import base  # noqa: E402
from backends.base import BackendError, WeightsRequest  # noqa: E402
from backends.keras.backend import KerasBackend  # noqa: E402
from backends.keras.catalog import MODELS  # noqa: E402
from backends.keras.data import KerasData  # noqa: E402
from backends.keras.model import build_model  # noqa: E402
from backends.keras import recipe  # noqa: E402
from backends.keras.describe import optimizer_text  # noqa: E402
from backends.keras.recipe import make_optimizer, with_param_groups  # noqa: E402
from backends.keras.weights import head_file, restore_backbone  # noqa: E402
from benchmarks import driver, report  # noqa: E402
from common.config import Phase, load_recipe  # noqa: E402
from common.data import load_image  # noqa: E402
from common.models import HEAD, get_model  # noqa: E402
from common.preprocess import get_normalisation  # noqa: E402
from common.schedule import learning_rate_at  # noqa: E402

INCEPTION = get_model("inception_v3")
# 5 divides tiny_quads' 15 train / 5 val / 10 test images: one batch shape, so each Keras
# function is traced (TensorFlow) or compiled (XLA) once, not once per shape
BATCH = 5
TOP2 = load_recipe("two_phase").phases[1]
# three cosine epochs: each has its own learning rate
TOP2_COSINE = dataclasses.replace(TOP2, epochs=3, schedule="cosine", learning_rate=1e-2)


def _backend(tiny_quads, run_dir, hidden=0, weights=WeightsRequest("none"), num_classes=None,
             recipe="two_phase"):
    config = tiny_config("keras", recipe, tiny_quads, run_dir, batch_size=BATCH)
    split = driver.prepare_split(config)
    b = KerasBackend(config, run_dir)
    b.setup(split, 75)
    b.build(INCEPTION, num_classes or split.num_classes, weights, hidden)
    return b


@pytest.fixture(scope="module")
def shared(tiny_quads, tmp_path_factory):
    b = _backend(tiny_quads, tmp_path_factory.mktemp("keras-shared"))
    yield b
    b.close()


def _bn_layers(b, block):
    return [l for l in b.km.block_layers(block) if isinstance(l, keras.layers.BatchNormalization)]


def _values(layers, attr):
    return {l.name: np.array(getattr(l, attr).numpy()) for l in layers}


_inside_fit: list[bool] = []


def inside_fit() -> bool:
    """Whether the caller runs inside ``keras.Model.fit`` (while ``recorded_fits`` is on)."""
    return bool(_inside_fit)


@contextlib.contextmanager
def recorded_fits():
    """Every ``keras.Model.fit`` call meanwhile: its epochs and callbacks."""
    fits, real_fit = [], keras.Model.fit

    def fit(model, *args, **kwargs):
        fits.append({"initial_epoch": kwargs.get("initial_epoch", 0), "epochs": kwargs.get("epochs"),
                     "callbacks": list(kwargs.get("callbacks") or [])})
        _inside_fit.append(True)
        try:
            return real_fit(model, *args, **kwargs)
        finally:
            _inside_fit.pop()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.Model, "fit", fit)
        yield fits


@pytest.fixture(scope="module")
def top2_epoch(shared, tmp_path_factory):
    """The last two epochs of TOP2_COSINE as one resumed ``fit_phase`` (epochs 1 and 2 of
    the phase, global epochs 6 and 7), with what it changed and the checkpoint written after."""
    shared.apply_phase(TOP2_COSINE, 1)
    frozen, trained = _bn_layers(shared, "Mixed_7a"), _bn_layers(shared, "Mixed_7b")
    before = {a: _values(frozen, a) for a in ("moving_mean", "moving_variance", "beta")}
    before_top = _values(trained, "moving_mean")
    ends, traces = [], []
    model = shared.km.train_model
    # inside fit's tf.function the Python train_step runs only while it is traced
    model.train_step = lambda data, _step=model.train_step: traces.append(1) or _step(data)
    with recorded_fits() as fits:
        shared.fit_phase(TOP2_COSINE, 1, 5,
                         lambda epoch, lr, stats: ends.append((epoch, lr, stats, inside_fit())))
    ckpt = shared.save(tmp_path_factory.mktemp("keras-top2") / "last")
    return {"before": before, "after": {a: _values(frozen, a) for a in before},
            "before_top": before_top, "after_top": _values(trained, "moving_mean"),
            "ends": ends, "fits": fits, "traces": len(traces),
            "learning_rate": float(shared.optimizer.learning_rate.numpy()),
            "optimizer": [np.array(v.numpy()) for v in shared.optimizer.variables],
            "checkpoint": ckpt}


# ------------------------------------------------------------- blocks and the cut

def test_blocks_are_the_table_ranges_and_the_stem_ends_at_17(shared):
    blocks = shared.km.blocks
    assert blocks["stem"] == range(0, 18)
    assert shared.km.layers[17].name.startswith("max_pooling2d")
    assert blocks["Mixed_5b"].stop - 1 == 40 and blocks["Mixed_7a"].stop - 1 == 248
    assert blocks["Mixed_7b"] == range(249, 280) and blocks["Mixed_7c"] == range(280, 311)
    assert shared.km.num_base_layers == 311
    summary = shared.model_summary()
    assert "Mixed_7b    249..279" in summary and "head_logits" in summary


def test_resnet50_blocks_end_at_the_table_layers():
    km = build_model(get_model("resnet50"), MODELS["resnet50"], 3, 32)
    ends = {b: r.stop - 1 for b, r in km.blocks.items()}
    assert ends == {"stem": 6, "layer1": 38, "layer2": 80, "layer3": 142, "layer4": 174}


def test_top2_is_keras_layers_249_to_310_plus_head(shared):
    report_ = shared.apply_phase(TOP2, 1)
    km = shared.km
    assert report_["trainable_blocks"] == ["Mixed_7b", "Mixed_7c"]
    assert report_["native"]["layer_range"] == "249..310"
    assert report_["native"]["compile"] == "recompiled"
    base_trainable = [i for i, l in enumerate(km.layers[:km.num_base_layers]) if l.trainable]
    assert base_trainable == list(range(249, 311))  # the keras.io seed's model.layers[249:]
    expected = [v.path for blk in ("Mixed_7b", "Mixed_7c", HEAD) for l in km.block_layers(blk)
                for v in l.weights if "moving_" not in v.path]
    assert sorted(shared.trainable_names()) == sorted(expected)
    assert report_["trainable_tensors"] == len(expected)
    sizes = {n: a.size for blk in ("Mixed_7b", "Mixed_7c", HEAD) for n, a in shared.snapshot(blk).items()}
    assert report_["trainable_params"] == sum(sizes[n] for n in expected)
    # parameters as torch counts them: everything but the BN moving statistics
    assert report_["total_params"] == sum(int(np.prod(v.shape)) for v in km.model.weights
                                          if "moving_" not in v.path)


# ----------------------------------------------------------------- BN semantics

def test_bn_frozen_keeps_frozen_moving_stats_and_trains_the_top(top2_epoch):
    for attr, values in top2_epoch["before"].items():
        for name, arr in top2_epoch["after"][attr].items():
            np.testing.assert_array_equal(arr, values[name], err_msg=f"{name}.{attr}")
    before_top, after_top = top2_epoch["before_top"], top2_epoch["after_top"]
    assert any(not np.array_equal(after_top[n], before_top[n]) for n in before_top)


def test_bn_train_updates_frozen_moving_stats_but_not_weights(shared):
    # head-only training with bn = "train": every BN layer of the frozen backbone
    # normalises with batch statistics and updates its moving averages
    phase = Phase(name="head", train="head", optimizer="sgd", learning_rate=1e-2, epochs=1,
                  bn="train", augment=False)
    report_ = shared.apply_phase(phase, 0)
    assert report_["native"]["bn_statistics_only_layers"] == 94
    frozen = _bn_layers(shared, "Mixed_7a")
    assert all(l.trainable and not l.beta.trainable for l in frozen)
    before_stats, before_beta = _values(frozen, "moving_mean"), _values(frozen, "beta")
    before_conv = shared.snapshot("Mixed_7a")
    shared.fit_phase(phase, 0, 0, lambda *args: None)
    after_stats = _values(frozen, "moving_mean")
    assert all(not np.array_equal(after_stats[n], before_stats[n]) for n in before_stats)
    for name, arr in _values(frozen, "beta").items():
        np.testing.assert_array_equal(arr, before_beta[name])
    for name, arr in shared.snapshot("Mixed_7a").items():
        if "moving_" not in name:
            np.testing.assert_array_equal(arr, before_conv[name], err_msg=name)
    # a later phase that trains a block trains its BN betas again
    shared.apply_phase(TOP2, 1)
    assert all(l.beta.trainable for l in _bn_layers(shared, "Mixed_7b"))


# ----------------------------------------------------------- one fit per phase

def test_fit_phase_is_one_fit_scheduled_by_common_schedule(shared, top2_epoch):
    # resumed at epoch 1 of a 3-epoch phase after 5 epochs of the run: ONE model.fit ran
    # Keras' epochs 5 and 6, its LearningRateScheduler set common.schedule's values, its
    # callback handed the driver each epoch of the phase, and one TensorBoard callback
    # wrote under the phase's own folder
    [fit] = top2_epoch["fits"]
    assert (fit["initial_epoch"], fit["epochs"]) == (5, 7)
    assert [type(c).__name__ for c in fit["callbacks"]] == [
        "LearningRateScheduler", "EpochProgress", "EpochEnd", "TensorBoard"]
    [tensorboard] = [c for c in fit["callbacks"] if isinstance(c, keras.callbacks.TensorBoard)]
    assert Path(tensorboard.log_dir) == shared.run_dir / "tensorboard" / TOP2_COSINE.name
    assert (shared.run_dir / "tensorboard" / TOP2_COSINE.name / "train").is_dir()
    lrs = [learning_rate_at(TOP2_COSINE, e) for e in (1, 2)]
    assert len(set(lrs)) == 2
    assert [(epoch, lr) for epoch, lr, _, _ in top2_epoch["ends"]] == [(1, lrs[0]), (2, lrs[1])]
    assert all(inside for *_, inside in top2_epoch["ends"])  # the driver's work is a callback
    assert top2_epoch["learning_rate"] == pytest.approx(lrs[1])
    for _, _, stats, _ in top2_epoch["ends"]:
        assert stats["images"] == 15 and stats["seconds"] > 0 and np.isfinite(stats["loss"])


# ------------------------------------------------- the adapter runs recipe.py

def test_the_adapter_runs_the_recipe_module(shared, monkeypatch):
    """apply_phase and predict go through recipe.py's functions (patched here to record their
    calls), and the phase's words are describe_phase's."""
    calls = []
    for name in ("set_trainable", "compile_phase", "predict"):
        real = getattr(recipe, name)
        monkeypatch.setattr(recipe, name, lambda *a, _real=real, _name=name, **k:
                            calls.append(_name) or _real(*a, **k))
    report_ = shared.apply_phase(TOP2, 1)
    assert calls == ["set_trainable", "compile_phase"]
    assert report_["native"]["compile"] == "recompiled"
    assert report_["trainable_blocks"] == ["Mixed_7b", "Mixed_7c"]
    logits = shared.predict("val")
    assert calls == ["set_trainable", "compile_phase", "predict"]
    assert logits.shape[1] == shared.split.num_classes


# -------------------------------------------------------------- optimizers

def test_optimizers_take_learning_rate_and_reject_lr(shared):
    report_ = shared.apply_phase(TOP2, 1)
    assert report_["native"]["optimizer"] == \
        "keras.optimizers.SGD(learning_rate=0.0001, momentum=0.9)"
    assert type(shared.optimizer) is keras.optimizers.SGD  # no param groups needed: Keras' own
    assert shared.optimizer.get_config()["learning_rate"] == pytest.approx(1e-4)
    shared.set_learning_rate(3e-3)
    assert float(shared.optimizer.learning_rate.numpy()) == pytest.approx(3e-3)
    with pytest.raises((TypeError, ValueError), match="lr"):
        keras.optimizers.SGD(lr=0.1)  # Keras 2 / torch spelling


@pytest.mark.parametrize("cls", [keras.optimizers.SGD, keras.optimizers.Adam,
                                 keras.optimizers.RMSprop])
def test_head_param_group_steps_with_the_multiplied_learning_rate(cls):
    backbone, head = keras.Variable(np.ones(3, np.float32)), keras.Variable(np.ones(3, np.float32))
    opt = with_param_groups(cls)(learning_rate=0.01, head_variables=[head], head_lr_multiplier=10.0)
    # the public custom-optimizer methods, and no private hook (_backend_update_step, ...)
    overridden = {name for name, v in vars(type(opt)).items() if callable(v)}
    assert overridden == {"__init__", "build", "update_step", "get_config"}
    grad = np.full(3, 0.5, np.float32)
    opt.apply_gradients([(grad, backbone), (grad, head)])
    step_backbone, step_head = 1 - backbone.numpy(), 1 - head.numpy()
    np.testing.assert_allclose(step_head, 10 * step_backbone, rtol=1e-4)
    if cls is keras.optimizers.SGD:
        np.testing.assert_allclose(step_backbone, 0.01 * 0.5, rtol=1e-4)
    elif cls is keras.optimizers.Adam:
        np.testing.assert_allclose(step_backbone, 0.01, rtol=1e-4)


def test_float64_momentum_step_is_the_float64_formula_and_parity_gives_it_float64_numbers(
        monkeypatch):
    """Keras' SGD ``ops.cast``s its Python float momentum through float32, so two float64 steps
    (lr 1, gradient 1) end at -(1 + 0.89999998 + 1), 2.4e-8 off; with
    ``float64_hyperparameters`` (a numpy float64 momentum, still a ``float`` for Keras' check)
    they are the float64 formula ``m = 0.9 m - lr g; w += m`` exactly. Keras' ``bench parity
    --train --dtype float64`` hands its phase machinery those numbers (float32: as given)."""
    from backends.keras import parity
    from common.config import float64_hyperparameters

    def two_steps(phase):
        w = keras.Variable(np.zeros(1), dtype="float64")
        opt = make_optimizer(dataclasses.replace(phase, learning_rate=1.0), [])
        for _ in range(2):
            opt.apply_gradients([(np.ones(1), w)])
        return float(w.numpy()[0])

    expected = -1.0 + (0.9 * -1.0 - 1.0)
    phase = Phase(optimizer="momentum")
    assert two_steps(float64_hyperparameters(phase)) == expected
    assert abs(two_steps(phase) - expected) == pytest.approx(0.9 - float(np.float32(0.9)), rel=1e-6)

    seen = []
    monkeypatch.setattr(parity, "_train_steps", lambda model, t, i, l, phase, *a: seen.append(phase))
    for dtype in ("float64", "float32"):
        parity.train_steps("inception_v3", {}, np.zeros((1, 75, 75, 3)), np.zeros(1, int), phase,
                           None, (1,), dtype)
    assert [type(p.momentum) for p in seen] == [np.float64, type(None)]
    assert keras.config.floatx() == "float32"


def test_l2_weight_decay_is_added_to_the_gradient():
    w = keras.Variable(np.full(2, 2.0, np.float32))
    opt = with_param_groups(keras.optimizers.SGD)(learning_rate=0.1, l2=0.5)
    opt.apply_gradients([(np.zeros(2, np.float32), w)])
    np.testing.assert_allclose(w.numpy(), 2.0 - 0.1 * 0.5 * 2.0)


def test_adamw_param_groups_decay_each_group_with_its_own_learning_rate():
    # torch AdamW param groups: w *= 1 - lr_group * wd, then the Adam step
    phase = Phase(name="full", train="all", optimizer="adamw", learning_rate=0.01,
                  head_lr_multiplier=10.0, weight_decay=0.5)
    backbone, head = keras.Variable(np.full(2, 2.0, np.float32)), keras.Variable(np.full(2, 2.0, np.float32))
    opt, text = make_optimizer(phase, [head]), optimizer_text(phase)
    assert "AdamW per param group" in text and "x10" in text
    opt.apply_gradients([(np.zeros(2, np.float32), backbone), (np.zeros(2, np.float32), head)])
    np.testing.assert_allclose(backbone.numpy(), 2.0 * (1 - 0.01 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(head.numpy(), 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
    single_phase = dataclasses.replace(phase, head_lr_multiplier=1.0)
    single, text = make_optimizer(single_phase, [head]), optimizer_text(single_phase)
    assert type(single) is keras.optimizers.AdamW and "weight_decay=0.5" in text


def test_the_phase_optimizer_is_built_at_compile_so_fit_traces_its_step_once(shared, top2_epoch):
    """compile_phase builds the optimizer's slots: made inside fit's first step they would
    make TensorFlow trace the step twice (once creating variables, once without), seconds of
    graph building per phase (docs/design.md, "Where a run's time goes")."""
    assert top2_epoch["traces"] == 1
    assert shared.km.train_model.optimizer is shared.optimizer and shared.optimizer.built


def test_optimizer_state_round_trips_within_a_phase(shared, top2_epoch):
    path = top2_epoch["checkpoint"]
    assert path.name == "last.weights.h5" and (path.parent / "last.optimizer.npz").is_file()
    shared.apply_phase(TOP2_COSINE, 1)  # a fresh optimizer, as after a restart
    shared.restore(path.parent / "last")
    restored = [np.array(v.numpy()) for v in shared.optimizer.variables]
    assert len(restored) == len(top2_epoch["optimizer"]) and int(shared.optimizer.iterations.numpy()) > 0
    for a, b in zip(restored, top2_epoch["optimizer"]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ data

def _batches(pipeline) -> list:
    """(x, y) numpy batches of a tf.data.Dataset, or of a keras.utils.PyDataset over each
    of its epochs (moved on as ``train.SetEpoch`` moves it in a fit)."""
    if hasattr(pipeline, "as_numpy_iterator"):
        return list(pipeline.as_numpy_iterator())
    out = []
    for epoch in pipeline.epochs or [None]:
        if epoch is not None:
            pipeline.set_epoch(epoch)
        out += [pipeline[i] for i in range(len(pipeline))]
    return out


def test_pipelines_match_the_common_preprocessing(shared):
    split = shared.split
    data = KerasData(split, 75, get_normalisation("inception"), 4, 0)  # 15 = 4 + 4 + 4 + 3
    norm = get_normalisation("inception")
    x = np.concatenate([xb for xb, _ in _batches(data.eval("val"))])
    expected = np.stack([norm.apply(load_image(s.path, 75)) for s in split.val])
    np.testing.assert_allclose(x, expected, atol=1e-6)
    first = _batches(data.train([1], True))
    again = _batches(data.train([1], True))
    other = _batches(data.train([2], True))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))  # resumable order
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))  # reshuffled per epoch
    assert sum(len(y) for _, y in first) == len(split.train)
    # one fit per phase reads one stream of its epochs, each with its own partial last batch;
    # a resumed fit (epoch 2 only) reads exactly the batches the uninterrupted one would have
    stream = _batches(data.train([1, 2], True))
    assert len(stream) == 2 * data.steps_per_epoch == 2 * len(first)
    for a, b in zip(stream, first + other):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # the PyDataset that feeds Keras on jax and torch: the same eval pixels and the same
    # order and labels in every epoch; its crops and flips are numpy draws, not tf.image's
    data.use_tf_data = False
    x = np.concatenate([xb for xb, _ in _batches(data.eval("val"))])
    np.testing.assert_allclose(x, expected, atol=1e-6)
    numpy_stream = _batches(data.train([1, 2], True))
    assert len(numpy_stream) == len(stream)
    for a, b in zip(numpy_stream, stream):
        np.testing.assert_array_equal(a[1], b[1])
    assert not all(np.allclose(a[0], b[0]) for a, b in zip(numpy_stream, stream))
    # never a training batch of one image, in either pipeline: 15 = 7 + 7 (+ 1 left out)
    for use_tf_data in (True, False):
        odd = KerasData(split, 75, norm, 7, 0)
        odd.use_tf_data = use_tf_data
        assert [len(y) for _, y in _batches(odd.train([1, 2], False))] == [7, 7, 7, 7]
        assert odd.steps_per_epoch == 2 and odd.images_per_epoch == 14


def test_frameworks_and_device_name_the_keras_backend(shared):
    versions = shared.frameworks()
    assert versions["keras"] == keras.__version__
    assert versions["keras_backend"] == keras.backend.backend() and versions[versions["keras_backend"]]
    assert shared.device()["keras_backend"] == versions["keras_backend"]


# ----------------------------------------------------------- weights

def test_restore_from_a_source_checkpoint_excludes_the_head(shared, tiny_quads, tmp_path):
    shared.apply_phase(TOP2, 1)
    ckpt = shared.save(tmp_path / "source")
    # the head's shape is recorded beside the weights, not read back from h5 layer names
    assert json.loads(head_file(ckpt).read_text()) == {
        "model": "inception_v3", "num_classes": 5, "head_hidden_units": 0}
    source_base = {blk: shared.snapshot(blk) for blk in ("stem", "Mixed_7c")}
    source_head = shared.snapshot(HEAD)
    rows = {0: 2, 3: 4}
    b = _backend(tiny_quads, tmp_path / "run", weights=WeightsRequest("path", str(ckpt), rows),
                 num_classes=7)
    try:
        for blk, snap in source_base.items():
            got = b.snapshot(blk)
            assert len(got) == len(snap)
            for (_, a), (_, s) in zip(got.items(), snap.items()):  # same layers, new names
                np.testing.assert_array_equal(a, s)
        (k_src, b_src), (k, bias) = source_head.values(), b.snapshot(HEAD).values()
        assert k.shape == (2048, 7) and k_src.shape == (2048, 5)  # Keras kernel: [in, out]
        for t, s in rows.items():
            np.testing.assert_array_equal(k[:, t], k_src[:, s])
            assert bias[t] == b_src[s]
        for t in set(range(7)) - set(rows):
            assert not any(np.array_equal(k[:, t], k_src[:, s]) for s in range(5))
    finally:
        b.close()


def test_reuse_head_rows_needs_a_linear_head_and_the_head_json(shared, tiny_quads, tmp_path):
    shared.apply_phase(TOP2, 1)
    ckpt = shared.save(tmp_path / "source")
    config = tiny_config("keras", "two_phase", tiny_quads, tmp_path / "run")
    b = KerasBackend(config, tmp_path / "run")
    b.setup(shared.split, 75)
    with pytest.raises(BackendError, match="head_hidden_units = 0"):
        b.build(INCEPTION, 5, WeightsRequest("path", str(ckpt), {0: 0}), 1024)
    head = json.loads(head_file(ckpt).read_text())
    head_file(ckpt).write_text(json.dumps({**head, "model": "resnet50"}))
    with pytest.raises(BackendError, match="holds a keras resnet50 .*builds inception_v3"):
        restore_backbone(shared.km, str(ckpt), 75, {})
    head_file(ckpt).unlink()
    with pytest.raises(BackendError) as err:
        restore_backbone(shared.km, str(ckpt), 75, {})
    assert "source.head.json" in str(err.value) and "\n" not in str(err.value)


def test_imagenet_offline_names_the_file_and_the_cache(shared, tiny_quads, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    config = tiny_config("keras", "two_phase", tiny_quads, tmp_path / "run")
    b = KerasBackend(config, tmp_path / "run")
    b.setup(shared.split, 75)
    with pytest.raises(BackendError) as err:
        b.build(INCEPTION, 5, WeightsRequest("imagenet"))
    message = str(err.value)
    assert "\n" not in message
    assert MODELS["inception_v3"].imagenet.file in message
    assert str(tmp_path / "keras-home" / "models") in message


# ------------------------------------------------------------- end to end

def test_resume_runs_only_the_missing_epochs_in_one_fit(tiny_quads, tmp_path, monkeypatch):
    config = tiny_config("keras", "head", tiny_quads, tmp_path / "run", epochs=2, batch_size=BATCH,
                         model="resnet50", image_size=32)
    phase = dataclasses.replace(config.recipe.phases[0], schedule="cosine")
    config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, phases=(phase,)))
    fit_phase, save, predict = KerasBackend._fit_phase, KerasBackend._save, KerasBackend._predict
    calls, ends, saves, validations = [], [], [], []

    def interrupted(self, phase, first_epoch, global_epoch, on_epoch_end):
        def end(epoch, lr, stats):
            on_epoch_end(epoch, lr, stats)  # the driver checkpoints epoch 1, then the run dies
            raise RuntimeError("simulated interruption")
        calls.append((first_epoch, global_epoch))
        return fit_phase(self, phase, first_epoch, global_epoch, end)

    # throughput is not what this test is about (the contract test times every backend)
    monkeypatch.setattr(KerasBackend, "_throughput", lambda self, *a: {"train": {}, "infer": {}})
    monkeypatch.setattr(KerasBackend, "_fit_phase", interrupted)
    first = driver.run(config)
    assert first["status"] == "failed" and calls == [(0, 0)]
    calls.clear()

    def counted(self, phase, first_epoch, global_epoch, on_epoch_end):
        calls.append((first_epoch, global_epoch))
        return fit_phase(self, phase, first_epoch, global_epoch,
                         lambda *args: ends.append(args[:2]) or on_epoch_end(*args))

    monkeypatch.setattr(KerasBackend, "_fit_phase", counted)
    monkeypatch.setattr(KerasBackend, "_save", lambda self, path: saves.append(inside_fit()) or save(self, path))
    monkeypatch.setattr(KerasBackend, "_predict", lambda self, subset: (
        validations.append(inside_fit()) if subset == "val" else None) or predict(self, subset))
    with recorded_fits() as fits:
        result = driver.run(config)
    assert result["status"] == "ok", result.get("traceback")
    assert calls == [(1, 1)]  # one fit: only the missing epoch, numbered on from the first run
    [fit] = fits
    assert (fit["initial_epoch"], fit["epochs"]) == (1, 2)
    assert ends == [(1, learning_rate_at(phase, 1))]
    # validation and the best/last checkpoints ran as callbacks of that fit (the driver
    # validates once more after it, on the best checkpoint)
    assert saves and all(saves) and validations == [True, False]
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [c["global_epoch"] for c in on_disk["curves"]] == [1, 2]
    assert [c["lr"] for c in on_disk["curves"]] == [1e-3, pytest.approx(5e-4)]
    native = on_disk["phases"][0]["native"]
    assert native["fit"] == "one model.fit per phase" and native["layer_range"] == "none"
    assert (tmp_path / "run" / "tensorboard" / "head" / "train").is_dir()
    assert on_disk["versions"]["keras_backend"] == keras.backend.backend()


def test_batchnorm_decay_is_the_suite_value_not_keras_default(shared):
    # Keras' BatchNormalization default momentum is 0.99; the suite uses common.models.BN_DECAY
    from common.models import BN_DECAY

    bns = [l for l in shared.km.model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 94 and {l.momentum for l in bns} == {BN_DECAY}


def test_inception_batchnorm_has_no_gamma_in_keras(shared):
    # keras.applications.InceptionV3 builds BatchNormalization(scale=False): beta only
    bns = [l for l in shared.km.model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(not l.scale and l.gamma is None for l in bns)


# ------------------------------------------------- Keras 3 on jax and on torch

def test_keras_backends_are_registry_rows_and_all_means_three_frameworks(monkeypatch, capsys):
    from benchmarks import cli

    assert cli.parse_backends("all") == ["pytorch", "keras", "slim"]
    assert cli.parse_backends("keras-tensorflow,keras,keras-jax") == ["keras", "keras-jax"]
    infos = {n: base.backend_info(n) for n in ("keras", "keras-jax", "keras-torch")}
    assert {n: i.environment["KERAS_BACKEND"] for n, i in infos.items()} == {
        "keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
    assert base.backend_info("keras-tensorflow") is infos["keras"]
    colors = report.backend_colors(["pytorch", "keras", "keras-jax", "keras-torch", "slim"])
    assert len(set(colors.values())) == 5 and colors["keras-jax"] == infos["keras-jax"].color
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "keras (also keras-tensorflow)" in listed and "keras-jax" in listed and "keras-torch" in listed
    # --weights source: the sweep's one source model, converted (InceptionV3), or each its
    # own pretraining where the model does not convert (ResNet-50)
    from benchmarks import conversion

    assert all(base.backend_info(n).converts("inception_v3") for n in infos)
    assert {conversion.source_backend("inception_v3", n) for n in infos} == {
        conversion.source_backend("inception_v3", "pytorch")}
    assert [conversion.source_backend("resnet50", n) for n in infos] == list(infos)
    # a missing jax is a reason with the install hint, never a crash
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else find_spec(name, *a))
    reason = base.availability("keras-jax")
    assert reason.startswith("jax not installed") and "transfer-bench[keras-jax]" in reason
    assert cli.main(["list"]) == 0
    assert "keras-jax" in (line := next(l for l in capsys.readouterr().out.splitlines()
                                         if "keras-jax" in l)) and "transfer-bench[keras-jax]" in line
    with pytest.raises(BackendError, match="KERAS_BACKEND=jax"):  # this process has Keras on TF
        KerasBackend(tiny_config("keras-jax", "head", ".", "."), ".")


def test_keras_backend_rows_side_by_side_in_reports(tiny_quads, tmp_path, monkeypatch):
    # the harness side of the rows (the real runs are test_bench_run_on_keras_jax_and_torch):
    # results under the three Keras names, written by the real driver on the numpy fake
    # backend, give one row each, in registry order, each in its backend's colour
    from benchmarks import cli
    from common.results import run_name

    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    for name in ("keras-torch", "keras", "keras-jax"):
        run_dir = tmp_path / "sweep" / run_name(name, "head", 0)
        assert driver.run(tiny_config("fake", "head", tiny_quads, run_dir))["status"] == "ok"
        result = json.loads((run_dir / "result.json").read_text())
        result["backend"] = result["config"]["backend"] = name
        (run_dir / "result.json").write_text(json.dumps(result))
    assert cli.main(["report", str(tmp_path / "sweep")]) == 0
    rows = [line for line in (tmp_path / "sweep" / "report.md").read_text().splitlines()
            if line.startswith("| keras")]
    assert [r.split("|")[1].strip() for r in rows][:3] == ["keras", "keras-jax", "keras-torch"]


@pytest.fixture(scope="module")
def other_keras_backends(tiny_quads, tmp_path_factory) -> dict[str, dict]:
    """``tests/keras_backend_smoke.py`` for keras-jax and keras-torch (ResNet-50 at 32 px:
    what is tested is the Keras backend, not the model), each in its own process with the
    environment ``bench run`` gives it; the two processes run side by side."""
    procs = {}
    for name in ("keras-jax", "keras-torch"):
        if base.availability(name):
            continue
        run_dir = tmp_path_factory.mktemp(name)
        config = tiny_config(name, "head", tiny_quads, run_dir, model="resnet50", image_size=32,
                             batch_size=BATCH)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
        # one OpenMP thread each: two processes share the CPU, and torch's spinning threads
        # slow down many times over when they are more than the free cores
        env = {**os.environ, **base.backend_info(name).environment, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log = open(run_dir / "log.txt", "w")
        procs[name] = (run_dir, log, subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "keras_backend_smoke.py"),
             str(run_dir / "config.json"), str(run_dir / "smoke.json")],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    if not procs:
        pytest.skip("neither jax nor torch is installed")
    out = {}
    for name, (run_dir, log, proc) in procs.items():
        code = proc.wait()
        log.close()
        assert code == 0, f"{name}: " + (run_dir / "log.txt").read_text()[-3000:]
        out[name] = {**json.loads((run_dir / "smoke.json").read_text()), "run_dir": run_dir}
    return out


@pytest.fixture(scope="module")
def resnet_on_tensorflow(tiny_quads, tmp_path_factory):
    """The smoke runs' model, ResNet-50 at 32 px, in this process's Keras on TensorFlow,
    built right after ``setup`` seeded it with the same seed."""
    run_dir = tmp_path_factory.mktemp("keras-resnet")
    config = tiny_config("keras", "head", tiny_quads, run_dir, model="resnet50", image_size=32,
                         batch_size=BATCH)
    b = KerasBackend(config, run_dir)
    b.setup(driver.prepare_split(config), 32)
    b.build(get_model("resnet50"), 5, WeightsRequest("none"), 0)
    initial_head = b.km.model.get_layer("head_logits").get_weights()[0][:4, :]
    yield b, initial_head
    b.close()


def test_keras_on_jax_and_torch_are_rows_of_their_own(other_keras_backends, resnet_on_tensorflow,
                                                      shared):
    """The same Keras code on jax and torch (docs/differences.md, "Keras 3 on TensorFlow, jax and
    torch"): its own process without TensorFlow, tf.data replaced by a PyDataset, XLA on
    jax and eager torch, the backend's own variables, one fit per phase, TensorBoard events
    without TensorFlow's writer, and a .weights.h5 that loads into this process's Keras on
    TensorFlow and gives the logits the run computed."""
    expected = {"keras-jax": ("jax", True, "jax"), "keras-torch": ("torch", False, "torch.")}
    tensorflow, _ = resnet_on_tensorflow
    for name, smoke in other_keras_backends.items():
        keras_backend, jit, variables = expected[name]
        native = smoke["native"]
        assert smoke["name"] == name and smoke["frameworks"]["keras_backend"] == keras_backend
        assert native["keras_backend"] == smoke["device"]["keras_backend"] == keras_backend
        assert not smoke["tensorflow_imported"]  # one framework per process
        assert native["jit_compile"] is jit
        assert native["variables"].startswith(variables)  # jax.Array / torch.nn.Parameter
        assert native["input_pipeline"].startswith("keras.utils.PyDataset")
        assert native["fit"] == "one model.fit per phase"
        [fit] = smoke["fits"]
        assert (fit["initial_epoch"], fit["epochs"]) == (0, 1)
        assert fit["callbacks"] == ["SetEpoch", "LearningRateScheduler", "EpochProgress",
                                    "EpochEnd", "EpochScalars"]
        assert "tensorboard package" in native["tensorboard"]
        events = sorted(smoke["run_dir"].rglob("events.out.tfevents.*"))
        assert [e.parent.relative_to(smoke["run_dir"] / "tensorboard").as_posix() for e in events] \
            == ["epochs", "head/train"]
        [[epoch, lr, stats]] = smoke["ends"]  # one head epoch through fit_phase
        assert epoch == 0 and lr == 1e-3 and stats["images"] == 15 and np.isfinite(stats["loss"])
        trained, restored = np.asarray(smoke["trained"]), np.asarray(smoke["restored"])
        assert not np.allclose(trained, smoke["before"])  # the head trained
        np.testing.assert_allclose(restored, trained, rtol=1e-5, atol=1e-5)  # save -> restore
        # the checkpoint format is the same file on every Keras backend
        tensorflow.restore(Path(smoke["checkpoint"]).parent / "last")
        np.testing.assert_allclose(tensorflow.predict("val"), trained, rtol=1e-3, atol=1e-4)
    # this process: Keras on TensorFlow, tf.data, no XLA on a CPU, tf.Variables, Keras' callback
    native = shared.apply_phase(TOP2, 1)["native"]
    assert native["keras_backend"] == "tensorflow" and native["jit_compile"] is False
    assert native["variables"].startswith("tensorflow")
    assert native["input_pipeline"].startswith("tf.data.Dataset")
    assert native["tensorboard"].startswith("keras.callbacks.TensorBoard")


def test_the_same_recipe_steps_on_every_keras_backend(other_keras_backends, resnet_on_tensorflow):
    """What does and does not differ between the Keras backends for one recipe step (docs/differences.md,
    "Keras 3 on TensorFlow, jax and torch"): frozen BatchNormalization, the head param group
    and the bf16 dtype policy are the same; the same seed gives other initial weights."""
    _, tensorflow_head = resnet_on_tensorflow
    heads = {"keras": tensorflow_head}
    for name, smoke in other_keras_backends.items():
        # a frozen block's BN runs in inference mode: no moving statistic moved
        assert smoke["frozen_bn_layers"] == 53 and smoke["frozen_bn_unchanged"]
        trunk, top = smoke["param_group_steps"]
        assert trunk == pytest.approx(0.01 * 0.5, rel=1e-4) and top == pytest.approx(10 * trunk, rel=1e-4)
        assert smoke["bf16_policy"] == {"compute": "bfloat16", "variables": "float32"}
        # a phase without param groups gets Keras' own class: on torch a fused torch._foreach step
        fused = name == "keras-torch"
        assert smoke["builtin_sgd"].startswith("keras.src.backend.torch.optimizers") is fused
        heads[name] = np.asarray(smoke["initial_head"])
    # keras.utils.set_random_seed(0) on each backend: its own random generator, its own draws
    for a, b in itertools.combinations(heads, 2):
        assert not np.allclose(heads[a], heads[b]), (a, b)
        # the same initialiser: glorot_uniform's bound sqrt(6 / (fan_in + fan_out))
        assert np.abs(heads[b]).max() <= np.sqrt(6 / (2048 + 5))
    dense = keras.layers.Dense(2, dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(dense(np.ones((1, 3), np.float32)).dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(dense.kernel.dtype) == "float32"
    assert type(keras.optimizers.SGD(learning_rate=0.01)).__module__ == "keras.src.optimizers.sgd"


@pytest.mark.parametrize("head_dtype", ["native", "aligned"])
def test_bf16_head_computes_in_float32_while_the_backbone_computes_in_bfloat16(tiny_quads, tmp_path,
                                                                               head_dtype):
    """Under ``mixed_bfloat16`` the suite's logits Dense is ``dtype="float32"`` (Keras' mixed-precision
    guide: keep the last layer in float32) in both ``fidelity.head_dtype`` settings, so the logits
    compute in fp32 while the backbone computes in bf16; a hidden head Dense follows the policy
    (bf16) natively and is float32 when aligned. torch's head runs in bf16 under autocast
    natively (docs/differences.md, row "bf16")."""
    config = tiny_config("keras", "head", tiny_quads, tmp_path / "run", batch_size=BATCH, precision="bf16")
    config = dataclasses.replace(config, recipe=dataclasses.replace(
        config.recipe, fidelity=dataclasses.replace(config.recipe.fidelity, head_dtype=head_dtype)))
    b = KerasBackend(config, tmp_path / "run")
    try:
        b.setup(driver.prepare_split(config), 75)
        b.build(INCEPTION, 5, WeightsRequest("none"), 16)
        model = b.km.model
        head, hidden = model.get_layer("head_logits"), model.get_layer("head_hidden")
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
        assert (head.compute_dtype, head.variable_dtype) == ("float32", "float32")
        assert (hidden.compute_dtype, hidden.variable_dtype) == (
            "bfloat16" if head_dtype == "native" else "float32", "float32")
        assert {(l.compute_dtype, l.variable_dtype) for l in convs} == {("bfloat16", "float32")}
        logits = model(np.zeros((1, 75, 75, 3), np.float32), training=False)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    finally:
        b.close()


@pytest.mark.slow
def test_bench_run_on_keras_jax_and_torch(tiny_quads, tmp_path):
    """``bench run --backend keras-jax,keras-torch --recipe head`` on CPU, each run in its own
    worker with its KERAS_BACKEND: one report row per Keras backend; ``bench export`` of the
    jax run; ``bench throughput`` on both. Minutes on a CPU
    (``pytest -m slow tests/test_keras.py -k bench_run``)."""
    from benchmarks import cli

    out = tmp_path / "sweep"
    assert cli.main(["run", "--backend", "keras-jax,keras-torch", "--recipe", "head",
                     "--model", "resnet50", "--image-size", "32", "--data", str(tiny_quads),
                     "--weights", "none", "--epochs", "1", "--batch-size", str(BATCH),
                     "--out", str(out)]) == 0
    for name, keras_backend in (("keras-jax", "jax"), ("keras-torch", "torch")):
        result = json.loads((out / f"{name}-head-s0" / "result.json").read_text())
        assert result["status"] == "ok" and result["backend"] == name
        assert result["versions"]["keras_backend"] == keras_backend
        assert result["phases"][0]["native"]["keras_backend"] == keras_backend
        assert result["throughput"]["train"]["images_per_second"] > 0
    rows = [line for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| keras")]
    assert [r.split("|")[1].strip() for r in rows][:2] == ["keras-jax", "keras-torch"]
    # bench export: the .keras archive from a jax run, checked against its native logits;
    # a SavedModel needs TensorFlow, which a keras-jax run does not hold: one line, exit 2
    run = str(out / "keras-jax-head-s0")
    assert cli.main(["export", run, "--format", "keras"]) == 0
    assert (out / "keras-jax-head-s0" / "export" / "keras" / "model.keras").is_file()
    assert cli.main(["export", run, "--format", "savedmodel"]) == 2
    # bench throughput: each Keras backend measured in its own process
    assert cli.main(["throughput", "--backend", "keras-jax,keras-torch", "--model", "resnet50",
                     "--image-size", "32", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                     "--out", str(tmp_path / "throughput.json")]) == 0
    measured = json.loads((tmp_path / "throughput.json").read_text())["results"]
    assert [(r["backend"], r["versions"]["keras_backend"]) for r in measured] == [
        ("keras-jax", "jax"), ("keras-torch", "torch")]


# ------------------------------------------- fine-tuning modes of the guides (issue 12)

def test_bn_inference_calls_the_backbone_with_training_false(resnet_on_tensorflow):
    """bn = "inference": fit runs a model whose backbone is called as base(x, training=False)
    from a layer (a functional node would get fit's training=True, keras-team/keras#20285):
    the moving statistics of the trained block are bit-identical after an epoch, its gamma
    and beta trained."""
    b, _ = resnet_on_tensorflow
    phase = Phase(name="top", train="blocks", blocks=("layer4",), optimizer="sgd",
                  learning_rate=0.1, bn="inference")
    report = b.apply_phase(phase, 0)
    assert report["native"]["fit_model"] == "resnet50_bn_inference"
    assert report["native"]["bn"].startswith("inference: the backbone called as base(x, training=False)")
    bn = _bn_layers(b, "layer4")
    assert bn and all(layer.trainable for layer in bn)
    before = {a: _values(bn, a) for a in ("moving_mean", "moving_variance", "gamma", "beta")}
    b.set_learning_rate(0.1)
    with recorded_fits() as fits:
        b.fit_epoch(phase, 1)
    assert len(fits) == 1
    after = {a: _values(bn, a) for a in before}
    for attr in ("moving_mean", "moving_variance"):
        assert all(np.array_equal(after[attr][n], before[attr][n]) for n in before[attr]), attr
    for attr in ("gamma", "beta"):
        assert all(not np.array_equal(after[attr][n], before[attr][n]) for n in before[attr]), attr
    # the same variables train as with bn = "frozen"
    assert sorted(b.trainable_names()) == sorted(
        v.path for blk in ("layer4", HEAD) for l in b.km.block_layers(blk) for v in l.trainable_weights)


def test_dropout_layer_draws_masks_in_training_only():
    km = build_model(get_model("resnet50"), MODELS["resnet50"], 3, 32, dropout=0.5)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    kernel, bias = km.model.get_layer("head_logits").get_weights()
    dropout = km.model.get_layer("head_dropout")
    assert dropout.rate == 0.5 and km.layers[km.num_base_layers + 1] is dropout
    probe = keras.Model(km.model.input, [km.model.get_layer("avg_pool").output, dropout.output,
                                         km.model.output])
    features, dropped, logits = (np.asarray(t) for t in probe(x, training=False))
    assert np.array_equal(dropped, features)  # inference: the identity
    np.testing.assert_allclose(logits, features @ kernel + bias, rtol=1e-4, atol=1e-5)
    (pooled, first, _), (_, second, _) = (tuple(np.asarray(t) for t in probe(x, training=True))
                                          for _ in range(2))
    assert not np.array_equal(first, second)
    kept = first != 0
    np.testing.assert_allclose(first[kept], 2 * pooled[kept], rtol=1e-5)  # kept x 1 / (1 - rate)
    assert 0.35 < float((~kept & (pooled != 0)).sum() / (pooled != 0).sum()) < 0.65


def test_unfreeze_from_is_model_layers_n_and_maps_to_blocks(shared):
    """unfreeze_from = 249 is the keras.io guide's model.layers[249:]: the same variables as
    the top-2 phase, Mixed_7b and Mixed_7c exactly; 260 trains part of Mixed_7b; an index
    outside the model is one line naming its blocks' first layers."""
    from common.config import parse_phase

    shared.apply_phase(TOP2, 1)
    top2 = sorted(shared.trainable_names())
    report = shared.apply_phase(parse_phase({"unfreeze_from": 249}, "r"), 1)
    assert sorted(shared.trainable_names()) == top2
    assert report["trainable_blocks"] == ["Mixed_7b", "Mixed_7c"]
    assert report["native"]["layer_range"] == "249..310" and report["native_selection"]["exact"]
    part = shared.apply_phase(parse_phase({"unfreeze_from": 260}, "r"), 1)
    assert part["trainable_blocks"] == ["Mixed_7c"]
    assert part["partially_trained_blocks"] == {"Mixed_7b": round(20 / 31, 4)}
    assert not part["native_selection"]["exact"]
    with pytest.raises(BackendError, match=r"unfreeze_from = 400 is not a layer index of Keras "
                                           r"inception_v3: its backbone has layers 0\.\.310"):
        shared.apply_phase(parse_phase({"unfreeze_from": 400}, "r"), 1)
    # the catalog's table, which bench run checks recipes against, is the model's
    assert {b: r.start for b, r in shared.km.blocks.items()} == dict(MODELS["inception_v3"].first_layers)


# ------------------------------------------------- fidelity: bn_moving_variance

def _moving_variance_ratio(layer, x: np.ndarray) -> np.ndarray:
    """What a training call fed the moving variance, over the biased batch variance, per
    channel: (moving_var_after - m * moving_var_before) / ((1 - m) * biased var)."""
    layer.build(x.shape)
    before = layer.moving_variance.numpy().copy()
    layer(x, training=True)
    fed = (layer.moving_variance.numpy() - layer.momentum * before) / (1 - layer.momentum)
    return fed / x.reshape(-1, x.shape[-1]).var(axis=0)


def test_keras_moving_variance_is_biased_natively_and_unbiased_when_aligned():
    """16 values per channel (batch 16 of 1x1 maps, Mixed_7b/7c at 75 px): Keras 3 feeds the
    moving variance the biased batch variance (ratio 1.0); ``UnbiasedMovingVarianceBN``
    (``fidelity.bn_moving_variance = "aligned"``) feeds n/(n-1) = 16/15 of it, as torch and
    slim do; the batch itself is normalised the same way in both."""
    from backends.keras.model import UnbiasedMovingVarianceBN
    from common.models import BN_DECAY

    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 1, 1, 4)).astype(np.float32)
    native = keras.layers.BatchNormalization(momentum=BN_DECAY, epsilon=1e-3, scale=False)
    aligned = UnbiasedMovingVarianceBN(momentum=BN_DECAY, epsilon=1e-3, scale=False)
    np.testing.assert_allclose(_moving_variance_ratio(native, x), 1.0, rtol=1e-4)
    np.testing.assert_allclose(_moving_variance_ratio(aligned, x), 16 / 15, rtol=1e-4)
    np.testing.assert_allclose(aligned.moving_mean.numpy(), native.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(aligned(x, training=True), native(x, training=True), atol=1e-5)
    # 2 images of 2x4 maps: still n = 16 values per channel
    y = x.reshape(2, 2, 4, 4)
    np.testing.assert_allclose(_moving_variance_ratio(UnbiasedMovingVarianceBN(
        momentum=BN_DECAY, scale=False), y), 16 / 15, rtol=1e-4)


def test_aligned_bn_fidelity_builds_every_batchnorm_unbiased_with_the_same_layers(tiny_quads,
                                                                                  tmp_path):
    from backends.keras.model import UnbiasedMovingVarianceBN

    config = tiny_config("keras", "head", tiny_quads, tmp_path, batch_size=BATCH)
    config = dataclasses.replace(config, recipe=dataclasses.replace(
        config.recipe, fidelity=dataclasses.replace(config.recipe.fidelity,
                                                    bn_moving_variance="aligned")))
    b = KerasBackend(config, tmp_path)
    b.setup(driver.prepare_split(config), 75)
    b.build(INCEPTION, 5, WeightsRequest("none"), 0)
    try:
        layers = b.km.model.layers
        bns = [l for l in layers if isinstance(l, keras.layers.BatchNormalization)]
        assert len(bns) == 94 and all(type(l) is UnbiasedMovingVarianceBN for l in bns)
        assert {l.momentum for l in bns} == {bns[0].momentum} and bns[0].momentum != 0.99
        native = build_model(INCEPTION, MODELS["inception_v3"], 5, 75)
        kinds = [type(l).__name__.replace("UnbiasedMovingVarianceBN", "BatchNormalization")
                 for l in layers]
        assert kinds == [type(l).__name__ for l in native.model.layers]
        assert [l.name for l in layers if l.name.startswith("mixed")] == \
            [l.name for l in native.model.layers if l.name.startswith("mixed")]
        assert b.km.blocks == native.blocks and len(b.km.parameters()) == len(native.parameters())
    finally:
        b.close()


def test_keras_rmsprop_is_the_aligned_formula_and_aligned_decay_spares_biases():
    """Keras 3 RMSprop is what fidelity rmsprop = "aligned" makes every framework compute:
    w - lr * g / sqrt(mean_square + eps), the slot from 0, in both settings. weight_decay =
    "aligned": a zero-gradient step decays kernels only (SGD's L2 and AdamW's decoupled
    decay alike); native decays biases too, as torch."""
    from common.config import Fidelity

    aligned = Fidelity("aligned", "aligned", "aligned")
    for fidelity in (Fidelity(), aligned):
        w = keras.Variable(np.ones(1, np.float32))
        opt = make_optimizer(Phase(optimizer="rmsprop", learning_rate=0.1, rmsprop_rho=0.9,
                                   epsilon=0.5), [], fidelity)
        opt.apply_gradients([(np.ones(1, np.float32), w)])
        np.testing.assert_allclose(w.numpy(), 1 - 0.1 / (0.1 + 0.5) ** 0.5, rtol=1e-6)
    for optimizer in ("sgd", "adamw"):
        phase = Phase(optimizer=optimizer, learning_rate=0.1, weight_decay=0.5)
        for fidelity, bias_after in ((Fidelity(), 1 - 0.1 * 0.5), (aligned, 1.0)):
            kernel = keras.Variable(np.ones((2, 2), np.float32))
            bias = keras.Variable(np.ones(2, np.float32))
            opt, text = make_optimizer(phase, [], fidelity), optimizer_text(phase, fidelity)
            assert ("kernels only" in text) is (fidelity == aligned)
            # zero gradients: only the decay moves a value (Adam's own step is 0 / (0 + eps))
            opt.apply_gradients([(np.zeros((2, 2), np.float32), kernel),
                                 (np.zeros(2, np.float32), bias)])
            np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)
            np.testing.assert_allclose(bias.numpy(), bias_after, rtol=1e-6)


def test_keras_adam_is_the_aligned_formula_in_both_settings():
    """Keras 3's Adam is what fidelity adam = "aligned" makes every framework compute (the
    bias correction in the step size, eps on sqrt(v): ``epsilon_hat_adam``), natively too:
    two steps (gradients 1, then -0.5) of Adam, Adam with L2 and AdamW, the head at x10 (the
    param-group optimizer: AdamW's decay at each group's own lr)."""
    from common.config import Fidelity

    grads = (1.0, -0.5)
    for optimizer, wd in (("adam", 0.0), ("adam", 0.3), ("adamw", 0.3)):
        phase = Phase(optimizer=optimizer, learning_rate=0.1, epsilon=0.5, weight_decay=wd,
                      head_lr_multiplier=10.0)
        for fidelity in (Fidelity(), Fidelity(adam="aligned")):
            backbone, head = keras.Variable(np.ones(1)), keras.Variable(np.ones(1))
            opt = make_optimizer(phase, [head], fidelity)
            after = []
            for g in grads:
                opt.apply_gradients([(np.full(1, g, np.float32), backbone),
                                     (np.full(1, g, np.float32), head)])
                after.append((float(backbone.numpy()[0]), float(head.numpy()[0])))
            for lr, i in ((0.1, 0), (1.0, 1)):
                expected = epsilon_hat_adam(1.0, grads, lr, 0.5, wd, decoupled=optimizer == "adamw")
                assert [a[i] for a in after] == pytest.approx(expected, rel=1e-5), (optimizer, wd, lr)


def test_aligned_adam_keeps_a_float64_models_betas_in_float64():
    """In a float64 model (``bench parity --train --dtype float64``) Keras' Adam casts its
    Python-float betas through float32 (TensorFlow's ``tf.cast`` of a Python float), so natively
    the bias correction's 1 - beta_2 is 1.3e-5 off and the first step 6.7e-6 short of the
    formula; fidelity adam = "aligned" passes float64 betas: the formula to 1e-12."""
    from common.config import Fidelity

    before = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        for fidelity, rel in ((Fidelity(adam="aligned"), 1e-12), (Fidelity(), None)):
            w = keras.Variable(np.ones(1, np.float64), dtype="float64")
            opt = make_optimizer(Phase(optimizer="adam", learning_rate=0.1, epsilon=1e-7), [], fidelity)
            opt.apply_gradients([(np.ones(1, np.float64), w)])
            step = 1 - float(w.numpy()[0])
            expected = 1 - epsilon_hat_adam(1.0, [1.0], 0.1, 1e-7)[0]
            if rel:
                assert step == pytest.approx(expected, rel=rel)
            else:
                assert step / expected - 1 == pytest.approx(-6.7e-6, abs=0.2e-6)
    finally:
        keras.config.set_floatx(before)
    # float32: Keras' own arguments either way (Python floats, which TensorFlow makes float32)
    aligned = recipe.optimizer_arguments(Phase(optimizer="adam"), Fidelity(adam="aligned"))[1]
    assert aligned == recipe.optimizer_arguments(Phase(optimizer="adam"))[1]
    assert type(aligned["beta_1"]) is float and type(aligned["beta_2"]) is float


def test_the_timed_step_takes_a_device_tensor_and_updates_no_metric_on_every_keras_backend(
        other_keras_backends, shared, monkeypatch):
    """Throughput's train step on Keras with TensorFlow, jax and torch (docs/measurements.md,
    "What a throughput row times"): ``train_on_batch`` gets a backend tensor made once (never
    a numpy batch, which every step would convert and copy) on a model compiled without a
    metric; the result says so in the words every backend uses (``common.timing.timed_step``);
    the trained model is left as it was."""
    from common import timing

    calls = []
    real = keras.Model.train_on_batch

    def recorded(model, x, y=None, *args, **kwargs):
        calls.append({"x": f"{type(x).__module__}.{type(x).__name__}",
                      "metrics": [m.name for m in model.metrics if m.name != "loss"]})
        return real(model, x, y, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "train_on_batch", recorded)
    shared.apply_phase(TOP2, 1)
    before = shared.predict("val")
    tp = shared.throughput(BATCH, "fp32", 1, 0)
    seen = {"keras": (calls, tp, np.array_equal(shared.predict("val"), before))}
    for name, smoke in other_keras_backends.items():
        seen[name] = (smoke["timed_calls"], smoke["throughput"],
                      np.array_equal(smoke["after_throughput"], smoke["restored"]))
    tensor_module = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
    for name, (timed_calls, result, unchanged) in seen.items():
        assert timed_calls, name
        assert all(c["x"].startswith(tensor_module[name]) for c in timed_calls), (name, timed_calls)
        assert all(c["metrics"] == [] for c in timed_calls), (name, timed_calls)
        assert result["timed_step"] == timing.timed_step(BATCH), name
        assert result["timed"]["metrics"] == [], name
        assert unchanged, f"{name}: the throughput measurement changed the trained model"


# ------------------------------------------------------------ fidelity: head_init

def test_aligned_head_init_writes_the_common_draw_into_the_keras_head(tiny_quads, tmp_path):
    """fidelity head_init = "aligned": the new head read back through the weight conversion
    (``canonical_from_model``) is ``common.canonical.aligned_head`` of the run's seed, hidden
    layer included; ``native`` is Dense's own Glorot draw; another seed, another head."""
    from backends.keras.convert import canonical_from_model
    from common.canonical import aligned_head, head_tensors

    def head(setting, seed, hidden):
        config = tiny_config("keras", "head", tiny_quads, tmp_path, batch_size=BATCH, seed=seed)
        config = dataclasses.replace(config, recipe=dataclasses.replace(
            config.recipe, fidelity=dataclasses.replace(config.recipe.fidelity,
                                                        head_init=setting)))
        b = KerasBackend(config, tmp_path / f"{setting}{seed}{hidden}")
        b.setup(driver.prepare_split(config), 75)
        b.build(INCEPTION, 5, WeightsRequest("none"), hidden)
        try:
            tensors = canonical_from_model(b.km, "inception_v3")
            return {k: tensors[k] for k in head_tensors(tensors)}
        finally:
            b.close()

    for seed, hidden in ((0, 0), (1, 16)):
        got, want = head("aligned", seed, hidden), aligned_head(seed, 2048, 5, hidden)
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    native = head("native", 0, 0)
    assert not np.allclose(native["head/kernel"], aligned_head(0, 2048, 5)["head/kernel"])
    # Dense's own: Glorot uniform, zero bias, the aligned distribution (docs/differences.md)
    limit = np.sqrt(6 / (2048 + 5))
    assert 0.9 * limit < np.abs(native["head/kernel"]).max() <= limit
    assert not native["head/bias"].any()
