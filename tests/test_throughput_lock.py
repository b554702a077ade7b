"""The throughput measurement taken alone (issue 23): timed steps hold a machine-wide lock
(``common.timing.throughput_lock``), recorded in ``result.json``, so two runs' timed steps
never overlap; and ``bench run``'s measurement stops early once its step times agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import timing
from common.timing import early_stop, measure_steps

REPO = Path(__file__).resolve().parent.parent

MEASURE = """
import json, sys, time
from pathlib import Path
from common.timing import measure_steps
go = Path(sys.argv[1])
while not go.exists():  # both processes start their timed steps together
    time.sleep(0.005)
r = measure_steps(lambda: time.sleep(0.1), lambda: None, batch_size=1, steps=5, warmup=0)
print(json.dumps(r["lock"]))
"""


@pytest.mark.parametrize("lock", ["file", "default"])
def test_two_processes_timed_steps_never_overlap(tmp_path, lock):
    """Named by the variable, or by default the system's temporary directory itself, locked
    without creating anything in it."""
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != timing.THROUGHPUT_LOCK_ENV}
    env.update(PYTHONPATH=str(REPO), TMPDIR=str(system_tmp))
    if lock == "file":
        env[timing.THROUGHPUT_LOCK_ENV] = str(tmp_path / "throughput.lock")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", MEASURE, str(go)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    time.sleep(1.0)  # both interpreters up and waiting
    go.touch()
    a, b = sorted((json.loads(p.communicate(timeout=60)[0]) for p in procs),
                  key=lambda r: r["acquired_at"])
    assert all(p.returncode == 0 for p in procs)
    for r in (a, b):  # five 0.1 s steps inside each hold
        assert r["released_at"] - r["acquired_at"] == pytest.approx(r["held_seconds"])
        assert r["held_seconds"] >= 0.5
    assert a["released_at"] <= b["acquired_at"]  # one after the other, never side by side
    assert b["wait_seconds"] >= 0.4  # the second waited for the first's timed steps
    assert a["path"] == (str(tmp_path / "throughput.lock") if lock == "file" else str(system_tmp))
    assert list(system_tmp.iterdir()) == []


def test_bench_children_meet_at_the_parents_lock_whatever_their_temporary_folder(tmp_path,
                                                                                  monkeypatch):
    """A child of bench gets a TMPDIR inside its run (nothing written outside --out), and the
    lock path its parent uses: two sweeps' runs still take their timed steps one at a time."""
    import tempfile

    from benchmarks import child

    monkeypatch.delenv(timing.THROUGHPUT_LOCK_ENV, raising=False)
    env = child.environment(tmp=tmp_path / "run" / "tmp")
    assert env["TMPDIR"] == str(tmp_path / "run" / "tmp")
    assert env[timing.THROUGHPUT_LOCK_ENV] == str(timing.system_temporary_directory()) \
        == tempfile.gettempdir()
    monkeypatch.setenv(timing.THROUGHPUT_LOCK_ENV, str(tmp_path / "mine.lock"))
    assert child.environment(tmp=tmp_path / "x")[timing.THROUGHPUT_LOCK_ENV] == str(tmp_path / "mine.lock")


def test_a_run_records_its_lock_wait_and_hold(monkeypatch, tmp_path):
    from benchmarks.driver import lock_record

    monkeypatch.setenv(timing.THROUGHPUT_LOCK_ENV, str(tmp_path / "throughput.lock"))
    t = {k: measure_steps(lambda: None, lambda: None, batch_size=1, steps=3, warmup=0)
         for k in ("train", "infer")}
    record = lock_record(t)
    assert record["path"] == str(tmp_path / "throughput.lock")
    assert record["held_seconds"] == pytest.approx(t["train"]["lock"]["held_seconds"] +
                                                   t["infer"]["lock"]["held_seconds"])
    (a0, a1), (b0, b1) = record["held"]["train"], record["held"]["infer"]
    assert a0 <= a1 <= b0 <= b1 and record["wait_seconds"] >= 0


class Steps:
    """Steps of known durations on a fake clock."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, iter(durations)

    def clock(self):
        return self.now

    def step(self):
        self.now += next(self.durations)


def test_the_run_measurement_stops_once_its_step_times_agree():
    steady = Steps([3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    with early_stop(0.05):
        r = measure_steps(steady.step, lambda: None, batch_size=4, steps=5, warmup=1,
                          clock=steady.clock)
    assert r["steps"] == timing.EARLY_STOP_MIN_STEPS == 3 and r["requested_steps"] == 5
    assert r["early_stop"] == {"spread": 0.05, "min_steps": 3, "stopped_early": True}
    noisy = Steps([3.0, 1.0, 1.0, 1.5, 1.0, 1.6, 1.0])
    with early_stop(0.05):
        r = measure_steps(noisy.step, lambda: None, batch_size=4, steps=5, warmup=1,
                          clock=noisy.clock)
    assert r["steps"] == 5 and not r["early_stop"]["stopped_early"]
    # outside bench run's measurement (bench throughput), every requested step is timed
    r = measure_steps(Steps([1.0] * 8).step, lambda: None, batch_size=4, steps=5, warmup=2)
    assert r["steps"] == 5 and "early_stop" not in r
