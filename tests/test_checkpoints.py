"""Checkpoints written when needed (issue 23): ``best`` when validation improves, ``last`` at
each phase's end and when a signal stops the run, and ``state.json`` describing what is on
disk, so that a run killed between checkpoints resumes from the last one and re-runs the
epochs after it, ending where an uninterrupted run ends (docs/design.md, "Checkpoints and
resume"). Runs the numpy fake backend, in real worker processes where a process dies."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config

from backends import base
from benchmarks import driver
from common.results import write_json_atomic

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")


def two_phase(data, run_dir, learning_rate: float):
    """The fake backend's two_phase, 3 epochs a phase, at ``learning_rate`` (0.01: validation
    improves in global epochs 1, 2 and 4; 1.0: in 1 and 2)."""
    config = tiny_config("fake", "two_phase", data, run_dir, epochs=3)
    phases = tuple(dataclasses.replace(p, learning_rate=learning_rate) for p in config.recipe.phases)
    return dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, phases=phases))


def improvements(curves: list[dict]) -> list[int]:
    """The global epochs at which validation improved (the driver's rule)."""
    best, out = None, []
    for c in curves:
        if best is None or (c["val_top1"], -c["val_loss"]) > best:
            best = (c["val_top1"], -c["val_loss"])
            out.append(c["global_epoch"])
    return out


def outcome(result: dict) -> dict:
    """What a rerun must reproduce: every number but the timings."""
    curves = [{k: v for k, v in c.items() if k not in ("seconds", "images_per_second")}
              for c in result["curves"]]
    return {"curves": curves, "best": result["best"], "val": result["val"], "test": result["test"]}


def worker(config, **env) -> subprocess.Popen:
    """The run's worker process, as ``bench run`` starts it."""
    write_json_atomic(Path(config.run_dir) / "config.json", config.to_dict())
    return subprocess.Popen([sys.executable, "-m", "benchmarks.run_worker",
                             str(Path(config.run_dir) / "config.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **env), cwd=str(TESTS.parent))


def test_checkpoints_are_written_when_validation_improves_and_at_each_phase_end(fake, tiny_quads,
                                                                              tmp_path):
    result = driver.run(two_phase(tiny_quads, tmp_path / "run", 0.01))
    assert result["status"] == "ok", result.get("traceback")
    writes = [s["file"] for s in result["times"]["spans"] if s["name"] == "checkpoint"]
    assert improvements(result["curves"]) == [1, 2, 4]
    # each better epoch held in memory; the phase's best written once, at its end, with last
    assert writes == ["(held in memory)", "(held in memory)", "best", "last",
                      "(held in memory)", "best", "last"]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["resume_from"] == "last" and len(state["curves"]) == 6
    assert state["best"]["global_epoch"] == improvements(result["curves"])[-1]
    # the best epoch (4) is restored for evaluation; a run whose last epoch is its best
    # evaluates the model as it is
    assert [s["file"] for s in result["times"]["spans"] if s["name"] == "restore"] == ["best"]
    one = driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "one", epochs=1))
    assert one["best"]["global_epoch"] == 1
    assert not [s for s in one["times"]["spans"] if s["name"] == "restore"]


def test_a_backend_that_holds_state_must_write_it():
    """``_hold`` without ``_save_held`` is refused when the class is defined, not when a
    phase ends and the held state has nowhere to go."""
    from backends.base import Backend

    with pytest.raises(TypeError, match="defines _hold but not _save_held"):
        class Holder(Backend):  # noqa: F841 (defining it is the test)
            def _hold(self):
                return {}


@pytest.mark.parametrize("learning_rate, dies_in, resumes_from, best, holds", [
    # epoch 4's better state was held in memory: lost with the process, found again
    (0.01, 6, ("last", 3), 2, "state"),
    # a backend that holds nothing writes best at once: best (epoch 4) is newer than last
    (0.01, 6, ("best", 4), 4, "nothing"),
    (1.0, 5, ("last", 3), 2, "state"),    # last (end of phase 1) is newer than best (epoch 2)
])
def test_a_run_killed_between_checkpoints_resumes_from_the_last_one_and_ends_identically(
        fake, tiny_quads, tmp_path, learning_rate, dies_in, resumes_from, best, holds):
    whole = driver.run(two_phase(tiny_quads, tmp_path / "whole", learning_rate))
    config = two_phase(tiny_quads, tmp_path / "run", learning_rate)
    # the process dies in global epoch `dies_in` as under kill -9: nothing more is written
    proc = worker(config, FAKE_BACKEND_CRASH="segfault", FAKE_BACKEND_CRASH_EPOCH=str(dies_in),
                  FAKE_BACKEND_HOLDS=holds)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGSEGV, out
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    name, newest = resumes_from
    assert state["resume_from"] == name
    assert len(state["curves"]) == len(state["done"]) == newest
    assert state["best"]["global_epoch"] == best
    assert not (tmp_path / "run" / "result.json").exists()
    resumed = driver.run(config)
    assert resumed["status"] == "ok", resumed.get("traceback")
    assert [s["epoch"] + 3 * s["phase"] for s in resumed["times"]["spans"]
            if s["name"] == "epoch"] == list(range(newest + 1, 7))  # the lost epochs re-run
    assert outcome(resumed) == outcome(whole)
    assert len(resumed["times"]["attempt_seconds"]) == 2


def read_until(proc: subprocess.Popen, text: str) -> str:
    """What ``proc`` printed up to and including the first line holding ``text``."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never printed: {''.join(seen)[-2000:]}")


def test_sigterm_stops_a_run_at_its_epoch_end_with_its_resume_point_saved(fake, tiny_quads,
                                                                         tmp_path):
    whole = driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "whole", epochs=3))
    config = tiny_config("fake", "head", tiny_quads, tmp_path / "run", epochs=3)
    proc = worker(config, FAKE_BACKEND_CRASH="sleep")  # each epoch sleeps 2 s
    state_file = tmp_path / "run" / "state.json"
    before = read_until(proc, "epoch 1 (")  # epoch 1 ended: its better state is held in memory
    assert not state_file.exists()
    time.sleep(0.5)  # into epoch 2 (which sleeps 2 s)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # in epoch 2: it finishes and saves it, then stops
    out, _ = proc.communicate(timeout=60)
    out = before + out
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert time.monotonic() - t0 < 10
    assert "stopping after this epoch" in out and "stopped by signal" in out
    state = json.loads(state_file.read_text())
    assert state["done"] == [[0, 0], [0, 1]] and len(state["curves"]) == 2
    assert state["resume_from"] in ("best", "last")
    assert not (tmp_path / "run" / "result.json").exists()
    resumed = driver.run(config)
    assert resumed["status"] == "ok", resumed.get("traceback")
    assert [s["epoch"] for s in resumed["times"]["spans"] if s["name"] == "epoch"] == [3]
    assert outcome(resumed) == outcome(whole)


def _sigint_as_from_a_terminal():
    """A shell without job control starts `cmd &` with SIGINT ignored; give the child the
    disposition a terminal's Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_of_bench_run_lets_the_run_save_its_epoch_in_hand(fake, tiny_quads, tmp_path, signum):
    """Ctrl-C (SIGINT) or SIGTERM to ``bench run`` alone: the run in hand finishes its epoch and
    saves it; bench exits 130 or 143 (SIGTERM: ``cli.Terminated``)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "run", "--backend", "fake",
                             "--recipe", "head", "--data", str(tiny_quads), "--weights", "none",
                             "--epochs", "3", "--out", str(out), "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, FAKE_BACKEND_CRASH="sleep"),
                            cwd=str(TESTS.parent), preexec_fn=_sigint_as_from_a_terminal)
    state_file = out / "fake-head-s0" / "state.json"
    read_until(proc, "epoch 1 (")  # epoch 1 ended
    time.sleep(0.5)
    proc.send_signal(signum)  # in epoch 2 (which sleeps 2 s)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert ("bench: stopped by SIGTERM" in err) == (signum == signal.SIGTERM)
    assert json.loads(state_file.read_text())["done"] == [[0, 0], [0, 1]]
    assert not (out / "fake-head-s0" / "result.json").exists()
