"""Keras backend specifics: the 249 cut, BN in frozen layers, learning_rate=,
param groups, resume, backbone-only restore, head rows, ImageNet offline.

CPU, 75 px, batch 4; one InceptionV3 is shared by the tests that only read it
or that compare before/after snapshots of their own.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import numpy as np
import pytest

from conftest import require_backend, tiny_config

require_backend("keras")

import keras  # noqa: E402

from backends.base import BackendError, WeightsRequest  # noqa: E402
from backends.keras.backend import KerasBackend  # noqa: E402
from backends.keras.catalog import MODELS  # noqa: E402
from backends.keras.model import build_model  # noqa: E402
from backends.keras.train import with_param_groups  # noqa: E402
from benchmarks import driver  # noqa: E402
from common.config import load_recipe  # noqa: E402
from common.data import load_image  # noqa: E402
from common.models import HEAD, get_model  # noqa: E402
from common.preprocess import get_normalisation  # noqa: E402
from common.results import validate_result  # noqa: E402

INCEPTION = get_model("inception_v3")
TOP2 = load_recipe("two_phase").phases[1]


def _backend(tiny_quads, run_dir, hidden=0, weights=WeightsRequest("none"), num_classes=None,
             recipe="two_phase"):
    config = tiny_config("keras", recipe, tiny_quads, run_dir)
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


# ------------------------------------------------------------- blocks and the cut

def test_blocks_are_the_table_ranges_and_the_stem_ends_at_17(shared):
    blocks = shared.km.blocks
    assert blocks["stem"] == range(0, 18)
    assert shared.km.layers[17].name.startswith("max_pooling2d")
    assert blocks["Mixed_5b"].stop - 1 == 40 and blocks["Mixed_7a"].stop - 1 == 248
    assert blocks["Mixed_7b"] == range(249, 280) and blocks["Mixed_7c"] == range(280, 311)
    assert shared.km.num_base_layers == 311


def test_resnet50_blocks_end_at_the_table_layers():
    km = build_model(get_model("resnet50"), MODELS["resnet50"], 3, 32)
    ends = {b: r.stop - 1 for b, r in km.blocks.items()}
    assert ends == {"stem": 6, "layer1": 38, "layer2": 80, "layer3": 142, "layer4": 174}


def test_top2_is_keras_layers_249_to_310_plus_head(shared):
    report = shared.apply_phase(TOP2, 1)
    km = shared.km
    assert report["trainable_blocks"] == ["Mixed_7b", "Mixed_7c"]
    assert report["native"]["layer_range"] == "249..310"
    assert report["native"]["compile"] == "recompiled"
    base_trainable = [i for i, l in enumerate(km.layers[:km.num_base_layers]) if l.trainable]
    assert base_trainable == list(range(249, 311))  # the keras.io seed's model.layers[249:]
    expected = [v.path for blk in ("Mixed_7b", "Mixed_7c", HEAD) for l in km.block_layers(blk)
                for v in l.weights if "moving_" not in v.path]
    assert sorted(shared.trainable_names()) == sorted(expected)
    assert report["trainable_tensors"] == len(expected)
    sizes = {n: a.size for blk in ("Mixed_7b", "Mixed_7c", HEAD) for n, a in shared.snapshot(blk).items()}
    assert report["trainable_params"] == sum(sizes[n] for n in expected)
    # parameters as torch counts them: everything but the BN moving statistics
    assert report["total_params"] == sum(int(np.prod(v.shape)) for v in km.model.weights
                                         if "moving_" not in v.path)


# ----------------------------------------------------------------- BN semantics

def test_bn_frozen_keeps_frozen_moving_stats_and_trains_the_top(shared):
    shared.apply_phase(TOP2, 1)
    frozen, trained = _bn_layers(shared, "Mixed_7a"), _bn_layers(shared, "Mixed_7b")
    before = {a: _values(frozen, a) for a in ("moving_mean", "moving_variance", "beta")}
    before_top = _values(trained, "moving_mean")
    shared.set_learning_rate(1e-2)
    shared.fit_epoch(TOP2, 1)
    for attr, values in before.items():
        for name, arr in _values(frozen, attr).items():
            np.testing.assert_array_equal(arr, values[name], err_msg=f"{name}.{attr}")
    after_top = _values(trained, "moving_mean")
    assert any(not np.array_equal(after_top[n], before_top[n]) for n in before_top)


def test_bn_train_updates_frozen_moving_stats_but_not_weights(shared):
    phase = dataclasses.replace(TOP2, bn="train")
    report = shared.apply_phase(phase, 1)
    assert report["native"]["bn_statistics_only_layers"] > 0
    frozen = _bn_layers(shared, "Mixed_7a")
    assert all(l.trainable and not l.beta.trainable for l in frozen)
    before_stats, before_beta = _values(frozen, "moving_mean"), _values(frozen, "beta")
    before_conv = shared.snapshot("Mixed_7a")
    shared.set_learning_rate(1e-2)
    shared.fit_epoch(phase, 2)
    after_stats = _values(frozen, "moving_mean")
    assert all(not np.array_equal(after_stats[n], before_stats[n]) for n in before_stats)
    for name, arr in _values(frozen, "beta").items():
        np.testing.assert_array_equal(arr, before_beta[name])
    for name, arr in shared.snapshot("Mixed_7a").items():
        if "moving_" not in name:
            np.testing.assert_array_equal(arr, before_conv[name], err_msg=name)


# -------------------------------------------------------------- optimizers

def test_optimizers_take_learning_rate_and_reject_lr(shared):
    report = shared.apply_phase(TOP2, 1)
    assert report["native"]["optimizer"] == \
        "keras.optimizers.SGD(learning_rate=0.0001, momentum=0.9)"
    assert shared.optimizer.get_config()["learning_rate"] == pytest.approx(1e-4)
    shared.set_learning_rate(3e-3)
    assert float(shared.optimizer.learning_rate.numpy()) == pytest.approx(3e-3)
    with pytest.raises((TypeError, ValueError), match="lr"):
        keras.optimizers.SGD(lr=0.1)  # Keras 2 / torch spelling


@pytest.mark.parametrize("cls", [keras.optimizers.SGD, keras.optimizers.Adam])
def test_head_param_group_steps_with_the_multiplied_learning_rate(cls):
    backbone, head = keras.Variable(np.ones(3, np.float32)), keras.Variable(np.ones(3, np.float32))
    opt = with_param_groups(cls)(learning_rate=0.01, head_variables=[head], head_lr_multiplier=10.0)
    grad = np.full(3, 0.5, np.float32)
    opt.apply_gradients([(grad, backbone), (grad, head)])
    step_backbone, step_head = 1 - backbone.numpy(), 1 - head.numpy()
    np.testing.assert_allclose(step_head, 10 * step_backbone, rtol=1e-4)
    np.testing.assert_allclose(step_backbone, 0.01 * (0.5 if cls is keras.optimizers.SGD else 1.0),
                               rtol=1e-4)


def test_l2_weight_decay_is_added_to_the_gradient():
    w = keras.Variable(np.full(2, 2.0, np.float32))
    opt = with_param_groups(keras.optimizers.SGD)(learning_rate=0.1, l2=0.5)
    opt.apply_gradients([(np.zeros(2, np.float32), w)])
    np.testing.assert_allclose(w.numpy(), 2.0 - 0.1 * 0.5 * 2.0)


def test_optimizer_state_round_trips_within_a_phase(shared, tmp_path):
    shared.apply_phase(TOP2, 1)
    shared.set_learning_rate(1e-3)
    shared.fit_epoch(TOP2, 3)
    state = [np.array(v.numpy()) for v in shared.optimizer.variables]
    path = shared.save(tmp_path / "last")
    assert path.name == "last.weights.h5" and (tmp_path / "last.optimizer.npz").is_file()
    shared.apply_phase(TOP2, 1)  # a fresh optimizer, as after a restart
    shared.restore(tmp_path / "last")
    restored = [np.array(v.numpy()) for v in shared.optimizer.variables]
    assert len(restored) == len(state) and int(shared.optimizer.iterations.numpy()) > 0
    for a, b in zip(restored, state):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ data

def _batches(pipeline) -> list:
    """(x, y) numpy batches of a tf.data.Dataset or a keras.utils.PyDataset."""
    if hasattr(pipeline, "as_numpy_iterator"):
        return list(pipeline.as_numpy_iterator())
    return [pipeline[i] for i in range(len(pipeline))]


def test_pipelines_match_the_common_preprocessing(shared):
    split, data = shared.split, shared.data
    norm = get_normalisation("inception")
    x = np.concatenate([xb for xb, _ in _batches(data.eval("val"))])
    expected = np.stack([norm.apply(load_image(s.path, 75)) for s in split.val])
    np.testing.assert_allclose(x, expected, atol=1e-6)
    first = [yb for _, yb in _batches(data.train(1, True))]
    again = [yb for _, yb in _batches(data.train(1, True))]
    other = [yb for _, yb in _batches(data.train(2, True))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # resumable order
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))  # reshuffled per epoch
    assert sum(len(y) for y in first) == len(split.train)


def test_frameworks_and_device_name_the_keras_backend(shared):
    versions = shared.frameworks()
    assert versions["keras"] == keras.__version__
    assert versions["keras_backend"] == keras.backend.backend() and versions[versions["keras_backend"]]
    assert shared.device()["keras_backend"] == versions["keras_backend"]


# ----------------------------------------------------------- weights

def test_restore_from_a_source_checkpoint_excludes_the_head(shared, tiny_quads, tmp_path):
    shared.apply_phase(TOP2, 1)
    ckpt = shared.save(tmp_path / "source")
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


def test_reuse_head_rows_needs_a_linear_head(shared, tiny_quads, tmp_path):
    shared.apply_phase(TOP2, 1)
    ckpt = shared.save(tmp_path / "source")
    config = tiny_config("keras", "two_phase", tiny_quads, tmp_path / "run")
    b = KerasBackend(config, tmp_path / "run")
    b.setup(shared.split, 75)
    with pytest.raises(BackendError, match="head_hidden_units = 0"):
        b.build(INCEPTION, 5, WeightsRequest("path", str(ckpt), {0: 0}), 1024)


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

def test_two_phase_run_reports_249_to_310_and_resumes(tiny_quads, tmp_path, monkeypatch):
    config = tiny_config("keras", "two_phase", tiny_quads, tmp_path / "run")
    fit = KerasBackend.fit_epoch
    calls = []

    def interrupted(self, phase, global_epoch):
        if global_epoch == 2:
            raise RuntimeError("simulated interruption")
        calls.append(global_epoch)
        return fit(self, phase, global_epoch)

    monkeypatch.setattr(KerasBackend, "fit_epoch", interrupted)
    first = driver.run(config)
    assert first["status"] == "failed" and calls == [1]
    calls.clear()
    monkeypatch.setattr(KerasBackend, "fit_epoch",
                        lambda self, phase, e: calls.append(e) or fit(self, phase, e))
    result = driver.run(config)
    assert result["status"] == "ok", result.get("traceback")
    assert calls == [2]  # only the missing epoch ran
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert validate_result(on_disk) == []
    assert [c["global_epoch"] for c in on_disk["curves"]] == [1, 2]
    phases = {p["name"]: p for p in on_disk["phases"]}
    assert phases["top2"]["native"]["layer_range"] == "249..310"
    assert phases["head"]["native"]["layer_range"] == "none"
    assert "layer_range: 249..310" in (tmp_path / "run" / "phases.txt").read_text().split("phase 2 'top2'")[1]
    assert (tmp_path / "run" / "tensorboard").is_dir()
    summary = (tmp_path / "run" / "model_summary.txt").read_text()
    assert "Mixed_7b    249..279" in summary and "head_logits" in summary
    assert on_disk["versions"]["keras_backend"] == keras.backend.backend()
    assert on_disk["throughput"]["train"]["images_per_second"] > 0


def test_batchnorm_decay_is_the_suite_value_not_keras_default():
    # Keras' BatchNormalization default momentum is 0.99; the suite uses common.models.BN_DECAY
    from backends.keras.model import build_model
    from common.models import BN_DECAY, get_model

    km = build_model(get_model("inception_v3"), MODELS["inception_v3"], 5, 75)
    bns = [l for l in km.model.layers if l.__class__.__name__ == "BatchNormalization"]
    assert len(bns) == 94 and {l.momentum for l in bns} == {BN_DECAY}


def test_inception_batchnorm_has_no_gamma_in_keras():
    # keras.applications.InceptionV3 builds BatchNormalization(scale=False): beta only
    from backends.keras.model import build_model
    from common.models import get_model

    km = build_model(get_model("inception_v3"), MODELS["inception_v3"], 5, 75)
    bns = [l for l in km.model.layers if l.__class__.__name__ == "BatchNormalization"]
    assert bns and all(not l.scale and l.gamma is None for l in bns)
