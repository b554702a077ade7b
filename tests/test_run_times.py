"""Where a run's time goes (issue 23): the spans the driver and the Backend base record in
``result.json`` ``times``, the same names for every backend (docs/design.md, "Where a run's
time goes"). Runs the numpy fake backend; ``test_backend_contract`` checks the same spans in
every real backend's run through ``assert_timeline``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import tiny_config

from backends import base
from benchmarks import cli, driver
from common.timing import SPAN_NAMES, Timeline

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def fake(monkeypatch):
    """The numpy backend, registered here and in every process started from here."""
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")


def outermost(times: dict) -> list[dict]:
    return [s for s in times["spans"] if "in" not in s]


def best_is_last(result: dict) -> bool:
    """Whether the run's last epoch was its best on validation."""
    return result["best"]["global_epoch"] == len(result["curves"])


def assert_timeline(times: dict, phases: int, epochs_per_phase: int, best_is_last: bool) -> None:
    """The spans of a finished training run: known names, the outermost never overlapping,
    within the run's wall time, one epoch span per epoch and one phase window per phase; a
    restore of ``best`` unless the last epoch was the best (the model holds it already)."""
    spans = times["spans"]
    assert spans and {s["name"] for s in spans} <= set(SPAN_NAMES)
    top = sorted(outermost(times), key=lambda s: s["start"])
    for a, b in zip(top, top[1:]):
        assert a["end"] <= b["start"], (a, b)
    assert all(0 <= s["start"] <= s["end"] <= times["ended"] for s in spans)
    names = [s["name"] for s in top]
    for name in ("data", "source_weights", "framework_import", "setup", "build", "apply_phase",
                 "epoch", "predict", "checkpoint", "throughput"):
        assert name in names, (name, names)
    assert ("restore" in names) != best_is_last, names
    epochs = [s for s in top if s["name"] == "epoch"]
    assert len(epochs) == phases * epochs_per_phase and all(s["images"] > 0 for s in epochs)
    assert [w["index"] for w in times["windows"]] == list(range(phases))
    for w in times["windows"]:  # a phase's epochs lie inside its window
        assert all(w["start"] <= s["start"] <= s["end"] <= w["end"] for s in epochs
                   if s["phase"] == w["index"])
    assert {s["subset"] for s in top if s["name"] == "predict"} == {"val", "test"}
    assert times["started_at"] > 1e9  # Unix seconds


def test_a_run_records_where_its_time_goes(fake, tiny_quads, tmp_path):
    result = driver.run(tiny_config("fake", "two_phase", tiny_quads, tmp_path / "run", epochs=2))
    assert result["status"] == "ok", result.get("traceback")
    times = json.loads((tmp_path / "run" / "result.json").read_text())["times"]
    assert_timeline(times, phases=2, epochs_per_phase=2, best_is_last=best_is_last(result))
    # in-process, the timeline starts with the run: no start-up span
    assert "startup" not in {s["name"] for s in times["spans"]}
    # the timed steps held the machine-wide throughput lock, inside the throughput span
    (measured,) = [s for s in times["spans"] if s["name"] == "throughput"]
    lock = result["throughput"]["lock"]
    assert set(lock["held"]) == {"train", "infer"} and lock["held_seconds"] > 0
    for acquired, released in lock["held"].values():
        assert times["started_at"] + measured["start"] - 1e-3 <= acquired <= released \
            <= times["started_at"] + measured["end"] + 1e-3


def test_a_worker_run_counts_its_process_start_up(fake, tiny_quads, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["run", "--backend", "fake", "--recipe", "head", "--data", str(tiny_quads),
                     "--weights", "none", "--epochs", "1", "--out", str(out), "--no-report"]) == 0
    result = json.loads((out / "fake-head-s0" / "result.json").read_text())
    times = result["times"]
    startup = times["spans"][0]
    assert startup["name"] == "startup" and startup["start"] == 0 and startup["end"] > 0
    assert_timeline(times, phases=1, epochs_per_phase=1, best_is_last=best_is_last(result))


def test_a_nested_span_is_marked_and_the_outer_one_holds_its_time():
    timeline = Timeline(origin=0.0)
    with timeline.span("build"):
        with timeline.span("restore", file="x"):
            pass
    inner, outer = timeline.spans
    assert inner["name"] == "restore" and inner["in"] == "build" and "in" not in outer
    assert outer["start"] <= inner["start"] <= inner["end"] <= outer["end"]
