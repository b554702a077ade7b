"""The contract every backend honours, run once per backend and model (skipped with
the reason when its framework is missing): InceptionV3 at its minimum, 75 px, and
VGG16 at its minimum, 32 px. Backend-specific behaviour lives in test_<backend>.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backends.base import BackendError, WeightsRequest, get_backend
from common import progress, timing
from benchmarks import driver
from common.config import Phase, load_recipe
from common.models import HEAD, get_model
from common.results import validate_result
from conftest import require_backend, tiny_config
from test_run_times import assert_timeline, best_is_last

BACKENDS = ["pytorch", "keras", "slim"]
# (model, image size): each model at its minimum size
MODELS = [("inception_v3", 75), ("vgg16", 32)]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    require_backend(request.param)
    return request.param


@pytest.fixture(params=MODELS, ids=[m for m, _ in MODELS])
def model(request):
    return request.param


def _built(backend_name, tiny_quads, tmp_path, model, recipe="two_phase", hidden=0):
    name, size = model
    config = tiny_config(backend_name, recipe, tiny_quads, tmp_path / "run", model=name,
                         image_size=size)
    split = driver.prepare_split(config)
    b = get_backend(backend_name)(config, tmp_path / "run")
    b.setup(split, size)
    b.build(get_model(name), split.num_classes, WeightsRequest("none"), hidden)
    return b, split


def test_top2_phase_trains_exactly_mixed_7b_7c_and_head(backend_name, model, tiny_quads, tmp_path):
    """The top two canonical blocks and the head train, nothing else (VGG16: block4, block5)."""
    b, _ = _built(backend_name, tiny_quads, tmp_path, model)
    try:
        phase = load_recipe("two_phase").phases[1]
        report = b.apply_phase(phase, 1)
        top2 = {"inception_v3": ("Mixed_7b", "Mixed_7c"), "vgg16": ("block4", "block5")}[model[0]]
        assert tuple(report["trainable_blocks"]) == top2
        trainable = set(b.trainable_names())
        in_blocks = {name: a.size for blk in (*top2, HEAD)
                     for name, a in b.snapshot(blk).items()}
        assert trainable <= set(in_blocks), sorted(trainable - set(in_blocks))[:5]
        assert report["trainable_params"] == sum(in_blocks[n] for n in trainable)
        assert report["trainable_tensors"] == len(trainable)
        assert 0 < report["trainable_params"] < report["total_params"]
    finally:
        b.close()


def _progress_events(capsys) -> list[dict]:
    """The ``common.progress`` events a backend wrote to stdout (events mode)."""
    return [e for e in map(progress.parse_event, capsys.readouterr().out.splitlines()) if e]


@pytest.fixture
def progress_events(monkeypatch):
    """Every batch of every pass reported as an event on stdout, as in a bench worker."""
    monkeypatch.setenv(progress.PROGRESS_ENV, "events")
    monkeypatch.setenv(progress.SECONDS_ENV, "0")


def test_head_phase_leaves_backbone_bit_identical(backend_name, model, tiny_quads, tmp_path,
                                                  progress_events, capsys):
    b, _ = _built(backend_name, tiny_quads, tmp_path, model)
    try:
        phase = Phase(name="head", train="head", optimizer="adam", learning_rate=1e-2, epochs=1)
        b.apply_phase(phase, 0)
        spec = get_model(model[0])
        before = {blk: b.snapshot(blk) for blk in (*spec.blocks, HEAD)}
        b.set_learning_rate(1e-2)
        capsys.readouterr()
        stats = b.fit_epoch(phase, 1)
        assert stats["images"] == 15 and np.isfinite(stats["loss"])
        # one progress unit per batch, through common.progress, in every backend
        events = _progress_events(capsys)
        assert [e["n"] for e in events] == [1, 2, 3, 4, 4] and events[-1]["done"]
        assert {(e["desc"], e["total"]) for e in events} == {("epoch 1 train", 4)}
        for blk in spec.blocks:
            after = b.snapshot(blk)
            assert after.keys() == before[blk].keys()
            for name, arr in after.items():
                np.testing.assert_array_equal(arr, before[blk][name], err_msg=f"{blk}: {name}")
        changed = [n for n, a in b.snapshot(HEAD).items() if not np.array_equal(a, before[HEAD][n])]
        assert changed, "the head did not train"
    finally:
        b.close()


def test_save_restore_round_trip_gives_same_logits(backend_name, model, tiny_quads, tmp_path):
    b, split = _built(backend_name, tiny_quads, tmp_path, model)
    try:
        b.apply_phase(load_recipe("two_phase").phases[0], 0)
        logits = b.predict("test")
        assert logits.shape == (len(split.test), split.num_classes)
        path = b.save(tmp_path / "ckpt" / "model")
        assert path.name.endswith(b.checkpoint_suffix)
        b.set_learning_rate(0.05)
        b.fit_epoch(load_recipe("two_phase").phases[0], 1)
        assert not np.allclose(b.predict("test"), logits)
        b.restore(tmp_path / "ckpt" / "model")
        np.testing.assert_allclose(b.predict("test"), logits, rtol=1e-5, atol=1e-5)
    finally:
        b.close()


def test_a_held_state_is_saved_later_while_the_model_keeps_training(backend_name, tiny_quads, tmp_path):
    """``hold`` keeps a better epoch's state in memory (the driver writes it at the phase's
    end); ``save(path, held)`` writes that state and leaves the model as it is. Every
    backend holds (a plug-in without ``_hold`` writes ``best`` at once: the fake backend's
    ``test_a_run_killed_between_checkpoints_resumes_from_the_last_one_and_ends_identically``)."""
    b, _ = _built(backend_name, tiny_quads, tmp_path, MODELS[0])
    try:
        phase = load_recipe("two_phase").phases[0]
        b.apply_phase(phase, 0)
        b.set_learning_rate(0.05)
        b.fit_epoch(phase, 1)
        then = b.predict("test")
        held = b.hold()
        assert held is not None
        b.fit_epoch(phase, 2)
        now = b.predict("test")
        assert not np.allclose(now, then)
        b.save(tmp_path / "ckpt" / "best", held)
        np.testing.assert_array_equal(b.predict("test"), now)  # the model kept its state
        b.restore(tmp_path / "ckpt" / "best")
        np.testing.assert_allclose(b.predict("test"), then, rtol=1e-5, atol=1e-5)
    finally:
        b.close()


def test_features_need_a_model_and_training_needs_a_phase(backend_name, model, tiny_quads,
                                                          tmp_path, progress_events, capsys):
    # the lifecycle is checked once, in backends.base: every backend refuses the same way
    config = tiny_config(backend_name, "two_phase", tiny_quads, tmp_path / "bare")
    bare = get_backend(backend_name)(config, tmp_path / "bare")
    with pytest.raises(BackendError, match=r"^\w+: predict\(\) needs setup\(split, image_size\) first$"):
        bare.predict("val")
    b, split = _built(backend_name, tiny_quads, tmp_path, model)
    try:
        capsys.readouterr()
        feats = b.extract_features("val")
        assert feats.shape == (len(split.val), get_model(model[0]).feature_dim)
        events = _progress_events(capsys)
        # features and predict share each backend's evaluation loop
        assert [(e["desc"], e["n"], e["total"]) for e in events] == [
            ("features val", 1, 2), ("features val", 2, 2), ("features val", 2, 2)]
        phase = load_recipe("two_phase").phases[0]
        for action, call in (("fit_epoch()", lambda: b.fit_epoch(phase, 1)),
                             ("set_learning_rate()", lambda: b.set_learning_rate(0.1)),
                             ("throughput()", lambda: b.throughput(2, "fp32", 1, 0)),
                             ("save()", lambda: b.save(tmp_path / "ckpt")),
                             ("trainable_names()", b.trainable_names)):
            with pytest.raises(BackendError) as err:
                call()
            assert str(err.value) == f"{backend_name}: {action} needs a phase: call apply_phase() first"
        with pytest.raises(BackendError, match="unknown subset 'dev'"):
            b.predict("dev")
        assert not list(tmp_path.glob("ckpt*"))
    finally:
        b.close()


@pytest.mark.parametrize("model", [MODELS[0], pytest.param(MODELS[1], marks=pytest.mark.slow)],
                         ids=[m for m, _ in MODELS])
def test_two_phase_run_writes_a_valid_result(backend_name, model, tiny_quads, tmp_path):
    """A whole run through the driver. VGG16's is ``-m slow`` (the other contract tests run it;
    ``pytest -m slow tests/test_backend_contract.py``)."""
    config = tiny_config(backend_name, "two_phase", tiny_quads, tmp_path / "run", model=model[0],
                         image_size=model[1])
    result = driver.run(config)
    assert result["status"] == "ok", result.get("traceback")
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert validate_result(on_disk) == []
    assert [p["name"] for p in on_disk["phases"]] == ["head", "top2"]
    assert [c["global_epoch"] for c in on_disk["curves"]] == [1, 2]
    assert on_disk["data"]["split_digest"] == driver.prepare_split(config).digest()
    assert on_disk["throughput"]["train"]["images_per_second"] > 0
    assert on_disk["throughput"]["infer"]["images_per_second"] > 0
    # every backend times the same step and says so in the same words (common.timing,
    # docs/measurements.md, "What a throughput row times")
    assert on_disk["throughput"]["timed_step"] == timing.timed_step(config.train.batch_size)
    assert on_disk["throughput"]["timed"]["metrics"] == []
    # what the timed train step updated is what the last phase trains (README: `throughput.timed`)
    last = on_disk["phases"][-1]
    assert {k: on_disk["throughput"]["timed"][k] for k in ("trainable_params", "trainable_tensors")} == \
        {k: last[k] for k in ("trainable_params", "trainable_tensors")}
    assert len(on_disk["test"]["confusion"]) == 5
    assert on_disk["versions"] and on_disk["device"]["kind"]
    # where the run's time went: the same spans in every backend (docs/design.md)
    assert_timeline(on_disk["times"], phases=2, epochs_per_phase=1, best_is_last=best_is_last(on_disk))
