"""Framework-free metrics, the linear-probe head and the throughput protocol."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.linear import fit_logistic, predict_logistic
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


def test_logistic_head_separates_separable_features():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (50, 5)), rng.normal(2, 1, (50, 5))])
    y = np.array([0] * 50 + [1] * 50)
    head = fit_logistic(x, y, 2)
    assert (predict_logistic(head, x).argmax(1) == y).mean() > 0.95
