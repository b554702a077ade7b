"""Framework-free metrics, the linear-probe head and the throughput protocol."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.linear import C_GRID, fit_linear_probe
from common.metrics import classification_metrics
from common.timing import measure_steps, summarise_steps


def test_metrics_on_known_logits():
    logits = np.array([[3, 1, 0], [0, 2, 1], [0, 1, 2], [2, 0, 1]], float)
    labels = np.array([0, 1, 1, 2])
    m = classification_metrics(logits, labels, ("a", "b", "c"))
    assert m["top1"] == 0.5 and m["top5"] == 1.0
    assert m["per_class"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert m["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert m["loss"] > 0


class FakeBackend:
    """Steps whose durations are known: 1 slow first step, 2 warm-up steps, then a pattern."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)

    def clock(self):
        return self.now

    def step(self):
        self.now += next(self.durations)


def test_measure_steps_excludes_first_and_warmup_and_reports_percentiles():
    timed = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00]
    fake = FakeBackend([5.0, 9.0, 9.0, *timed])
    r = measure_steps(fake.step, lambda: None, batch_size=8, steps=10, warmup=2, clock=fake.clock)
    assert r["first_step_seconds"] == pytest.approx(5.0)
    assert r["steps"] == 10 and r["warmup_steps"] == 2
    assert r["step_seconds_median"] == pytest.approx(0.55)
    assert r["step_seconds_p10"] == pytest.approx(np.percentile(timed, 10))
    assert r["step_seconds_p90"] == pytest.approx(0.91)
    assert r["images_per_second"] == pytest.approx(8 / 0.55)
    assert r["images_per_second_p10"] == pytest.approx(8 / 0.91)


def test_sync_is_called_before_each_clock_stop():
    events = []
    ticks = itertools.count()
    measure_steps(lambda: events.append("step"), lambda: events.append("sync"), batch_size=1,
                  steps=2, warmup=0, clock=lambda: events.append("clock") or next(ticks))
    # the clock never stops right after a step: the device is synchronised first
    pairs = list(zip(events, events[1:]))
    assert ("step", "clock") not in pairs
    assert events.count("step") == 3 and pairs.count(("step", "sync")) == 3


def test_summarise_rejects_empty():
    with pytest.raises(ValueError):
        summarise_steps([], 1)


def _blobs(rng, n, classes=3, dim=8, spread=1.0):
    centres = rng.normal(0, 3, (classes, dim))
    y = np.arange(n) % classes
    return centres[y] + rng.normal(0, spread, (n, dim)), y


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 90)
    vx, vy = _blobs(np.random.default_rng(0), 30)
    probe = fit_linear_probe(x, y, vx, vy, 3)
    assert (probe.logits(x).argmax(1) == y).mean() > 0.95
    assert probe.logits(vx).shape == (30, 3)
    assert [r["C"] for r in probe.search] == list(C_GRID) and probe.C in C_GRID


def test_linear_probe_ignores_a_feature_constant_on_train():
    # a dead ReLU channel: 0 on every training image, large on test images. With
    # std + 1e-6 standardisation it was multiplied by ~1e6 and broke the test logits.
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 60, dim=6)
    vx, vy = _blobs(np.random.default_rng(1), 30, dim=6)
    tx, ty = _blobs(np.random.default_rng(1), 60, dim=6)
    dead = lambda a, value: np.concatenate([a, np.full((len(a), 1), value)], axis=1)  # noqa: E731
    clean = fit_linear_probe(x, y, vx, vy, 3)
    probe = fit_linear_probe(dead(x, 0.0), y, dead(vx, 0.0), vy, 3)
    test_live = dead(tx, 0.0)
    test_live[:, -1] = rng.uniform(5, 50, len(tx))  # the channel fires on held-out images
    np.testing.assert_allclose(probe.logits(test_live), clean.logits(tx), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(probe.coef[:, -1], 0.0, atol=1e-12)  # the weight never moved
    chance = np.bincount(ty).max() / len(ty)
    assert (probe.logits(test_live).argmax(1) == ty).mean() > chance + 0.3


def test_linear_probe_chooses_l2_on_validation():
    # many noisy dimensions, few images: the unregularised end of the grid overfits, so
    # the validation split must pick a C below the largest one, and the choice is recorded
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 0.2, (2, 200))
    y, vy = np.arange(20) % 2, np.arange(200) % 2
    x = centres[y] + rng.normal(0, 1, (20, 200))
    vx = centres[vy] + rng.normal(0, 1, (200, 200))
    probe = fit_linear_probe(x, y, vx, vy, 2)
    best = max(probe.search, key=lambda r: (r["val_top1"], -r["val_loss"]))
    assert probe.C == best["C"] < C_GRID[-1]
    assert probe.describe()["l2"] == 1 / probe.C and probe.describe()["solver"] == "lbfgs"
    assert len({r["val_top1"] for r in probe.search}) > 1  # the grid matters here


def test_linear_probe_with_no_validation_images_uses_c_1():
    rng = np.random.default_rng(3)
    x, y = _blobs(rng, 30)
    probe = fit_linear_probe(x, y, np.zeros((0, 8)), np.zeros(0, np.int64), 4)
    assert probe.C == 1.0 and probe.logits(x).shape == (30, 4)
    assert (probe.logits(x)[:, 3] < -1e8).all()  # a class with no training image


def test_linear_probe_in_the_span_of_the_training_features_is_the_same_model():
    # fewer images than features: the fit runs on SVD coordinates; the L2 optimum lies in
    # that span, so the logits equal scikit-learn's fit in the full feature space
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    x, y = _blobs(rng, 24, dim=300)
    vx, vy = _blobs(np.random.default_rng(5), 12, dim=300)
    probe = fit_linear_probe(x, y, vx, vy, 3, c_grid=(1.0,))
    scaled = probe.scaler.transform(x)
    full = LogisticRegression(C=1.0, solver="lbfgs", max_iter=5000, tol=1e-10).fit(scaled, y)
    np.testing.assert_allclose(probe.logits(vx), full.decision_function(probe.scaler.transform(vx)),
                               atol=1e-5)
